"""Fixtures for fetch tests: clients on fresh roots, fake registries, image builders."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from cargohold.images import platforms
from tests.fetch.fake import FakeRegistry
from tests.fetch.registry import tar_bytes

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture
def fake():
    return FakeRegistry()


def fake_image(fake: FakeRegistry, repo: str, tag: str, layers: list[dict[str, bytes]], *,
               arch: str = "", add: bool = True) -> dict:
    """Put an image (gzip layers from files) into ``fake``; returns its descriptors."""
    host = platforms.default()
    ldescs, ids = [], []
    for files in layers:
        plain = tar_bytes(files)
        ids.append("sha256:" + hashlib.sha256(plain).hexdigest())
        gz = gzip.compress(plain, compresslevel=1, mtime=0)
        ldescs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": fake.add_blob(gz), "size": len(gz)})
    cfg = json.dumps({"architecture": arch or host.architecture, "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": ids}}).encode()
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                      "digest": fake.add_blob(cfg), "size": len(cfg)},
           "layers": ldescs}
    if add:
        d, n = fake.add_manifest(repo, tag, OCI_MANIFEST, doc)
    else:
        data = json.dumps(doc).encode()
        d, n = "sha256:" + hashlib.sha256(data).hexdigest(), len(data)
        fake.manifests[(repo, d)] = (OCI_MANIFEST, data)
    return {"digest": d, "size": n, "layers": ldescs, "diff_ids": ids, "config": doc["config"]}


def registry(fake: FakeRegistry, **kw):
    from cargohold.fetch.registry import Registry

    mounts = {"https://fake.test": fake, "https://auth.fake.test": fake}
    mounts.update(kw.pop("mounts", {}))
    return Registry(mounts=mounts, backoff=0.001, **kw)
