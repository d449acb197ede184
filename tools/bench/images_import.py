"""Benchmark image import + unpack: ``hold images import`` vs ``ctr images import`` (1.6).

Builds (once, cached under ``--dir``) an OCI image-layout tar of four gzip layers made from
files on this machine — no network:

1. up to ``--lib-mb`` of ``/usr/lib/x86_64-linux-gnu`` (shared libraries: the big one);
2. up to ``--share-mb`` of ``/usr/share`` (many small text files);
3. the system python3 standard library (``/usr/lib/python3.11``);
4. 2,000 small files plus deletions (whiteouts of files from layers 1 and 2, one opaque dir).

Then, in the same run, for ``--runs`` rounds: a fresh private containerd (tmp root, state and
socket, started with ``containerd --config``, via ``tests/peers.py``) timing ``ctr images
import`` (which unpacks the host platform onto overlayfs), and a fresh hold root timing
``hold images import`` (unpack onto overlayfs, every layer synced before commit). Prints
seconds per run, the best of each and the ratio hold / containerd (goal: <= 0.5). Each timed
run starts after ``sync``, so that hold's per-layer ``syncfs`` never flushes the data
containerd left dirty (containerd does not sync its unpacked layers).

Usage: ``python3 tools/bench/images_import.py [--runs 3] [--dir /var/tmp/hold-bench]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

from isal import igzip

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

NAME = "docker.io/library/hold-bench:1"


def _files(root: str, budget: int) -> list[str]:
    out, total = [], 0
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for n in sorted(files):
            p = os.path.join(d, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if total + st.st_size > budget:
                return out
            out.append(p)
            total += st.st_size
    return out


def _tar_layer(out: str, adds: list[tuple[str, str]], extra: list[tuple[str, bytes]] = (),
               whiteouts: list[str] = ()) -> tuple[str, str, int]:
    """Write a gzip layer; return (digest, diffID, size)."""
    plain = out + ".tar"
    with tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as t:
        for src, arc in adds:
            try:
                t.add(src, arc, recursive=False)
            except OSError:
                continue
        for arc, data in extra:
            ti = tarfile.TarInfo(arc)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_600_000_000
            import io

            t.addfile(ti, io.BytesIO(data))
        for arc in whiteouts:
            ti = tarfile.TarInfo(arc)
            ti.mtime = 1_600_000_000
            t.addfile(ti, None)
    h = hashlib.sha256()
    with open(plain, "rb") as f, igzip.open(out, "wb", compresslevel=2) as g:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            g.write(chunk)
    os.unlink(plain)
    d = hashlib.sha256()
    with open(out, "rb") as f:
        while chunk := f.read(1 << 20):
            d.update(chunk)
    return "sha256:" + d.hexdigest(), "sha256:" + h.hexdigest(), os.path.getsize(out)


def _rel(paths: list[str], strip: str = "/") -> list[tuple[str, str]]:
    out, dirs = [], set()
    for p in paths:
        arc = p.lstrip(strip)
        parts = arc.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                out.append(("/" + d, d))
        out.append((p, arc))
    return out


def build(workdir: str, lib_mb: int, share_mb: int) -> str:
    archive = os.path.join(workdir, "bench-oci.tar")
    if os.path.exists(archive):
        return archive
    blobs = os.path.join(workdir, "blobs")
    os.makedirs(blobs, exist_ok=True)
    lib = _files("/usr/lib/x86_64-linux-gnu", lib_mb << 20)
    share = _files("/usr/share", share_mb << 20)
    py = _files("/usr/lib/python3.11", 80 << 20)
    rnd = random.Random(7)
    small = [(f"srv/data/d{i // 100}/f{i}.txt",
              (f"{i} " * rnd.randint(10, 400)).encode()) for i in range(2000)]
    gone = [f"{p.lstrip('/').rsplit('/', 1)[0]}/.wh.{p.rsplit('/', 1)[1]}"
            for p in (lib[::97] + share[::53])[:60]]
    opaque = [f"{os.path.dirname(share[-1]).lstrip('/')}/.wh..wh..opq"]
    layers = []
    for i, (adds, extra, wh) in enumerate(((_rel(lib), [], []), (_rel(share), [], []),
                                           (_rel(py), [], []), ([], small, gone + opaque))):
        tmp = os.path.join(blobs, f"layer{i}")
        dg, diff, size = _tar_layer(tmp, adds, extra, wh)
        os.replace(tmp, os.path.join(blobs, dg[7:]))
        layers.append((dg, diff, size))
        print(f"layer {i + 1}: {size / 1e6:.1f} MB compressed", flush=True)
    from cargohold.images import platforms

    host = platforms.default()
    cfg = json.dumps({"architecture": host.architecture, "os": host.os,
                      "config": {"Cmd": ["/bin/sh"]},
                      "rootfs": {"type": "layers", "diff_ids": [x[1] for x in layers]}}).encode()
    cdg = "sha256:" + hashlib.sha256(cfg).hexdigest()
    man = json.dumps({"schemaVersion": 2,
                      "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                 "digest": cdg, "size": len(cfg)},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                  "digest": d, "size": s} for d, _x, s in layers]}).encode()
    mdg = "sha256:" + hashlib.sha256(man).hexdigest()
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                       "digest": mdg, "size": len(man),
                                       "annotations": {"io.containerd.image.name": NAME,
                                                       "org.opencontainers.image.ref.name": "1"}}]
                        }).encode()
    for dg, data in ((cdg, cfg), (mdg, man)):
        with open(os.path.join(blobs, dg[7:]), "wb") as f:
            f.write(data)
    tmp = archive + ".tmp"
    with tarfile.open(tmp, "w") as t:
        import io

        for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", index)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        for dg in [mdg, cdg] + [x[0] for x in layers]:
            t.add(os.path.join(blobs, dg[7:]), f"blobs/sha256/{dg[7:]}")
    os.replace(tmp, archive)
    shutil.rmtree(blobs)
    return archive


def time_hold(archive: str, base: str) -> float:
    root = tempfile.mkdtemp(prefix="hb-", dir=base)
    env = dict(os.environ, HOLD_ROOT=root, HOLD_STATE=os.path.join(root, "_state"),
               HOLD_CONFIG=os.path.join(root, "_none.toml"))
    os.sync()  # start clean: nobody pays for the other's writeback
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "cargohold", "images", "import", "--progress",
                        "none", archive], env=env, capture_output=True)
    dt = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"hold import failed:\n{p.stderr.decode()}")
    return dt  # the root is removed with the whole work dir at the end


def time_ctr(archive: str, base: str) -> float:
    from _common import time_ctr_unpack

    return time_ctr_unpack(base, "import", "--snapshotter", "overlayfs", archive)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp/hold-bench-import")
    ap.add_argument("--lib-mb", type=int, default=160)
    ap.add_argument("--share-mb", type=int, default=110)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    archive = build(args.dir, args.lib_mb, args.share_mb)
    print(f"archive: {archive} ({os.path.getsize(archive) / 1e6:.1f} MB)", flush=True)
    holds, ctrs = [], []
    # Both sides work in the same fresh directory: ext4 places a new directory's files near
    # its parent, and a region full of recently deleted (still being discarded) blocks makes
    # file creation several times slower — a dirty parent would decide the result.
    work = tempfile.mkdtemp(prefix="run-", dir=args.dir)
    try:
        for i in range(args.runs):
            # Alternate who goes first, so neither always inherits the other's writeback.
            if i % 2:
                holds.append(time_hold(archive, work))
                ctrs.append(time_ctr(archive, work))
            else:
                ctrs.append(time_ctr(archive, work))
                holds.append(time_hold(archive, work))
            print(f"run {i + 1}: ctr images import {ctrs[-1]:.2f}s, hold images import "
                  f"{holds[-1]:.2f}s, ratio {holds[-1] / ctrs[-1]:.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    h, c = min(holds), min(ctrs)
    ratios = sorted(x / y for x, y in zip(holds, ctrs, strict=True))
    print(f"best: hold {h:.2f}s, containerd {c:.2f}s, ratio {h / c:.2f}; median per-run "
          f"ratio {ratios[len(ratios) // 2]:.2f} (goal <= 0.5)")


if __name__ == "__main__":
    main()
