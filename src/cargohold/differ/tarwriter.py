"""Writing a layer tar: PAX headers, and a sink that hashes, compresses and stores the stream.

Headers are ustar blocks, preceded by a PAX ``x`` header whenever a value does not fit or
needs more than ustar can say: names or link targets longer than 100 bytes or not ASCII,
owners or sizes beyond the octal fields, and every xattr (``SCHILY.xattr.<name>``, the form
GNU tar, Go's archive/tar and containerd read). Times are whole seconds (mtime truncated,
atime/ctime omitted) so that the same tree always gives the same bytes.

:class:`LayerSink` takes the plain tar bytes on the calling thread (where they are hashed into
the diffID), and compresses and writes them to the store on a worker thread, so reading
files overlaps with compression.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable

from cargohold.differ.api import Compression

BLOCK = 512
BATCH = 1 << 20
_MAX_OCTAL = {8: 8**7, 12: 8**11}


def _octal(v: int, n: int) -> bytes:
    return b"%0*o\0" % (n - 1, v)


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode("utf-8", "surrogateescape") + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def _block(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, typ: bytes,
           link: bytes = b"", major: int = 0, minor: int = 0) -> bytes:
    h = bytearray(BLOCK)
    h[0:len(name[:100])] = name[:100]
    h[100:108] = _octal(mode, 8)
    h[108:116] = _octal(uid, 8)
    h[116:124] = _octal(gid, 8)
    h[124:136] = _octal(size, 12)
    h[136:148] = _octal(mtime, 12)
    h[148:156] = b" " * 8
    h[156:157] = typ
    h[157:157 + len(link[:100])] = link[:100]
    h[257:265] = b"ustar\x0000"
    h[329:337] = _octal(major, 8)
    h[337:345] = _octal(minor, 8)
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def header(name: str, typ: bytes, *, mode: int, uid: int, gid: int, size: int = 0,
           mtime: int = 0, linkname: str = "", devmajor: int = 0, devminor: int = 0,
           xattrs: dict[str, bytes] | None = None) -> bytes:
    """The header block(s) of one entry: an optional PAX header, then the ustar block."""
    bname = name.encode("utf-8", "surrogateescape")
    blink = linkname.encode("utf-8", "surrogateescape")
    recs = []
    if len(bname) > 100 or not bname.isascii():
        recs.append(_pax_record("path", bname))
    if len(blink) > 100 or not blink.isascii():
        recs.append(_pax_record("linkpath", blink))
    if uid >= _MAX_OCTAL[8]:
        recs.append(_pax_record("uid", str(uid).encode()))
    if gid >= _MAX_OCTAL[8]:
        recs.append(_pax_record("gid", str(gid).encode()))
    if size >= _MAX_OCTAL[12]:
        recs.append(_pax_record("size", str(size).encode()))
    if not 0 <= mtime < _MAX_OCTAL[12]:
        recs.append(_pax_record("mtime", str(mtime).encode()))
    for k in sorted(xattrs or ()):
        recs.append(_pax_record("SCHILY.xattr." + k, xattrs[k]))  # type: ignore[index]
    out = b""
    if recs:
        data = b"".join(recs)
        pname = b"PaxHeaders/" + bname.rsplit(b"/", 1)[-1][:80]
        out = _block(pname, 0o644, 0, 0, len(data), max(0, min(mtime, _MAX_OCTAL[12] - 1)),
                     b"x") + data + bytes(-len(data) % BLOCK)
    return out + _block(bname, mode, min(uid, _MAX_OCTAL[8] - 1), min(gid, _MAX_OCTAL[8] - 1),
                        size if size < _MAX_OCTAL[12] else 0,
                        max(0, min(mtime, _MAX_OCTAL[12] - 1)), typ, blink, devmajor, devminor)


def end_of_archive() -> bytes:
    """The two zero blocks that end a tar stream."""
    return bytes(2 * BLOCK)


class _Compressor:
    def __init__(self, compression: Compression, level: int | None) -> None:
        self.c = compression
        if compression is Compression.GZIP:
            try:
                from isal import isal_zlib as z
                lvl = z.ISAL_DEFAULT_COMPRESSION if level is None else level
            except ImportError:  # pragma: no cover
                import zlib as z  # type: ignore[no-redef]
                lvl = 6 if level is None else level
            self.obj = z.compressobj(lvl, z.DEFLATED, 31)
        elif compression is Compression.ZSTD:
            import zstandard

            self.obj = zstandard.ZstdCompressor(level=3 if level is None else level).compressobj()
        else:
            self.obj = None

    def compress(self, data: bytes) -> bytes:
        return self.obj.compress(data) if self.obj is not None else data

    def flush(self) -> bytes:
        return self.obj.flush() if self.obj is not None else b""


class LayerSink:
    """Plain tar bytes in; diffID and size counted here; compressed bytes out via ``write``.

    ``write`` (the store writer's) is called from a worker thread; its errors re-raise from
    :meth:`add` or :meth:`close`. Call :meth:`close` once, then read :attr:`diff_id`.
    """

    def __init__(self, compression: Compression, write: Callable[[bytes], object], *,
                 level: int | None = None) -> None:
        self._comp = _Compressor(compression, level)
        self._write = write
        self._hash = hashlib.sha256()
        self.size = 0
        self._buf = bytearray()
        self._q: queue.Queue[bytes | None] = queue.Queue(8)
        self._err: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="layer compress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                item = self._q.get()
                if item is None:
                    tail = self._comp.flush()
                    if tail:
                        self._write(tail)
                    return
                out = self._comp.compress(item)
                if out:
                    self._write(out)
        except BaseException as exc:  # re-raised on the caller's thread
            self._err = exc
            while self._q.get() is not None:  # unblock the producer until it stops
                pass

    def _ship(self) -> None:
        if self._err is not None:
            raise self._err
        data = bytes(self._buf)
        self._buf.clear()
        self._hash.update(data)
        self.size += len(data)
        self._q.put(data)

    def add(self, data: bytes | memoryview) -> None:
        """Append plain tar bytes."""
        self._buf += data
        if len(self._buf) >= BATCH:
            self._ship()

    def close(self) -> None:
        """Flush, finish the compressed stream and wait for the worker; re-raise its error."""
        if self._buf:
            self._ship()
        self._q.put(None)
        self._thread.join()
        if self._err is not None:
            raise self._err

    def abandon(self) -> None:
        """Stop the worker without finishing the stream (after an error)."""
        self._q.put(None)
        self._thread.join()

    @property
    def diff_id(self) -> str:
        """``sha256:<hex>`` of the plain tar stream."""
        return "sha256:" + self._hash.hexdigest()
