"""The differ's vocabulary: layer media types, compressions, and the error a bad layer raises.

Apply and compare (``cargohold.differ.apply`` / ``cargohold.differ.compare``) speak in these
terms; nothing here does I/O.

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

from cargohold.errors import FailedPrecondition, InvalidArgument, Unsupported

MEDIA_TYPE_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

#: the xattr prefixes a layer may never set: they steer overlayfs (fake whiteouts, opaque
#: dirs, redirects, metacopy) and ``trusted.*`` is root-only policy, not image content.
FORBIDDEN_XATTR_PREFIXES = ("trusted.", "user.overlay.")

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"


class Compression(enum.Enum):
    """How a layer blob is compressed."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


class LayerError(InvalidArgument):
    """A layer is malformed or hostile: names the layer and, when known, the entry.

    Raised for path escapes, bad headers, truncated or mislabelled streams. Branch on the
    class; the message reads ``layer <digest>: entry <name>: <problem>``.
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
    """The OCI (or docker) layer media type for ``compression``."""
    if docker:
        if compression is Compression.ZSTD:
            raise InvalidArgument("compression zstd: docker media types have no zstd layer")
        return MEDIA_TYPE_DOCKER_GZIP if compression is Compression.GZIP else MEDIA_TYPE_DOCKER_TAR
    return {Compression.NONE: MEDIA_TYPE_TAR, Compression.GZIP: MEDIA_TYPE_TAR_GZIP,
            Compression.ZSTD: MEDIA_TYPE_TAR_ZSTD}[compression]


def sniff(head: bytes) -> Compression | None:
    """The compression the first bytes show, or None when they are not a known magic."""
    if head[:2] == b"\x1f\x8b":
        return Compression.GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return Compression.ZSTD
    return None


class ApplyError(FailedPrecondition):
    """The target filesystem refused a write (full, read-only, I/O error) during an apply."""
