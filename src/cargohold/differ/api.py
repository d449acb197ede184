"""The differ's vocabulary: layer media types, compressions, and the errors bad data raises.

Apply and compare (``cargohold.differ.apply`` / ``cargohold.differ.compare``) speak in these
terms; nothing here does I/O. This is the one media type → compression table of cargohold
(:func:`compression_for`); the magic bytes are read by
:func:`cargohold.differ.compression.sniff`.

Media type → compression (the media type decides, the magic bytes must agree):

=============================================================  ===========
``application/vnd.oci.image.layer.v1.tar``                      none
``application/vnd.oci.image.layer.v1.tar+gzip``                 gzip
``application/vnd.oci.image.layer.v1.tar+zstd``                 zstd
``application/vnd.docker.image.rootfs.diff.tar.gzip``           gzip
``application/vnd.oci.image.layer.nondistributable.v1.tar*``    as above
any ``…tar.gzip`` / ``…tar+gzip`` / ``…tar+zstd`` / ``…tar``      by suffix
=============================================================  ===========
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable

from cargohold._record import record
from cargohold.errors import FailedPrecondition, InvalidArgument, MalformedData, Unsupported

MEDIA_TYPE_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_TYPE_DOCKER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"  # containerd's

#: the xattr prefixes a layer may never set: they steer overlayfs (fake whiteouts, opaque
#: dirs, redirects, metacopy) and ``trusted.*`` is root-only policy, not image content.
FORBIDDEN_XATTR_PREFIXES = ("trusted.", "user.overlay.")

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"


class Compression(enum.Enum):
    """How a stream is compressed. Layers are none, gzip or zstd; image archives may also be
    xz. bzip2 is recognised only to be refused by name.
    """

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"
    XZ = "xz"
    BZIP2 = "bzip2"


class LayerError(MalformedData):
    """A layer is malformed or hostile: names the layer and, when known, the entry.

    Raised for path escapes, bad headers, truncated or mislabelled streams. Branch on the
    class; the message reads ``layer <digest>: entry <name>: <problem>``. Exit code 1: the
    data is damaged, the command was right.
    """

    def __init__(self, layer: str, problem: str, *, entry: str | None = None,
                 hint: str | None = None) -> None:
        where = f"layer {layer or '<unnamed>'}"
        if entry is not None:
            where += f": entry {entry!r}"
        super().__init__(f"{where}: {problem}", hint=hint)
        self.layer = layer
        self.entry = entry
        self.problem = problem


@record(frozen=True)
class Source:
    """What a stream of tar data is, for the errors reading it raises: a layer or an archive.

    ``error(problem, entry=None, hint=None)`` builds the exception (its message names the
    layer or archive and the entry); ``incomplete`` is the hint given for data that ends
    early or does not decompress.
    """

    label: str
    error: Callable[..., MalformedData]
    incomplete: str = "the blob is incomplete: fetch it again"


def layer_source(layer: str) -> Source:
    """The :class:`Source` of a layer blob: errors are :class:`LayerError`."""
    return Source(layer, functools.partial(LayerError, layer))


def compression_for(media_type: str) -> Compression:
    """The compression a layer media type promises; raise Unsupported for non-layer types."""
    mt = media_type.strip().lower()
    if mt.endswith(("+gzip", ".tar.gzip", ".tar.gz")):
        return Compression.GZIP
    if mt.endswith(("+zstd", ".tar.zstd")):
        return Compression.ZSTD
    if mt.endswith((".tar", "/tar")) or mt == "":
        return Compression.NONE
    raise Unsupported(
        f"media type {media_type!r}: not a layer this differ can read",
        hint="layers are tar, tar+gzip or tar+zstd (OCI or docker media types)")


def media_type_for(compression: Compression, docker: bool = False) -> str:
    """The OCI (or docker) layer media type for ``compression`` (docker zstd is containerd's
    ``…diff.tar.zstd``); InvalidArgument for a compression no layer uses.
    """
    table = ({Compression.NONE: MEDIA_TYPE_DOCKER_TAR, Compression.GZIP: MEDIA_TYPE_DOCKER_GZIP,
              Compression.ZSTD: MEDIA_TYPE_DOCKER_ZSTD} if docker else
             {Compression.NONE: MEDIA_TYPE_TAR, Compression.GZIP: MEDIA_TYPE_TAR_GZIP,
              Compression.ZSTD: MEDIA_TYPE_TAR_ZSTD})
    if compression not in table:
        raise InvalidArgument(f"compression {compression.value}: not a layer compression",
                              hint="layers are tar, tar+gzip or tar+zstd")
    return table[compression]


class ApplyError(FailedPrecondition):
    """The target filesystem refused a write (full, read-only, I/O error) during an apply."""
