"""Archives with one big layer, for tests that interrupt an import mid-layer or watch it.

``oci_archive(dir, big=...)`` writes an OCI image-layout tar of three layers: a small one, a
big one (one file of random bytes, gzip-compressed, so the blob is as big as the file; with
``zeros=True`` of zero bytes, so the blob is a thousandth of it) and a small one;
``corrupt=True`` damages the middle of the big layer's deflate stream (the blob still matches
its digest, so the import gets as far as unpacking it). ``docker_archive``
writes the same image as a ``docker save`` tar with plain tar layers. Everything streams
through files: nothing big is held in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile

import isal.igzip as igzip

CHUNK = 4 << 20
BIG_NAME = "big.bin"


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _random_file(path: str, size: int, *, zeros: bool = False) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, CHUNK)
            f.write(bytes(n) if zeros else os.urandom(n))
            left -= n


def _layer_tar(out: str, files: dict[str, bytes | str]) -> str:
    """A layer tar; a value that is a ``str`` names a file on disk to add under that name."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            if isinstance(data, str):
                ti = t.gettarinfo(data, name)
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = ""
                with open(data, "rb") as f:
                    t.addfile(ti, f)
            else:
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                ti.mode = 0o644
                t.addfile(ti, io.BytesIO(data))
    return out


def _gzip(src: str, out: str) -> str:
    with open(src, "rb") as i, igzip.open(out, "wb") as o:
        shutil.copyfileobj(i, o, CHUNK)
    return out


def _layers(w: str, big: int, zeros: bool = False) -> list[str]:
    """Three plain layer tars under ``w``: small, big, small."""
    data = os.path.join(w, "random.bin")
    _random_file(data, big, zeros=zeros)
    tars = [_layer_tar(os.path.join(w, "l1.tar"), {"etc/one": b"first layer\n"}),
            _layer_tar(os.path.join(w, "l2.tar"), {BIG_NAME: data, "etc/two": b"second\n"}),
            _layer_tar(os.path.join(w, "l3.tar"), {"etc/three": b"third layer\n"})]
    os.unlink(data)
    return tars


def _config(diff_ids: list[str]) -> bytes:
    from cargohold.images import platforms

    p = platforms.default()
    return json.dumps({"architecture": p.architecture, "os": p.os,
                       "config": {"Cmd": ["/bin/sh"]},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()


def oci_archive(w: str, *, big: int, name: str = "example.com/big:1",
                corrupt: bool = False, zeros: bool = False) -> str:
    """The OCI layout tar described in the module docstring; returns its path. With
    ``zeros`` the big file is all zero bytes, so its gzip layer is about 1/1000 of it.
    """
    os.makedirs(w, exist_ok=True)
    lay = os.path.join(w, "layout")
    blobs = os.path.join(lay, "blobs", "sha256")
    os.makedirs(blobs)
    tars = _layers(w, big, zeros)
    diff_ids = [_sha(t) for t in tars]
    layers = []
    for i, t in enumerate(tars):
        gz = _gzip(t, t + ".gz")
        os.unlink(t)
        if corrupt and i == 1:
            with open(gz, "r+b") as f:
                f.seek(os.path.getsize(gz) // 2)
                f.write(b"\xff" * 64 + b"\x00" * 64)
        d = _sha(gz)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": d, "size": os.path.getsize(gz)})
        os.replace(gz, os.path.join(blobs, d[7:]))

    def put(data: bytes) -> str:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, d[7:]), "wb") as f:
            f.write(data)
        return d

    cfg = _config(diff_ids)
    man = json.dumps({"schemaVersion": 2,
                      "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                 "digest": put(cfg), "size": len(cfg)},
                      "layers": layers}).encode()
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(man),
             "size": len(man), "annotations": {"io.containerd.image.name": name,
                                               "org.opencontainers.image.ref.name": "1"}}
    with open(os.path.join(lay, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [entry]}, f)
    with open(os.path.join(lay, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    out = os.path.join(w, "big-oci.tar")
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
        # index.json first and the big blob in the middle, as an export orders it.
        for rel in ["oci-layout", "index.json"] + [f"blobs/sha256/{x['digest'][7:]}"
                                                   for x in layers] + [
                f"blobs/sha256/{json.loads(man)['config']['digest'][7:]}",
                f"blobs/sha256/{entry['digest'][7:]}"]:
            t.add(os.path.join(lay, rel), rel)
    shutil.rmtree(lay)
    return out


def docker_archive(w: str, *, big: int, tag: str = "example.com/bigd:1") -> str:
    """The same kind of image as a ``docker save`` tar (plain tar layers named
    ``<n>/layer.tar``, so their refs come from the archive's identity, not a digest).
    """
    os.makedirs(w, exist_ok=True)
    tars = _layers(w, big)
    diff_ids = [_sha(t) for t in tars]
    cfg = _config(diff_ids)
    out = os.path.join(w, "big-docker.tar")
    names = [f"layer{i}/layer.tar" for i in range(len(tars))]
    with tarfile.open(out, "w") as t:
        for n, path in zip(names, tars, strict=True):
            t.add(path, n)
        ti = tarfile.TarInfo("config.json")
        ti.size = len(cfg)
        t.addfile(ti, io.BytesIO(cfg))
        man = json.dumps([{"Config": "config.json", "RepoTags": [tag],
                           "Layers": names}]).encode()
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(man)
        t.addfile(ti, io.BytesIO(man))
    for path in tars:
        os.unlink(path)
    return out
