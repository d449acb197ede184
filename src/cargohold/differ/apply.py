"""``apply``: unpack one layer blob onto mounts and return its uncompressed descriptor.

Target selection (the same three cases as containerd's Linux applier):

- one ``overlay`` mount with ``upperdir=`` → write straight into the upper dir, no mount;
  whiteouts in overlay form, lowerdirs consulted for copied-up parents;
- one ``bind`` mount → write into its source directory, real whiteout semantics;
- anything else → mount it on a temporary directory (``cargohold.mount.temp_mount``) and
  apply there with real whiteout semantics.

Pipeline: a worker thread reads the blob, checks its magic against the media type,
decompresses (ISA-L for gzip, ``zstandard``) and hashes the plain stream (sha256 → diffID);
the calling thread parses tar headers and writes files, so decompression overlaps with I/O.
After the end-of-archive marker the rest of the stream is drained so the diffID covers every
byte, as ``sha256sum`` of the uncompressed blob would.

What a failure leaves: the target holds whatever entries were written before the error. That
is never visible as an image: the caller applies into an *active* snapshot and removes it when
``apply`` raises (unpack does). Threads, descriptors and temporary mounts are always released.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import BinaryIO

from cargohold.differ.api import MEDIA_TYPE_TAR, ApplyError, compression_for
from cargohold.differ.compression import PlainStream
from cargohold.differ.extract import Extractor
from cargohold.differ.tarread import TarReader
from cargohold.errors import IntegrityError, InvalidArgument
from cargohold.types import Descriptor, Mount


def _opt(m: Mount, key: str) -> str | None:
    for o in m.options:
        if o.startswith(key + "="):
            return o[len(key) + 1:]
    return None


def apply(desc: Descriptor, mounts: Sequence[Mount], *, reader: BinaryIO,
          expected_diff_id: str = "", progress: Callable[[int], None] | None = None,
          sync: bool = False, warnings: list[str] | None = None,
          devices: bool | None = None, use_isal: bool = True) -> Descriptor:
    """Apply the layer ``desc`` (read from ``reader``) onto ``mounts``.

    Returns ``Descriptor(application/vnd.oci.image.layer.v1.tar, diffID, uncompressed size)``.

    - ``expected_diff_id``: when given and different from the computed one, raise
      :class:`~cargohold.errors.IntegrityError` naming the layer and both digests (after the
      whole layer was written: the caller discards the snapshot).
    - ``progress(n)``: called from the decompression thread with each count of compressed
      bytes read.
    - ``sync``: ``syncfs(2)`` the target filesystem before returning, so that a snapshot
      committed afterwards is durable.
    - ``warnings``: a list that receives one line per thing skipped on purpose (device nodes
      when not root, forbidden or unsupported xattrs); they are also logged.
    - ``devices``: create device nodes (default: when running as root).

    Raises :class:`~cargohold.differ.api.LayerError` (an ``InvalidArgument``) for malformed or
    hostile layers, naming the layer and the entry; :class:`ApplyError` when the target
    filesystem refuses writes; ``Unsupported`` for a media type that is not a layer.
    Applying the same layer twice onto the same target gives the same tree.
    """
    compression = compression_for(desc.media_type)
    layer = desc.digest or "<unnamed layer>"
    if not mounts:
        raise InvalidArgument(f"layer {layer}: no mounts to apply onto")
    kw = dict(layer=layer, compression=compression, reader=reader, progress=progress,
              warnings=warnings, devices=devices, use_isal=use_isal)
    m = mounts[0]
    if len(mounts) == 1 and m.type == "overlay" and _opt(m, "upperdir"):
        lowers = [d for d in (_opt(m, "lowerdir") or "").split(":") if d]
        root = _opt(m, "upperdir") or ""
        digest, size = _apply_into(root, overlay=True, userxattr="userxattr" in m.options,
                                   lowerdirs=lowers, **kw)  # type: ignore[arg-type]
    elif len(mounts) == 1 and (m.type == "bind" or "bind" in m.options or "rbind" in m.options):
        root = m.source
        digest, size = _apply_into(root, **kw)  # type: ignore[arg-type]
    else:
        from cargohold.mount import temp_mount

        with temp_mount(mounts) as root:
            digest, size = _apply_into(root, **kw)  # type: ignore[arg-type]
            if sync:
                syncfs(root)
            sync = False
    if sync:
        syncfs(root)
    if expected_diff_id and expected_diff_id != digest:
        raise IntegrityError(
            f"layer {layer}: diffID {digest} does not match the expected {expected_diff_id}",
            hint="the layer blob does not belong to this image config; fetch it again or "
                 "check the image")
    return Descriptor(MEDIA_TYPE_TAR, digest, size)


def _apply_into(root: str, *, layer: str, compression: object, reader: BinaryIO,
                progress: Callable[[int], None] | None, warnings: list[str] | None,
                devices: bool | None, use_isal: bool, overlay: bool = False,
                userxattr: bool = False, lowerdirs: list[str] | None = None,
                ) -> tuple[str, int]:
    if not os.path.isdir(root):
        raise InvalidArgument(f"layer {layer}: target {root!r} is not a directory")
    x = Extractor(root, layer, overlay=overlay, userxattr=userxattr, lowerdirs=lowerdirs,
                  devices=devices, warnings=warnings)
    with PlainStream(reader, compression, layer, progress=progress,  # type: ignore[arg-type]
                     use_isal=use_isal) as stream:
        x.run(TarReader(stream, layer))
        stream.drain()
        return stream.digest, stream.size


def syncfs(path: str) -> None:
    """Flush the filesystem holding ``path`` to disk (``syncfs(2)``)."""
    import ctypes

    from cargohold.mount import libc

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if libc().syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise ApplyError(f"syncfs {path}: {os.strerror(e)}")
    finally:
        os.close(fd)
