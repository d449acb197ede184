"""A streaming tar reader for layer application: ustar, GNU and PAX headers, zero copies.

Why not :mod:`tarfile`: its stream mode copies every member through Python buffers and
re-reads headers one byte at a time where we can slice a 1 MiB chunk; and a layer needs a
strict reader anyway (hard limits on extended headers, no sparse files, exact error text).

What it understands: types ``0``, NUL and ``7`` (regular), ``1`` (hardlink), ``2`` (symlink),
``3 4`` (devices), ``5`` (dir), ``6`` (fifo); PAX ``x`` records (``path``, ``linkpath``, ``size``,
``uid``, ``gid``, ``mtime``, ``atime``, ``SCHILY.xattr.*``, ``LIBARCHIVE.xattr.*``); GNU ``L``
and ``K`` long names; base-256 numbers. PAX ``g`` global headers are ignored (as containerd
does). Sparse files and other types are refused. A clean end of stream at a header boundary
ends the archive even without the two zero blocks (as Go's archive/tar does); an end anywhere
else is "truncated".
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field

from cargohold.differ.api import LayerError
from cargohold.differ.compression import PlainStream

BLOCK = 512
MAX_META = 1 << 20  # largest PAX / GNU long-name payload we accept (Go uses the same bound)
_ZERO = bytes(BLOCK)

REG, LNK, SYM, CHR, BLK, DIR, FIFO = "0", "1", "2", "3", "4", "5", "6"
_REGULAR = {"0", "\0", "7"}


@dataclass(slots=True)
class Entry:
    """One tar entry with its extended headers folded in."""

    name: str
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    atime_ns: int | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)


class _Input:
    """Exact reads and direct-to-fd copies over the PlainStream's chunks."""

    __slots__ = ("stream", "cur", "off", "eof")

    def __init__(self, stream: PlainStream) -> None:
        self.stream = stream
        self.cur = memoryview(b"")
        self.off = 0
        self.eof = False

    def _fill(self) -> bool:
        data = self.stream.next_chunk()
        if not data:
            self.eof = True
            return False
        self.cur = memoryview(data)
        self.off = 0
        return True

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the stream."""
        avail = len(self.cur) - self.off
        if avail >= n:
            b = self.cur[self.off:self.off + n].tobytes()
            self.off += n
            return b
        parts = []
        while n:
            avail = len(self.cur) - self.off
            if not avail:
                if not self._fill():
                    break
                continue
            m = min(n, avail)
            parts.append(self.cur[self.off:self.off + m].tobytes())
            self.off += m
            n -= m
        return b"".join(parts)

    def copy_to(self, fd: int, n: int) -> int:
        """Write the next ``n`` bytes to ``fd`` (fd may be -1 to skip); return bytes moved."""
        moved = 0
        while n:
            avail = len(self.cur) - self.off
            if not avail:
                if not self._fill():
                    return moved
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
        return moved


def _num(field_: bytes, what: str) -> int:
    if field_[:1] and field_[0] & 0x80:  # base-256 (GNU/star) for big values
        v = int.from_bytes(field_, "big", signed=False)
        v &= (1 << (len(field_) * 8 - 1)) - 1
        if field_[0] & 0x40:  # negative
            v -= 1 << (len(field_) * 8 - 1)
        return v
    s = field_.split(b"\0", 1)[0].strip(b" ")
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        raise ValueError(f"bad {what} field {s[:16]!r}") from None


def _str(field_: bytes) -> str:
    return field_.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def parse_pax(data: bytes) -> dict[str, bytes]:
    """PAX records ``"<len> <key>=<value>"`` plus a newline into a dict of raw byte values."""
    out: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # some writers pad the payload with NULs
            break
        sp = data.find(b" ", pos, pos + 24)
        if sp < 0:
            raise ValueError("PAX record without a length")
        length = int(data[pos:sp])
        rec = data[sp + 1:pos + length]
        if length <= sp - pos or not rec.endswith(b"\n") or b"=" not in rec:
            raise ValueError("malformed PAX record")
        k, _, v = rec[:-1].partition(b"=")
        out[k.decode("utf-8", "surrogateescape")] = v
        pos += length
    return out


def _pax_time(v: bytes) -> int:
    s = v.decode("ascii")
    neg = s.startswith("-")
    whole, _, frac = s.lstrip("-").partition(".")
    ns = int(whole or 0) * 1_000_000_000 + int((frac + "000000000")[:9] or 0)
    return -ns if neg else ns


class TarReader:
    """Iterate entries of a layer; after each, call :meth:`copy_data` or let it be skipped."""

    def __init__(self, stream: PlainStream, layer: str) -> None:
        self.inp = _Input(stream)
        self.layer = layer
        self._left = 0  # data bytes of the current entry not consumed yet
        self._pad = 0
        self.entries = 0

    def _err(self, problem: str, entry: str | None = None, hint: str | None = None) -> LayerError:
        return LayerError(self.layer, problem, entry=entry, hint=hint)

    def _payload(self, size: int, kind: str) -> bytes:
        if size > MAX_META:
            raise self._err(f"{kind} header of {size} bytes is larger than the "
                            f"{MAX_META}-byte limit", hint="the layer is malformed or hostile")
        data = self.inp.read(size)
        pad = -size % BLOCK
        if len(data) < size or len(self.inp.read(pad)) < pad:
            raise self._err(f"truncated tar stream inside a {kind} header",
                            hint="the blob is incomplete: fetch it again")
        return data

    def _finish_entry(self, name: str) -> None:
        want = self._left + self._pad
        if want and self.inp.copy_to(-1, want) < want:
            raise self._err("truncated tar stream inside the file data", entry=name,
                            hint="the blob is incomplete: fetch it again")
        self._left = self._pad = 0

    def copy_data(self, fd: int, name: str) -> None:
        """Write the current entry's data to ``fd``."""
        n = self._left
        if n and self.inp.copy_to(fd, n) < n:
            raise self._err("truncated tar stream inside the file data", entry=name,
                            hint="the blob is incomplete: fetch it again")
        self._left = 0

    def next(self, prev_name: str = "") -> Entry | None:
        """The next entry, or None at the end of the archive."""
        self._finish_entry(prev_name)
        pax: dict[str, bytes] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            block = self.inp.read(BLOCK)
            if not block:
                return None  # clean end at a header boundary
            if len(block) < BLOCK:
                raise self._err("truncated tar stream inside a header",
                                hint="the blob is incomplete: fetch it again")
            if block == _ZERO:
                return None
            try:
                e = self._header(block)
            except ValueError as exc:
                raise self._err(f"bad tar header after {self.entries} entries: {exc}") from exc
            t = e.type
            if t in ("x", "g", "L", "K"):
                kind = {"x": "PAX", "g": "PAX global", "L": "GNU long name",
                        "K": "GNU long link"}[t]
                data = self._payload(e.size, kind)
                if t == "x":
                    try:
                        pax.update(parse_pax(data))
                    except ValueError as exc:
                        raise self._err(f"bad PAX header: {exc}", entry=e.name) from exc
                elif t == "L":
                    long_name = _str(data)
                elif t == "K":
                    long_link = _str(data)
                continue
            if long_name is not None:
                e.name = long_name
            if long_link is not None:
                e.linkname = long_link
            if pax:
                self._apply_pax(e, pax)
            if t in _REGULAR and e.name.endswith("/"):
                e.type = DIR  # pre-POSIX way of writing a directory
            elif t in _REGULAR:
                e.type = REG
            self._left = e.size if e.type == REG else 0
            # Only regular files carry data, but a size on other types must still be skipped.
            skip = e.size if e.type != REG else 0
            self._pad = skip + (-e.size % BLOCK)
            self.entries += 1
            return e

    def _header(self, b: bytes) -> Entry:
        chk = _num(b[148:156], "checksum")
        total = sum(b[:148]) + 256 + sum(b[156:])
        if chk != total:
            signed = sum(x - 256 if x > 127 else x for x in b[:148] + b[156:]) + 256
            if chk != signed:
                raise ValueError("checksum mismatch (not a tar stream, or corrupt)")
        name = _str(b[0:100])
        magic = b[257:263]
        if magic == b"ustar\0" and b[345]:  # POSIX prefix field
            name = _str(b[345:500]) + "/" + name
        t = chr(b[156]) if b[156] else "0"
        size = _num(b[124:136], "size")
        if size < 0:
            raise ValueError("negative size")
        return Entry(name=name, type=t, mode=_num(b[100:108], "mode"),
                     uid=_num(b[108:116], "uid"), gid=_num(b[116:124], "gid"), size=size,
                     mtime_ns=_num(b[136:148], "mtime") * 1_000_000_000,
                     linkname=_str(b[157:257]), devmajor=_num(b[329:337], "devmajor"),
                     devminor=_num(b[337:345], "devminor"))

    def _apply_pax(self, e: Entry, pax: dict[str, bytes]) -> None:
        try:
            for k, v in pax.items():
                if k == "path":
                    e.name = v.decode("utf-8", "surrogateescape")
                elif k == "linkpath":
                    e.linkname = v.decode("utf-8", "surrogateescape")
                elif k == "size":
                    e.size = int(v)
                elif k == "uid":
                    e.uid = int(v)
                elif k == "gid":
                    e.gid = int(v)
                elif k == "mtime":
                    e.mtime_ns = _pax_time(v)
                elif k == "atime":
                    e.atime_ns = _pax_time(v)
                elif k.startswith("SCHILY.xattr."):
                    e.xattrs[k[13:]] = v
                elif k.startswith("LIBARCHIVE.xattr."):
                    name = base64.b64decode(k[17:] + "==").decode("utf-8", "surrogateescape")
                    e.xattrs.setdefault(name, base64.b64decode(v + b"=="))
                elif k.startswith("GNU.sparse."):
                    raise LayerError(self.layer, "sparse files are not supported",
                                     entry=e.name, hint="repack the layer without --sparse")
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._err(f"bad PAX value: {exc}", entry=e.name) from exc
        if e.size < 0:
            raise self._err("negative size in PAX header", entry=e.name)
