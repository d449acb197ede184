"""Real small filesystems and real archives for the full-disk and read-only tests.

- ``tmpfs(path, size)``: a tmpfs of ``size`` mounted on ``path`` for the block; always
  unmounted (lazily when something still holds it), even when the test fails.
- ``ro_bind(src, dst)``: ``dst`` a read-only bind mount of ``src`` for the block.
- ``fill(path)``: a filler file that takes every free byte of ``path``'s filesystem.
- ``make_archive(out, mb, name)``: an OCI archive of one uncompressed layer of ``mb`` files of
  1 MiB of random bytes (so the blob and the unpacked snapshot each take ``mb`` MiB).
- ``space(path)``: free bytes for an unprivileged writer (statvfs).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator

import pytest

MIB = 1 << 20


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (real tmpfs and bind mounts)")


def _sh(*argv: str) -> None:
    p = subprocess.run(list(argv), capture_output=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {p.stderr.decode(errors='replace')}")


@contextlib.contextmanager
def tmpfs(path: str, size: str = "64m") -> Iterator[str]:
    """A real tmpfs of ``size`` on ``path`` (created), unmounted in every case."""
    need_root()
    os.makedirs(path, exist_ok=True)
    _sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path)
    try:
        yield path
    finally:
        p = subprocess.run(["umount", path], capture_output=True, timeout=60)
        if p.returncode != 0:
            subprocess.run(["umount", "-l", path], capture_output=True, timeout=60)


@contextlib.contextmanager
def ro_bind(src: str, dst: str) -> Iterator[str]:
    """``dst``: a read-only bind mount of ``src`` (the filesystem of ``src`` stays writable)."""
    need_root()
    os.makedirs(dst, exist_ok=True)
    _sh("mount", "--bind", src, dst)
    try:
        _sh("mount", "-o", "remount,bind,ro", dst)
        yield dst
    finally:
        p = subprocess.run(["umount", dst], capture_output=True, timeout=60)
        if p.returncode != 0:
            subprocess.run(["umount", "-l", dst], capture_output=True, timeout=60)


def space(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: str, name: str = "filler") -> str:
    """Take every free byte of the filesystem of ``path`` with a file (or grow it); return it.

    Writes until ENOSPC, first in MiB then in pages, so that the filesystem is 100 % full.
    """
    f = os.path.join(path, name)
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (MIB, 4096, 512):
            buf = b"\xa5" * chunk
            while True:
                try:
                    os.write(fd, buf)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    assert space(path) == 0, f"{path} still has {space(path)} bytes free"
    return f


def make_archive(out: str, mb: int, name: str, *, seed: str = "") -> str:
    """An OCI layout tar with one uncompressed layer of ``mb`` random 1 MiB files."""
    def tar_of(files: dict[str, bytes]) -> bytes:
        b = io.BytesIO()
        with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
            for n, data in files.items():
                ti = tarfile.TarInfo(n)
                ti.size, ti.mode = len(data), 0o644
                t.addfile(ti, io.BytesIO(data))
        return b.getvalue()

    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> str:
        d = hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return "sha256:" + d

    layer = tar_of({f"data/f{i}{seed}": os.urandom(MIB) for i in range(mb)})
    ld = put(layer)
    cfg = json.dumps({"architecture": _arch(), "os": "linux", "config": {},
                      "rootfs": {"type": "layers", "diff_ids": [ld]}}).encode()
    man = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(cfg), "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld,
                    "size": len(layer)}]}).encode()
    md = put(man)
    idx = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
        "size": len(man), "annotations": {"io.containerd.image.name": name,
                                          "org.opencontainers.image.ref.name": "1"}}]})
    with tarfile.open(out, "w") as t:
        def add(n: str, data: bytes) -> None:
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", idx.encode())
        for d, data in blobs.items():
            add("blobs/sha256/" + d, data)
    return out


def blobs_of(archive: str) -> list[str]:
    """The digests of every blob in an archive made by :func:`make_archive`."""
    with tarfile.open(archive) as t:
        return sorted("sha256:" + m.name.rsplit("/", 1)[1] for m in t.getmembers()
                      if m.name.startswith("blobs/sha256/"))


def _arch() -> str:
    from cargohold.images import platforms

    return platforms.default().architecture


def tree(path: str) -> dict[str, tuple]:
    """Every entry under ``path`` with its type, mode, size and mtime (ns): a change to any
    file or directory, its times included, shows as a difference.
    """
    out: dict[str, tuple] = {}
    for d, dirs, files in os.walk(path):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, path)] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                             st.st_ctime_ns)
    st = os.lstat(path)
    out["."] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out
