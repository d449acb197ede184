"""``apply``: unpack one layer blob onto mounts and return its uncompressed descriptor.

Target selection (the same three cases as containerd's Linux applier):

- one ``overlay`` mount with ``upperdir=`` → write straight into the upper dir, no mount;
  whiteouts in overlay form, lowerdirs consulted for copied-up parents;
- one ``bind`` mount → write into its source directory, real whiteout semantics;
- anything else → mount it on a temporary directory (``cargohold.mount.temp_mount``) and
  apply there with real whiteout semantics.

Pipeline: a :class:`~cargohold.differ.compression.PlainStream` worker thread reads the blob,
checks its magic against the media type, decompresses (ISA-L for gzip, ``zstandard``) and
hashes the plain stream (sha256 → diffID); the calling thread parses tar headers and writes
files, so decompression overlaps with I/O. After the end-of-archive marker the rest of the
stream is drained so the diffID covers every byte, as ``sha256sum`` of the uncompressed blob
would. The caller either passes the blob's ``reader`` (apply makes and runs the stream) or a
``stream`` it made and possibly started earlier — unpack starts layer ``n+1``'s stream while
layer ``n`` is applied and synced, so its first chunks are ready when its turn comes. Then
the diffID is checked and, with ``sync``, the target filesystem is flushed (``syncfs``).

Durability (``sync``): the final ``syncfs`` is what a caller's commit waits for, and flushing
a whole layer at the end leaves the CPU idle for a large part of a second. So while the files
are written a ``writeback`` thread flushes the filesystem every :data:`WRITEBACK_INTERVAL`
seconds, and the final call finds little left; it goes through a descriptor opened before the
first write, so that a writeback error met at any point of the apply still fails it (see
:class:`_Durable`). Nothing is skipped: the layer is durable when ``apply`` returns.

What a failure leaves: the target holds whatever entries were written before the error. That
is never visible as an image: the caller applies into an *active* snapshot and removes it when
``apply`` raises (unpack does). Threads, descriptors and temporary mounts are always released,
and a stream handed in is closed whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

from cargohold.differ.api import MEDIA_TYPE_TAR, ApplyError, compression_for
from cargohold.differ.compression import PlainStream
from cargohold.differ.extract import Extractor
from cargohold.differ.tarread import TarReader
from cargohold.errors import IntegrityError, InvalidArgument
from cargohold.types import Descriptor, Mount

#: with ``sync``, flush the target filesystem this often (seconds) while the layer is written,
#: so that the final ``syncfs`` — which the layer's commit waits for — finds little left to do
WRITEBACK_INTERVAL = 0.1


def _opt(m: Mount, key: str) -> str | None:
    for o in m.options:
        if o.startswith(key + "="):
            return o[len(key) + 1:]
    return None


def apply(desc: Descriptor, mounts: Sequence[Mount], *, reader: BinaryIO | None = None,
          stream: PlainStream | None = None, expected_diff_id: str = "",
          progress: Callable[[int], None] | None = None, sync: bool = False,
          warnings: list[str] | None = None, devices: bool | None = None,
          use_isal: bool = True) -> Descriptor:
    """Apply the layer ``desc`` (read from ``reader``, or from ``stream``) onto ``mounts``.

    Returns ``Descriptor(application/vnd.oci.image.layer.v1.tar, diffID, uncompressed size)``.

    - ``reader``: the layer blob; apply decompresses it on a thread of its own.
    - ``stream``: instead of ``reader``, a :class:`PlainStream` of this layer (same digest and
      compression), started or not. Apply consumes it and closes it on return and on every
      error, including errors raised before it is read; its reader stays the caller's.
      ``progress`` and ``use_isal`` were the stream's to take, and are ignored here.
    - ``expected_diff_id``: when given and different from the computed one, raise
      :class:`~cargohold.errors.IntegrityError` naming the layer and both digests (after the
      whole layer was written: the caller discards the snapshot).
    - ``progress(n)``: called from the decompression thread with each count of compressed
      bytes read.
    - ``sync``: ``syncfs(2)`` the target filesystem before returning, so that a snapshot
      committed afterwards is durable (and flush it in the background meanwhile). Not done
      when the diffID does not match.
    - ``warnings``: a list that receives one line per thing skipped on purpose (device nodes
      when not root, forbidden or unsupported xattrs); they are also logged.
    - ``devices``: create device nodes (default: when running as root).

    Raises :class:`~cargohold.differ.api.LayerError` (a ``MalformedData``) for malformed or
    hostile layers, naming the layer and the entry; :class:`ApplyError` when the target
    filesystem refuses writes; ``Unsupported`` for a media type that is not a layer;
    ``InvalidArgument`` when both or neither of ``reader`` and ``stream`` are given, or the
    stream belongs to another layer. Applying the same layer twice onto the same target gives
    the same tree.
    """
    try:
        return _apply(desc, mounts, reader=reader, stream=stream,
                      expected_diff_id=expected_diff_id, progress=progress, sync=sync,
                      warnings=warnings, devices=devices, use_isal=use_isal)
    finally:
        if stream is not None:
            stream.close()


def _apply(desc: Descriptor, mounts: Sequence[Mount], *, reader: BinaryIO | None,
           stream: PlainStream | None, expected_diff_id: str,
           progress: Callable[[int], None] | None, sync: bool, warnings: list[str] | None,
           devices: bool | None, use_isal: bool) -> Descriptor:
    compression = compression_for(desc.media_type)
    layer = desc.digest or "<unnamed layer>"
    if not mounts:
        raise InvalidArgument(f"layer {layer}: no mounts to apply onto")
    if (reader is None) == (stream is None):
        raise InvalidArgument(f"layer {layer}: apply needs exactly one of reader= and stream=")
    if stream is None:
        stream = PlainStream(reader, compression, layer, progress=progress,  # type: ignore
                             use_isal=use_isal)
    elif (stream.layer, stream.compression) != (layer, compression):
        raise InvalidArgument(f"layer {layer}: the stream given is of layer {stream.layer} "
                              f"({stream.compression.value}), not {compression.value}")
    with _target(mounts) as (root, how):
        if not os.path.isdir(root):
            raise InvalidArgument(f"layer {layer}: target {root!r} is not a directory")
        x = Extractor(root, layer, devices=devices, warnings=warnings, layer_size=desc.size,
                      **how)
        with _Durable(root, layer, WRITEBACK_INTERVAL if sync else None) as durable:
            with stream:  # starts it unless the caller did; stops and joins its worker
                x.run(TarReader(stream))
                stream.drain()
            digest, size = stream.digest, stream.size
            if expected_diff_id and expected_diff_id != digest:
                raise IntegrityError(
                    f"layer {layer}: diffID {digest} does not match the expected "
                    f"{expected_diff_id}",
                    hint="the layer blob does not belong to this image config; fetch it again "
                         "or check the image")
            durable.sync()
    return Descriptor(MEDIA_TYPE_TAR, digest, size)


@contextlib.contextmanager
def _target(mounts: Sequence[Mount]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The directory to write into, and how (the Extractor's overlay options)."""
    m = mounts[0]
    if len(mounts) == 1 and m.type == "overlay" and _opt(m, "upperdir"):
        lowers = [d for d in (_opt(m, "lowerdir") or "").split(":") if d]
        yield _opt(m, "upperdir") or "", dict(overlay=True, lowerdirs=lowers,
                                               userxattr="userxattr" in m.options)
    elif len(mounts) == 1 and (m.type == "bind" or "bind" in m.options or "rbind" in m.options):
        yield m.source, {}
    else:
        from cargohold.mount import temp_mount

        with temp_mount(mounts) as root:
            yield root, {}


class _Durable:
    """Makes one apply durable: background writeback while files are written, then a final
    ``syncfs`` (:meth:`sync`) through a descriptor opened before the first write.

    ``syncfs`` reports a writeback error only through descriptors opened before the error
    (the superblock's error sequence is sampled at open), so opening the final one first means
    an error met during the apply — by the background flushes or the kernel's own writeback —
    still fails it. The background thread flushes every ``interval`` seconds through its own
    descriptor and ignores errors (reporting one there would consume it for that descriptor
    only): by the final call most data is on disk and the layer's commit waits for little.
    ``interval=None``: no sync at all; 0: only the final one.
    """

    def __init__(self, root: str, layer: str, interval: float | None) -> None:
        self.root = root
        self.interval = interval
        self.fd = -1 if interval is None else _open_dir(root)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval:
            self._thread = threading.Thread(target=self._writeback, daemon=True,
                                            name=f"writeback {layer[:19]}")

    def __enter__(self) -> _Durable:
        if self._thread is not None:
            try:
                self._thread.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _writeback(self) -> None:
        try:
            fd = _open_dir(self.root)
        except ApplyError:
            return
        try:
            while not self._stop.wait(self.interval):  # type: ignore[arg-type]
                if _syncfs(fd):
                    return
        finally:
            os.close(fd)

    def _join(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()

    def sync(self) -> None:
        """Stop the background writeback and flush the rest; raise ApplyError on failure."""
        self._join()
        if self.fd >= 0 and (e := _syncfs(self.fd)):
            raise ApplyError(f"syncfs {self.root}: {os.strerror(e)}")

    def close(self) -> None:
        self._join()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_dir(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ApplyError(f"open {path}: {exc.strerror}") from exc


def _syncfs(fd: int) -> int:
    """``syncfs(fd)``; 0 or the errno."""
    import ctypes

    from cargohold.mount import libc

    return 0 if libc().syncfs(fd) == 0 else ctypes.get_errno()


def syncfs(path: str) -> None:
    """Flush the filesystem holding ``path`` to disk (``syncfs(2)``)."""
    fd = _open_dir(path)
    try:
        if e := _syncfs(fd):
            raise ApplyError(f"syncfs {path}: {os.strerror(e)}")
    finally:
        os.close(fd)
