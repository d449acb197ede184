"""The one streaming tar reader of cargohold: layers (apply) and image archives (import).

Why not :mod:`tarfile`: its stream mode copies every member through Python buffers and
re-reads headers one byte at a time where we can slice a 1 MiB chunk; and hostile input needs
a strict reader anyway (hard limits on extended headers, no sparse files, exact error text).

:class:`TarReader` reads the chunks of a :class:`~cargohold.differ.compression.PlainStream`
and yields :class:`~cargohold.differ.tarheader.Entry` objects; an entry's data goes straight
from the decompressed chunk to a file descriptor (:meth:`TarReader.copy_data`, layer apply:
no copies) or through a file object (:meth:`TarReader.data_reader`, archive import, which
hashes it into the store). Data not consumed is skipped by the next :meth:`TarReader.next`.

What it understands: types ``0``, NUL and ``7`` (regular), ``1`` (hardlink), ``2`` (symlink),
``3 4`` (devices), ``5`` (dir), ``6`` (fifo); PAX ``x`` records (``path``, ``linkpath``, ``size``,
``uid``, ``gid``, ``mtime``, ``atime``, ``SCHILY.xattr.*``, ``LIBARCHIVE.xattr.*``); GNU ``L``
and ``K`` long names; base-256 numbers. PAX ``g`` global headers are checked and ignored (as
containerd does). Sparse files are refused; other types are returned for the caller to refuse
(their data is skipped). What a header must satisfy is tabled in
:mod:`cargohold.differ.tarheader`.

The end: two zero blocks, or a clean end of stream at a header boundary (or inside the last
entry's padding), as Go's archive/tar accepts. One zero block followed by anything else is an
error. An end anywhere else is "truncated". Every problem is raised through the stream's
:class:`~cargohold.differ.api.Source`, naming the layer or archive, the entry and the byte
offset in the plain stream: never a hang (each header consumes at least one block of a finite
stream), never an unbounded buffer (extended headers are capped at 1 MiB each, and a new one
replaces the last).
"""

from __future__ import annotations

import io
import os

from cargohold.differ.api import Source
from cargohold.differ.compression import PlainStream
from cargohold.differ.tarheader import (
    BLOCK,
    DIR,
    HEADER_ONLY,
    MAX_META,
    META,
    REG,
    REGULAR,
    Entry,
    HeaderError,
    apply_pax,
    parse_header,
    parse_pax,
)

_ZERO = bytes(BLOCK)


class _Input:
    """Exact reads and direct-to-fd copies over the PlainStream's chunks; counts bytes."""

    __slots__ = ("stream", "cur", "off", "pos")

    def __init__(self, stream: PlainStream) -> None:
        self.stream = stream
        self.cur = memoryview(b"")
        self.off = 0
        self.pos = 0  # plain bytes consumed

    def _fill(self) -> bool:
        data = self.stream.next_chunk()
        if not data:
            return False
        self.cur = memoryview(data)
        self.off = 0
        return True

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes without consuming them (fewer only at the end of the stream)."""
        while len(self.cur) - self.off < n:
            data = self.stream.next_chunk()
            if not data:
                break
            self.cur = memoryview(self.cur[self.off:].tobytes() + data)
            self.off = 0
        return self.cur[self.off:self.off + n].tobytes()

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the stream."""
        avail = len(self.cur) - self.off
        if avail >= n:
            b = self.cur[self.off:self.off + n].tobytes()
            self.off += n
            self.pos += n
            return b
        parts = []
        left = n
        while left:
            avail = len(self.cur) - self.off
            if not avail:
                if not self._fill():
                    break
                continue
            m = min(left, avail)
            parts.append(self.cur[self.off:self.off + m].tobytes())
            self.off += m
            left -= m
        self.pos += n - left
        return b"".join(parts)

    def readinto(self, b: memoryview, n: int) -> int:
        """Copy up to ``n`` bytes (from one chunk) into ``b``; 0 only at the end."""
        avail = len(self.cur) - self.off
        if not avail:
            if not self._fill():
                return 0
            avail = len(self.cur)
        m = min(n, avail, len(b))
        b[:m] = self.cur[self.off:self.off + m]
        self.off += m
        self.pos += m
        return m

    def copy_to(self, fd: int, n: int) -> int:
        """Write the next ``n`` bytes to ``fd`` (fd may be -1 to skip); return bytes moved."""
        moved = 0
        while n:
            avail = len(self.cur) - self.off
            if not avail:
                if not self._fill():
                    break
                continue
            m = min(n, avail)
            if fd >= 0:
                view = self.cur[self.off:self.off + m]
                while view:
                    w = os.write(fd, view)
                    view = view[w:]
            self.off += m
            n -= m
            moved += m
        self.pos += moved
        return moved


class TarReader:
    """Iterate the entries of a tar stream; after each, consume its data or let it be skipped.

    ``source`` names the stream in errors (default: the stream's own). :meth:`next` after
    the end keeps returning None.
    """

    def __init__(self, stream: PlainStream, source: Source | None = None) -> None:
        self.inp = _Input(stream)
        self.source = source or stream.source
        self.entries = 0
        self._left = 0  # data bytes of the current entry not consumed yet
        self._pad = 0
        self._size = 0
        self._name = ""
        self._ended = False

    # -- errors ------------------------------------------------------------------------------
    def _err(self, problem: str, entry: str | None = None, hint: str | None = None
             ) -> Exception:
        return self.source.error(problem, entry=entry, hint=hint)

    def _truncated(self, where: str, entry: str | None = None) -> Exception:
        return self._err(f"truncated tar stream {where}", entry=entry,
                         hint=self.source.incomplete)

    # -- data --------------------------------------------------------------------------------
    @property
    def offset(self) -> int:
        """Plain bytes consumed so far."""
        return self.inp.pos

    def peek_block(self) -> bytes:
        """The next block (or less, at the end) without consuming it."""
        return self.inp.peek(BLOCK)

    def copy_data(self, fd: int) -> None:
        """Write the current entry's (remaining) data to ``fd``."""
        n = self._left
        if n:
            got = self.inp.copy_to(fd, n)
            self._left -= got
            if got < n:
                raise self._short()

    def data_reader(self) -> io.RawIOBase:
        """A file object reading the current entry's data (valid until :meth:`next`)."""
        return _EntryData(self)

    def _short(self) -> Exception:
        done = self._size - self._left
        self._left = self._pad = 0
        return self._truncated(f"inside the file data: the entry is {self._size} bytes, the "
                               f"stream ends after {done}", self._name)

    def _finish_entry(self) -> bool:
        """Skip what is left of the current entry; False when the stream ended in its padding
        (a clean end, as for Go).
        """
        left, pad = self._left, self._pad
        if left:
            self._left -= self.inp.copy_to(-1, left)
            if self._left:
                raise self._short()
        self._pad = 0
        return not pad or self.inp.copy_to(-1, pad) == pad

    def _payload(self, size: int, kind: str, name: str) -> bytes:
        if size > MAX_META:
            raise self._err(f"{kind} header of {size} bytes is larger than the "
                            f"{MAX_META}-byte limit", entry=name,
                            hint="the data is malformed or hostile")
        data = self.inp.read(size)
        pad = -size % BLOCK
        if len(data) < size or len(self.inp.read(pad)) < pad:
            raise self._truncated(f"inside a {kind} header", name)
        return data

    # -- headers -----------------------------------------------------------------------------
    def next(self) -> Entry | None:
        """The next entry, or None at the end of the archive."""
        if self._ended:
            return None
        if not self._finish_entry():
            self._ended = True
            return None
        pax: dict[str, bytes] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            at = self.inp.pos
            block = self.inp.read(BLOCK)
            if not block:
                self._ended = True
                return None  # clean end at a header boundary
            if len(block) < BLOCK:
                raise self._truncated(f"inside a header (at byte {at})")
            if block == _ZERO:
                self._ended = True
                second = self.inp.read(BLOCK)
                if second and second != _ZERO:
                    raise self._err(f"a zero block at byte {at} is followed by data, not "
                                    "by the second zero block that ends an archive")
                return None
            shown = long_name or (pax["path"].decode("utf-8", "surrogateescape")
                                  if "path" in pax else None)
            try:
                e = parse_header(block)
            except HeaderError as exc:
                raise self._err(f"bad tar header at byte {at} (after {self.entries} "
                                f"entries): {exc}", entry=shown or exc.entry) from None
            t = e.type
            if t in META:
                data = self._payload(e.size, META[t], e.name)
                try:
                    records = parse_pax(data) if t in ("x", "g") else {}
                except HeaderError as exc:
                    raise self._err(f"bad {META[t]} header at byte {at}: {exc}",
                                    entry=e.name) from None
                if t == "x":
                    pax = records  # a second one replaces the first, as in Go
                elif t == "L":
                    long_name = _cstr(data)
                elif t == "K":
                    long_link = _cstr(data)
                continue
            if pax:
                try:
                    apply_pax(e, pax)
                except HeaderError as exc:
                    raise self._err(f"bad PAX header: {exc}", entry=shown or e.name,
                                    hint=exc.hint) from None
            if long_name:
                e.name = long_name
            if long_link:
                e.linkname = long_link
            e.data = 0 if t in HEADER_ONLY else e.size
            if t in REGULAR:
                e.type = DIR if e.name.endswith("/") else REG
            self._size = self._left = e.data if e.type == REG else 0
            self._pad = (e.data - self._left) + (-e.data % BLOCK)
            self._name = e.name
            self.entries += 1
            return e


def _cstr(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class _EntryData(io.RawIOBase):
    """The current entry's data as a file object; short data raises the reader's error."""

    def __init__(self, tar: TarReader) -> None:
        self.tar = tar

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        t = self.tar
        if t._left <= 0:
            return 0
        n = t.inp.readinto(memoryview(b).cast("B"), t._left)
        if n == 0:
            raise t._short()
        t._left -= n
        return n
