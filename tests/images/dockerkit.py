"""``docker save``-style archives in the shapes tools really write, from imagekit's layout.

Every builder takes the OCI layout ``imagekit.build_all`` made (``a["layout"]``, tags ``base``
and ``t``, gzip layers written by umoci) and writes one tar:

- :func:`multi_save`: two images in one save (``docker save a b``): shared layers stored once,
  one image with two RepoTags;
- :func:`ggcr_save`: layers kept compressed, named ``<hex>.tar.gz`` with the config named
  ``sha256:<hex>`` (go-containerregistry's ``tarball.Write``: crane, ko, kaniko); with
  ``zstd_last`` its last layer is recompressed with zstd;
- :func:`edited_save`: one image whose config JSON was edited (``edit(cfg)``), for the
  platform cases (no os/architecture, an arm64 ``v8`` variant, ``os.features``...);
- :func:`null_tags_save`: ``"RepoTags": null``, as ``docker save <image id>`` writes it;
- :func:`moby25_save`: docker 25's save, an OCI layout (plain-tar layers, the index
  annotated with the name) that carries a ``manifest.json`` beside it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable

import zstandard
from tests.images.imagekit import blob, manifest_of


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _add(t: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o444
    t.addfile(ti, io.BytesIO(data))


def _image(layout: str, tag: str) -> tuple[bytes, list[bytes]]:
    """The config bytes and the (gzip) layer blobs of ``tag``."""
    man = json.loads(blob(layout, manifest_of(layout, tag)["digest"]))
    return (blob(layout, man["config"]["digest"]),
            [blob(layout, d["digest"]) for d in man["layers"]])


def _plain(layers: list[bytes]) -> list[bytes]:
    return [gzip.decompress(x) for x in layers]


def _write(out: str, files: dict[str, bytes], entries: list[dict]) -> str:
    with tarfile.open(out, "w") as t:
        for name, data in files.items():
            _add(t, name, data)
        _add(t, "manifest.json", json.dumps(entries, separators=(",", ":")).encode())
    return out


def multi_save(layout: str, out: str) -> str:
    """``base`` as example.com/multi/base:1, ``t`` as example.com/multi/t:1 and
    docker.io/library/multi:latest (written familiar, ``multi:latest``)."""
    files: dict[str, bytes] = {}
    entries = []
    for tag, names in (("base", ["example.com/multi/base:1"]),
                       ("t", ["example.com/multi/t:1", "multi:latest"])):
        cfg, layers = _image(layout, tag)
        files[f"{_sha(cfg)}.json"] = cfg
        lnames = []
        for data in _plain(layers):
            files.setdefault(f"{_sha(data)}.tar", data)  # stored once, as docker does
            lnames.append(f"{_sha(data)}.tar")
        entries.append({"Config": f"{_sha(cfg)}.json", "RepoTags": names, "Layers": lnames})
    return _write(out, files, entries)


def ggcr_save(layout: str, out: str, tag: str = "example.com/ggcr:1", *,
              zstd_last: bool = False) -> str:
    cfg, layers = _image(layout, "t")
    if zstd_last:
        layers[-1] = zstandard.ZstdCompressor().compress(gzip.decompress(layers[-1]))
    files = {f"sha256:{_sha(cfg)}": cfg}
    lnames = []
    for data in layers:
        lnames.append(f"{_sha(data)}.tar.gz")
        files[lnames[-1]] = data
    return _write(out, files, [{"Config": f"sha256:{_sha(cfg)}", "RepoTags": [tag],
                                "Layers": lnames}])


def edited_save(layout: str, out: str, tag: str, edit: Callable[[dict], None]) -> str:
    cfg, layers = _image(layout, "t")
    doc = json.loads(cfg)
    edit(doc)
    cfg = json.dumps(doc).encode()
    files = {f"{_sha(cfg)}.json": cfg}
    lnames = []
    for data in _plain(layers):
        lnames.append(f"{_sha(data)}/layer.tar")
        files[lnames[-1]] = data
    return _write(out, files, [{"Config": f"{_sha(cfg)}.json", "RepoTags": [tag],
                                "Layers": lnames}])


def null_tags_save(layout: str, out: str) -> str:
    cfg, layers = _image(layout, "base")
    files = {f"{_sha(cfg)}.json": cfg}
    lnames = []
    for data in _plain(layers):
        lnames.append(f"{_sha(data)}.tar")
        files[lnames[-1]] = data
    return _write(out, files, [{"Config": f"{_sha(cfg)}.json", "RepoTags": None,
                                "Layers": lnames}])


def moby25_save(layout: str, out: str, name: str = "docker.io/library/moby:25") -> str:
    cfg, layers = _image(layout, "t")
    plain = _plain(layers)
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', f"blobs/sha256/{_sha(cfg)}": cfg}
    descs = []
    for data in plain:
        files[f"blobs/sha256/{_sha(data)}"] = data
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                      "digest": f"sha256:{_sha(data)}", "size": len(data)})
    man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                 "digest": f"sha256:{_sha(cfg)}", "size": len(cfg)},
                      "layers": descs}).encode()
    files[f"blobs/sha256/{_sha(man)}"] = man
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": f"sha256:{_sha(man)}", "size": len(man),
        "annotations": {"io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}}]}).encode()
    return _write(out, files, [{"Config": f"blobs/sha256/{_sha(cfg)}",
                                "RepoTags": [name.removeprefix("docker.io/library/")],
                                "Layers": [f"blobs/sha256/{_sha(x)}" for x in plain]}])
