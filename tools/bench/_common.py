"""Pieces several benchmarks share (imported by file path: ``sys.path`` holds tools/bench).

- ``time_ctr_unpack(base, *args)``: one timed ``ctr images pull|import`` onto overlayfs in a
  fresh private containerd, checked to have unpacked.
- ``build_gc_store(root, n_images, blobdir=None)``: the metadata of a store of ``n_images``
  images linked by containerd's gc labels (optionally with a 10-byte file per blob).
- ``sh``, ``make_venv``, ``installed_env``, ``pack_busybox``: hold installed with pip into a
  venv, run as a user runs it, with a busybox image packed, exported and imported into a
  private containerd.

Heavy or cargohold imports are inside the functions: each benchmark uses only some of them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
GC_REF = "containerd.io/gc.ref.content."


def time_ctr_unpack(base: str, *args: str) -> float:
    """Seconds of one ``ctr images <args> --snapshotter overlayfs`` in a fresh containerd.

    Starts after ``sync``; raises SystemExit unless the image was unpacked. The daemon is
    stopped but its files are kept (like hold's roots, removed with the work dir at the end):
    deleting hundreds of MB here would make the next timed run pay for the discards.
    """
    from tests.peers import Containerd, _unmount_under

    d = Containerd(base=base, namespace="bench").start()
    try:
        os.sync()
        t0 = time.monotonic()
        d.ctr("images", *args, timeout=600)
        dt = time.monotonic() - t0
        out = d.ctr("snapshots", "--snapshotter", "overlayfs", "ls").stdout.decode()
        if len(out.splitlines()) < 5:
            raise SystemExit(f"ctr did not unpack the image:\n{out}")
    finally:
        keep, d.dir = d.dir, tempfile.mkdtemp(prefix="empty-", dir=base)
        try:
            d.stop()
        finally:
            d.dir = keep
            _unmount_under(keep)
    return dt


def digest(s: str) -> str:
    return "sha256:" + hashlib.sha256(s.encode()).hexdigest()


def build_gc_store(root: str, n_images: int, blobdir: str | None = None) -> None:
    """Write ``n_images`` images (index -> manifest -> config + 7 layers) into ``root``.

    Image ``i`` is ``registry.example/app{i}:v1``, its blobs ``digest(f"{i}-...")``, linked
    with containerd's gc labels; with ``blobdir``, every blob also gets a 10-byte file there.
    """
    from cargohold.metadata import images
    from cargohold.metadata.content import write_record
    from cargohold.metadata.db import open_db
    from cargohold.metadata.images import Image
    from cargohold.types import Descriptor

    db = open_db(root)
    per_txn = 500
    for start in range(0, n_images, per_txn):
        with db.update() as tx:
            for i in range(start, min(start + per_txn, n_images)):
                layers = [digest(f"{i}-l{k}") for k in range(7)]
                cfg, man, idx = digest(f"{i}-cfg"), digest(f"{i}-man"), digest(f"{i}-idx")
                for x in layers:
                    write_record(tx, "default", x, 10, {})
                write_record(tx, "default", cfg, 10,
                             {"containerd.io/gc.ref.snapshot.overlayfs": f"chain-{i}"})
                labels = {GC_REF + "config": cfg}
                labels.update({f"{GC_REF}l.{k}": x for k, x in enumerate(layers)})
                write_record(tx, "default", man, 10, labels)
                write_record(tx, "default", idx, 10, {GC_REF + "m.0": man})
                images.create(tx, "default", Image(
                    f"registry.example/app{i}:v1",
                    Descriptor("application/vnd.oci.image.index.v1+json", idx, 10)))
                if blobdir is None:
                    continue
                for x in layers + [cfg, man, idx]:
                    fd = os.open(os.path.join(blobdir, x.split(":")[1]),
                                 os.O_WRONLY | os.O_CREAT, 0o444)
                    os.write(fd, b"0123456789")
                    os.close(fd)
    db.close()


def sh(*argv: str, env: dict[str, str] | None = None) -> str:
    p = subprocess.run(list(argv), env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{p.stderr}{p.stdout}")
    return p.stdout


def make_venv(work: str) -> str:
    """This checkout pip-installed (not editable) into ``work/venv``; returns the venv."""
    venv = os.path.join(work, "venv")
    sh(sys.executable, "-m", "venv", venv)
    pip = os.path.join(venv, "bin", "pip")
    sh(pip, "install", "-q", "--disable-pip-version-check", REPO)
    return venv


def installed_env(work: str) -> dict[str, str]:
    """The environment an installed ``hold`` runs in, on a root and state under ``work``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HOLD_DEBUG")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as an installed package runs: bytecode cached
    env.update(HOLD_ROOT=os.path.join(work, "root"), HOLD_STATE=os.path.join(work, "state"),
               HOLD_CONFIG=os.path.join(work, "none.toml"))
    return env


def pack_busybox(hold: str, work: str, ref: str, applets: tuple[str, ...],
                 env: dict[str, str]) -> str:
    """Pack a busybox rootfs (with ``applets`` linked) as ``ref``, export it; the archive."""
    rootfs = os.path.join(work, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    shutil.copy2("/bin/busybox", os.path.join(rootfs, "bin", "busybox"))
    for applet in applets:
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    sh(hold, "images", "pack", rootfs, ref, env=env)
    archive = os.path.join(work, "img.tar")
    sh(hold, "images", "export", archive, ref, env=env)
    return archive
