"""Media types of OCI and Docker v2 schema 2 images, and what each one is.

What a layer media type says about compression is the differ's to know:
:func:`cargohold.differ.api.compression_for` (the one table).
"""

from __future__ import annotations

from cargohold.errors import Unsupported

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"  # containerd's
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEXES = {OCI_INDEX, DOCKER_LIST}
MANIFESTS = {OCI_MANIFEST, DOCKER_MANIFEST}
CONFIGS = {OCI_CONFIG, DOCKER_CONFIG}
LAYERS = {OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_ND, OCI_LAYER_ND_GZIP,
          OCI_LAYER_ND_ZSTD, DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN,
          DOCKER_LAYER_ZSTD}
NONDISTRIBUTABLE = {OCI_LAYER_ND, OCI_LAYER_ND_GZIP, OCI_LAYER_ND_ZSTD, DOCKER_LAYER_FOREIGN}
SCHEMA1 = {DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED}


def is_index(mt: str) -> bool:
    return mt in INDEXES


def is_manifest(mt: str) -> bool:
    return mt in MANIFESTS


def is_layer(mt: str) -> bool:
    return mt in LAYERS or (mt.startswith("application/vnd.oci.image.layer.") and "tar" in mt)


def is_config(mt: str) -> bool:
    return mt in CONFIGS


def refuse_schema1(mt: str, what: str) -> None:
    """Raise Unsupported for Docker schema 1 manifests, with the way out."""
    if mt in SCHEMA1:
        raise Unsupported(
            f"{what}: Docker schema 1 manifests are not supported (deprecated since 2017)",
            hint="convert it with 'skopeo copy --format v2s2' or rebuild and push it again")
