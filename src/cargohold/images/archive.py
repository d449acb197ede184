"""Reading image archives in one pass: tar files, directories, stdin, compressed or not.

:func:`open_archive` takes a path (a tar file, an OCI layout or extracted ``docker save``
directory) or ``-`` (standard input) and returns an :class:`Archive` whose :meth:`members`
yields each entry once, in archive order, with a reader for regular files. Nothing is buffered
beyond the current member: a 10 GB archive needs a few MiB of memory.

Compression is sniffed from the first bytes, never from the file name: gzip (``1f 8b``, read with
ISA-L when available), zstd (``28 b5 2f fd``), xz (``fd 37 7a 58 5a 00``); anything else must be
a tar stream. Reading and decompressing run on a helper thread that stays a few MiB ahead, so
decompression overlaps with the hashing and writing the importer does with each member.

The tar reader understands what image archives contain: ustar and GNU headers, PAX ``path``,
``linkpath`` and ``size`` records, GNU long names, regular files, directories, symlinks and
hardlinks. A stream that ends inside a header or a member raises :class:`ArchiveError`
("truncated"); a first block that is not a tar header raises it too ("not an image archive").
"""

from __future__ import annotations

import io
import os
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cargohold.errors import InvalidArgument, Unsupported

CHUNK = 1 << 20
_DEPTH = 8
BLOCK = 512
MAX_META = 1 << 20

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
BZIP2_MAGIC = b"BZh"


class ArchiveError(InvalidArgument):
    """The archive is malformed: truncated, not a tar, or not an image archive."""


@dataclass
class Member:
    """One entry of an archive.

    ``kind`` is ``file``, ``dir``, ``symlink``, ``hardlink`` or ``other``; ``reader`` reads a
    regular file's ``size`` bytes (only until the next member is requested).
    """

    name: str
    kind: str
    size: int = 0
    linkname: str = ""
    reader: BinaryIO | None = None


def sniff(head: bytes) -> str:
    """``gzip``, ``zstd``, ``xz``, ``bzip2`` or ``none`` from the first bytes of a stream."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(BZIP2_MAGIC) and len(head) > 3 and head[3:4].isdigit():
        return "bzip2"
    return "none"


def normalize_name(name: str) -> str:
    """An archive path without ``./``, leading or trailing slashes."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts)


# --- the byte source ------------------------------------------------------------------------
class _Prefetch(io.RawIOBase):
    """Reads ``src`` on a helper thread, a few chunks ahead of the consumer."""

    def __init__(self, src: BinaryIO, what: str) -> None:
        self.src = src
        self.what = what
        self.count = 0  # bytes handed out
        self._q: queue.Queue[object] = queue.Queue(_DEPTH)
        self._buf = memoryview(b"")
        self._eof = False
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="archive read", daemon=True)
        self._t.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self.src.read(CHUNK)
                if not data:
                    break
                self._put(data)
            self._put(b"")
        except BaseException as exc:  # noqa: BLE001 - re-raised on the consumer's thread
            self._put(exc)

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _next(self) -> bool:
        if self._eof:
            return False
        item = self._q.get()
        if isinstance(item, BaseException):
            self._eof = True
            if isinstance(item, (EOFError, OSError, ValueError)) and not isinstance(
                    item, (FileNotFoundError, PermissionError)):
                at = f" after {self.count} bytes" if self.count else ""
                raise ArchiveError(f"archive {self.what}: truncated or corrupt compressed "
                                   f"stream{at} ({item})",
                                   hint="the file is incomplete or damaged; copy or export "
                                        "it again") from item
            raise item
        if not item:
            self._eof = True
            return False
        self._buf = memoryview(item)  # type: ignore[arg-type]
        return True

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._buf and not self._next():
            return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self.count += n
        return n

    def read_exact_or_less(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            if not self._buf and not self._next():
                break
            take = min(n - len(out), len(self._buf))
            out += self._buf[:take]
            self._buf = self._buf[take:]
        self.count += len(out)
        return bytes(out)

    def skip(self, n: int) -> int:
        left = n
        while left:
            if not self._buf and not self._next():
                break
            take = min(left, len(self._buf))
            self._buf = self._buf[take:]
            left -= take
        self.count += n - left
        return n - left

    def close(self) -> None:
        self._stop.set()
        super().close()


class _MemberReader(io.RawIOBase):
    """Exactly ``size`` bytes of the current tar member; short data is 'truncated'."""

    def __init__(self, src: _Prefetch, size: int, name: str, what: str) -> None:
        self.src = src
        self.left = size
        self.size = size
        self.name = name
        self.what = what

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.left <= 0:
            return 0
        view = memoryview(b)[:min(len(b), self.left)]
        n = self.src.readinto(view)
        if n == 0:
            raise ArchiveError(
                f"archive {self.what}: truncated inside {self.name} "
                f"({self.size - self.left} of {self.size} bytes)",
                hint="the archive is incomplete; copy or export it again")
        self.left -= n
        return n


# --- archives ---------------------------------------------------------------------------------
class Archive:
    """An opened archive; iterate :meth:`members` once. Use as a context manager."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.compression = "none"

    def members(self) -> Iterator[Member]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _DirArchive(Archive):
    """An OCI layout or an extracted docker save directory."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path

    def members(self) -> Iterator[Member]:
        # Small metadata first, then blobs, so an importer sees the layout before the bytes.
        entries: list[tuple[int, str]] = []
        for d, dirs, files in os.walk(self.path):
            dirs.sort()
            for n in sorted(files + [x for x in dirs if os.path.islink(os.path.join(d, x))]):
                rel = normalize_name(os.path.relpath(os.path.join(d, n), self.path))
                entries.append((0 if "/" not in rel else 1, rel))
        for _rank, rel in sorted(entries):
            full = os.path.join(self.path, rel)
            if os.path.islink(full):
                yield Member(rel, "symlink", linkname=os.readlink(full))
                continue
            if not os.path.isfile(full):
                yield Member(rel, "other")
                continue
            with open(full, "rb", buffering=0) as f:
                yield Member(rel, "file", os.fstat(f.fileno()).st_size, reader=f)


class _TarArchive(Archive):
    """A tar stream (possibly decompressed on the fly)."""

    def __init__(self, label: str, raw: BinaryIO, owned: BinaryIO | None) -> None:
        super().__init__(label)
        self._raw = raw
        self._owned = owned
        self._src: _Prefetch | None = None

    def _open(self) -> _Prefetch:
        head = _read_head(self._raw, 6)
        kind = sniff(head)
        self.compression = kind
        # The magic bytes were consumed (a pipe cannot be peeked reliably): put them back.
        self._raw = _Prefixed(head, self._raw)  # type: ignore[assignment]
        stream: BinaryIO = self._raw
        if kind == "gzip":
            try:
                from isal import igzip

                stream = igzip.IGzipFile(fileobj=self._raw, mode="rb")  # type: ignore[assignment]
            except ImportError:  # pragma: no cover - isal is a dependency
                import gzip

                stream = gzip.GzipFile(fileobj=self._raw, mode="rb")  # type: ignore[assignment]
        elif kind == "zstd":
            import zstandard

            stream = zstandard.ZstdDecompressor().stream_reader(  # type: ignore[assignment]
                self._raw, read_size=CHUNK, read_across_frames=True)
        elif kind == "xz":
            import lzma

            stream = lzma.LZMAFile(self._raw)  # type: ignore[assignment]
        elif kind == "bzip2":
            raise Unsupported(f"archive {self.label}: bzip2 compression is not supported",
                              hint="decompress it first (bunzip2), or recompress with gzip, "
                                   "zstd or xz")
        return _Prefetch(stream, self.label)

    def members(self) -> Iterator[Member]:
        src = self._src = self._open()
        first = True
        pending: dict[str, str] = {}
        while True:
            hdr = src.read_exact_or_less(BLOCK)
            if not hdr:
                if first:
                    raise ArchiveError(f"archive {self.label}: empty input",
                                       hint="give an image archive (docker save, skopeo "
                                            "oci-archive, ctr images export) or a layout "
                                            "directory")
                return  # a clean end at a header boundary, as Go's archive/tar accepts
            if len(hdr) < BLOCK and not first:
                raise self._truncated("in a tar header")
            if hdr == bytes(BLOCK):
                return
            if len(hdr) < BLOCK or not _checksum_ok(hdr):
                if first:
                    raise ArchiveError(
                        f"archive {self.label}: not an image archive (not a tar stream, "
                        f"and not gzip, zstd or xz)",
                        hint="give a docker save or OCI image-layout tar (optionally "
                             "compressed), or a layout directory")
                raise ArchiveError(f"archive {self.label}: corrupt tar header at byte "
                                   f"{src.count - BLOCK}",
                                   hint="the archive is damaged; copy or export it again")
            first = False
            name = _str(hdr[0:100])
            prefix = _str(hdr[345:500]) if hdr[257:262] == b"ustar" else ""
            if prefix and hdr[257:263] == b"ustar\x00":
                name = prefix + "/" + name
            size = _num(hdr[124:136])
            typ = chr(hdr[156]) if hdr[156] else "0"
            linkname = _str(hdr[157:257])
            padded = (size + BLOCK - 1) // BLOCK * BLOCK
            if typ in ("x", "L", "K", "g"):
                if size > MAX_META:
                    raise ArchiveError(f"archive {self.label}: extended header of {size} "
                                       "bytes is too large")
                data = src.read_exact_or_less(padded)
                if len(data) < padded:
                    raise self._truncated("in an extended header")
                data = data[:size]
                if typ == "x":
                    pending.update(_pax(data))
                elif typ == "L":
                    pending["path"] = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                elif typ == "K":
                    pending["linkpath"] = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            if "path" in pending:
                name = pending["path"]
            if "linkpath" in pending:
                linkname = pending["linkpath"]
            if "size" in pending:
                size = int(pending["size"])
                padded = (size + BLOCK - 1) // BLOCK * BLOCK
            pending = {}
            rel = normalize_name(name)
            if typ in ("0", "7"):
                reader = _MemberReader(src, size, rel, self.label)
                yield Member(rel, "file", size, reader=reader)  # type: ignore[arg-type]
                rest = reader.left + (padded - size)
            else:
                kind = {"5": "dir", "2": "symlink", "1": "hardlink"}.get(typ, "other")
                yield Member(rel, kind, 0, linkname if kind == "symlink"
                             else normalize_name(linkname))
                rest = padded if typ not in ("1", "2", "5") else 0
            if rest and src.skip(rest) < rest:
                raise self._truncated(f"inside {rel}")

    def _truncated(self, where: str) -> ArchiveError:
        n = self._src.count if self._src else 0
        return ArchiveError(f"archive {self.label}: truncated {where} (after {n} bytes)",
                            hint="the archive is incomplete; copy or export it again")

    def close(self) -> None:
        if self._src is not None:
            self._src.close()
        if self._owned is not None:
            self._owned.close()


def _read_head(raw: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes (fewer only at the end), however the writer of a pipe splits them."""
    out = b""
    while len(out) < n:
        chunk = raw.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


class _Prefixed(io.RawIOBase):
    """``head`` followed by the rest of ``raw``."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self.head = head
        self.raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.raw.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n < 0:
                data, self.head = self.head + self.raw.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            return data
        return self.raw.read(n)


def _checksum_ok(hdr: bytes) -> bool:
    try:
        want = int(hdr[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    got = sum(hdr[:148]) + 8 * 32 + sum(hdr[156:])
    return want == got


def _str(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _num(field: bytes) -> int:
    if field[0] & 0x80:  # base-256 (GNU) for sizes of 8 GiB and more
        v = int.from_bytes(field[1:], "big")
        return v
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        sp = data.find(b" ", i)
        if sp < 0:
            break
        try:
            length = int(data[i:sp])
        except ValueError:
            break
        rec = data[sp + 1:i + length - 1]
        k, _, v = rec.partition(b"=")
        key = k.decode("utf-8", "replace")
        if key in ("path", "linkpath", "size"):
            out[key] = v.decode("utf-8", "surrogateescape")
        i += length
    return out


def open_archive(path: str) -> Archive:
    """Open ``path`` (file, directory or ``-`` for stdin) for one pass over its members.

    Raises NotFound-like :class:`InvalidArgument` for paths that do not exist.
    """
    if path == "-":
        return _TarArchive("(stdin)", sys.stdin.buffer, None)  # type: ignore[arg-type]
    if os.path.isdir(path):
        return _DirArchive(path)
    try:
        f = open(path, "rb", buffering=CHUNK)  # noqa: SIM115 - owned by the archive
    except FileNotFoundError as exc:
        from cargohold.errors import NotFound

        raise NotFound(f"archive {path}: not found",
                       hint="give the path of an image archive or layout directory, or - "
                            "for standard input") from exc
    except IsADirectoryError as exc:  # pragma: no cover - raced with isdir
        raise InvalidArgument(f"archive {path}: is a directory") from exc
    return _TarArchive(path, f, f)  # type: ignore[arg-type]
