"""Compression: the one magic-byte sniffer, the one decompressor opener, and PlainStream.

:func:`sniff` names the compression a stream's first bytes show and :func:`open_plain` opens
the matching decompressor; layer apply and image archive import both use them (layers trust
the media type and check the magic against it; archives are sniffed, never guessed from a file
name).

:class:`PlainStream` runs read → decompress → hash on one thread (ISA-L, zstd and hashlib all
release the GIL on large buffers) and hands chunks of up to 1 MiB to the consumer through a
buffer capped in bytes, so the tar parser and the file writes on the calling thread overlap
with it. When the buffer holds ``buffer`` bytes the worker waits for the consumer: memory stays
bounded whatever the layer expands to (one chunk is always let through, so a cap smaller than
a chunk still makes progress).

The stream starts when entered (or on :meth:`PlainStream.start`), which need not be where it
is consumed: unpack starts the next layer's stream with a large buffer while the current layer
is still being applied, and hands the running stream to ``apply(stream=...)`` when that layer's
turn comes. Errors found by the worker (corrupt data, truncation, a read error) wait in the
buffer behind the chunks before them, and re-raise in the consumer only when it reaches them.

For a layer the compression comes from the media type; the first bytes must agree (a gzip
layer must start ``1f 8b``, a zstd layer ``28 b5 2f fd``, and an uncompressed layer must not
look compressed). A mismatch is a :class:`~cargohold.differ.api.LayerError`: we never guess,
because a mislabelled blob is either a packaging bug worth surfacing or an attempt to smuggle
content past a check. Errors name the stream's :class:`~cargohold.differ.api.Source` (a
layer by default, or an image archive).

gzip streams may hold several members (``pigz``, concatenated layers); trailing zero padding
after the last member is ignored, other trailing bytes are an error. zstd may hold several
frames. A gzip stream cut short is reported as truncated here; a zstd stream cut inside a frame
ends quietly in ``zstandard``, so the tar reader reports it ("truncated tar stream") — or, when
the cut falls after the end-of-archive blocks, the diffID check does.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import threading
from collections.abc import Callable
from typing import BinaryIO

from cargohold.differ.api import Compression, Source, layer_source
from cargohold.differ.tarheader import checksum_ok
from cargohold.errors import CargoholdError, Unsupported

CHUNK = 1 << 20
#: plain bytes a stream buffers by default: enough to ride over a slow fsync, little memory
BUFFER = 8 << 20

try:  # ISA-L inflates ~5x faster than zlib; zlib (the stdlib gzip module) stays as a fallback
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - isal is a dependency, but keep working without it
    _igzip = None

_END = object()


class _Counting:
    """The compressed reader, counting bytes and reporting progress."""

    def __init__(self, raw: BinaryIO, progress: Callable[[int], None] | None) -> None:
        self.raw = raw
        self.progress = progress
        self.count = 0
        self.pushback = b""

    def read(self, n: int = -1) -> bytes:
        if self.pushback:
            if n < 0 or n >= len(self.pushback):
                data, self.pushback = self.pushback, b""
            else:
                data, self.pushback = self.pushback[:n], self.pushback[n:]
            return data
        data = self.raw.read(n) or b""
        self.count += len(data)
        if data and self.progress is not None:
            self.progress(len(data))
        return data

    def readinto(self, b: bytearray | memoryview) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


#: magic bytes → compression (bzip2's "BZh" is followed by the block size digit)
MAGIC = ((b"\x1f\x8b", Compression.GZIP), (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
         (b"\xfd7zXZ\x00", Compression.XZ), (b"BZh", Compression.BZIP2))
#: bytes :func:`sniff` wants to see (a whole tar header block)
SNIFF_BYTES = 512


def sniff(head: bytes) -> Compression | None:
    """The compression the first bytes of a stream show, or None for none known.

    A first block that is a valid tar header is a plain tar whatever its first bytes look
    like (a member may be named ``BZh9…``), so give at least :data:`SNIFF_BYTES` when you can.
    """
    if checksum_ok(head[:SNIFF_BYTES]):
        return None
    for magic, kind in MAGIC:
        if head.startswith(magic):
            if kind is Compression.BZIP2 and not head[3:4].isdigit():
                continue
            return kind
    return None


def open_plain(raw: BinaryIO, compression: Compression, *, use_isal: bool = True) -> BinaryIO:
    """A file object reading the plain bytes of ``raw`` (no magic check; see PlainStream).

    Raises Unsupported for bzip2 (nothing in the image world writes it).
    """
    if compression is Compression.BZIP2:
        raise Unsupported("bzip2 compression is not supported",
                          hint="decompress it first (bunzip2), or recompress with gzip, zstd "
                               "or xz")
    if compression is Compression.XZ:
        import lzma

        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if compression is Compression.GZIP:
        if use_isal and _igzip is not None:
            return _igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression is Compression.ZSTD:
        import zstandard

        # stream_reader bounds each read's output (a tiny zstd blob can expand to gigabytes)
        return zstandard.ZstdDecompressor().stream_reader(  # type: ignore[return-value]
            raw, read_size=CHUNK, read_across_frames=True)
    return raw


class PlainStream:
    """The uncompressed bytes of a layer, produced on a worker thread and hashed on the way.

    Use as a context manager (entering starts the worker, unless :meth:`start` already did);
    call :meth:`next_chunk` until it returns ``b""``. :meth:`drain` consumes the rest so that
    :attr:`digest` covers the whole stream. Worker errors re-raise in the consumer, in stream
    order. :meth:`close` (leaving the ``with``) stops the worker, waits for it and drops what
    is buffered; it may be called at any time, repeatedly. The reader is not closed here: its
    owner closes it after the stream.

    ``buffer`` caps the plain bytes waiting for the consumer (:attr:`buffered`, with its peak
    in :attr:`high_water`); a chunk larger than the cap still passes when the buffer is empty.
    ``source`` names the stream in errors (default: the layer ``layer``); ``head`` holds bytes
    already read from ``reader`` (a sniffed prefix), read again first; ``hash=False`` skips
    the sha256 (then :attr:`digest` is meaningless).
    """

    def __init__(self, reader: BinaryIO, compression: Compression, layer: str, *,
                 progress: Callable[[int], None] | None = None, chunk: int = CHUNK,
                 buffer: int = BUFFER, use_isal: bool = True, source: Source | None = None,
                 head: bytes = b"", hash: bool = True) -> None:  # noqa: A002 - the obvious name
        self.reader = reader
        self.compression = compression
        self.layer = layer
        self.source = source or layer_source(layer)
        self.head = head
        self.hashing = hash
        self.progress = progress
        self.chunk = chunk
        self.buffer = buffer
        self.use_isal = use_isal
        self.size = 0
        self.compressed_size = 0
        self.buffered = 0
        self.high_water = 0
        self._hash = hashlib.sha256()
        self._items: collections.deque[object] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False  # set under _cond by close()
        self._ended = False  # set under _cond when the worker returns, however it returns
        self._thread = threading.Thread(target=self._run, name=f"unpack {layer[:19]}",
                                        daemon=True)
        self._started = False
        self._finished = False

    # -- worker ------------------------------------------------------------------------------
    def _check_magic(self, head: bytes) -> None:
        seen = sniff(head)
        if seen is self.compression or (seen is None and self.compression is Compression.NONE):
            return
        got = seen.value if seen else ("empty" if not head else "uncompressed")
        raise self.source.error(
            f"media type says {self.compression.value} but the data is {got} "
            f"(first bytes {head[:4].hex() or 'none'})",
            hint="the manifest's media type and the blob disagree: fix the image")

    def _put(self, item: object, size: int = 0) -> bool:
        """Queue ``item`` once there is room for ``size`` more bytes; False once closed."""
        with self._cond:
            while not self._stop and self.buffered and self.buffered + size > self.buffer:
                self._cond.wait()
            if self._stop:
                return False
            self._items.append(item)
            self.buffered += size
            if self.buffered > self.high_water:
                self.high_water = self.buffered
            self._cond.notify_all()
            return True

    def _run(self) -> None:
        try:
            self._produce()
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _produce(self) -> None:
        src_ = self.source
        try:
            src = _Counting(self.reader, self.progress)
            src.pushback = self.head
            head = src.read(self.chunk)
            if head or self.compression is not Compression.NONE:
                self._check_magic(head)
            src.pushback = head
            plain = open_plain(src, self.compression, use_isal=self.use_isal)  # type: ignore
            read = plain.read
            update = self._hash.update if self.hashing else None
            while not self._stop:
                data = read(self.chunk)
                if not data:
                    break
                if update is not None:
                    update(data)
                self.size += len(data)
                if not self._put(data, len(data)):
                    return
            self.compressed_size = src.count
            self._put(_END)
        except CargoholdError as exc:  # a mislabelled stream, bzip2, or the reader's own
            self._put(exc)
        except EOFError as exc:
            self._put(src_.error(f"truncated {self.compression.value} stream ({exc})",
                                 hint=src_.incomplete))
        except Exception as exc:  # corrupt data (zlib/isal/zstd/lzma errors) or reader I/O
            text = str(exc)
            text = text if len(text) < 160 else text[:160] + "…"
            self._put(src_.error(f"reading the {self.compression.value} stream failed: {text}",
                                 hint=src_.incomplete))

    # -- consumer ----------------------------------------------------------------------------
    def start(self) -> PlainStream:
        """Start the worker; a repeat (or a start after :meth:`close`) does nothing."""
        with self._cond:
            if self._started or self._stop:
                return self
            self._started = True
        try:
            self._thread.start()
        except BaseException:  # no thread to spare: the stream counts as closed
            with self._cond:
                self._started = False
                self._stop = True
            raise
        return self

    def __enter__(self) -> PlainStream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, *, wait: bool = True) -> None:
        """Stop the worker (if running), wait for it and drop the buffered chunks.

        ``wait=False`` does not wait: for a reader that may block forever (a pipe whose writer
        stalls), the daemon worker then ends on its next read.
        """
        with self._cond:
            self._stop = True
            self._items.clear()
            self.buffered = 0
            self._cond.notify_all()
        if self._started and wait:
            self._thread.join()

    def resize(self, buffer: int) -> None:
        """Change the cap on buffered bytes; a lower cap holds the worker until the consumer
        has taken the buffer below it (nothing already buffered is dropped).
        """
        with self._cond:
            self.buffer = buffer
            self._cond.notify_all()

    @property
    def alive(self) -> bool:
        """Whether the worker thread is still running."""
        return self._thread.is_alive()

    def next_chunk(self) -> bytes:
        """The next plain chunk, ``b""`` at the end; raises the worker's error."""
        if self._finished:
            return b""
        with self._cond:
            if self._stop or not self._started:
                raise RuntimeError(f"layer {self.layer}: stream read while "
                                   f"{'closed' if self._stop else 'not started'}")
            while not self._items:
                if self._ended:  # the worker died without an end marker (a bug, not data)
                    self._finished = True
                    raise self.source.error("decompression stopped unexpectedly")
                self._cond.wait()
            item = self._items.popleft()
            if item is not _END and not isinstance(item, BaseException):
                self.buffered -= len(item)  # type: ignore[arg-type]
                self._cond.notify_all()
                return item  # type: ignore[return-value]
        self._finished = True
        if item is _END:
            return b""
        raise item  # type: ignore[misc]

    def drain(self) -> int:
        """Consume what is left (so the digest covers it); return how many bytes that was."""
        n = 0
        while True:
            c = self.next_chunk()
            if not c:
                return n
            n += len(c)

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of every plain byte produced so far (the diffID once drained)."""
        return "sha256:" + self._hash.hexdigest()
