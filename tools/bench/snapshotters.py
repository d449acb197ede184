#!/usr/bin/env python3
"""Snapshotter speed: prepare+commit+remove cycles per second, and a 200-layer overlay mount.

    sudo python3 tools/bench/snapshotters.py [--cycles 200] [--native-cycles 5]
        [--parent-mb 200] [--files 2000] [--layers 200] [--mounts 20] [--dir /var/tmp]

- overlayfs: cycles on a small committed parent (prepare, commit, remove).
- native: cycles on a parent of ``--parent-mb`` MB in ``--files`` files: each prepare copies it
  (reflink or copy_file_range where the filesystem allows), each commit walks it once.
- btrfs: the same large parent on a fresh loop-mounted btrfs (skipped unless root with
  mkfs.btrfs); a prepare is one snapshot ioctl whatever the size.
- a view over ``--layers`` committed overlay layers: mount + unmount, averaged.

Prints one line per figure. Needs root for btrfs and the mount figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from cargohold.mount import mount_all, unmount_all  # noqa: E402
from cargohold.snapshotters.btrfs import Btrfs  # noqa: E402
from cargohold.snapshotters.native import Native  # noqa: E402
from cargohold.snapshotters.overlayfs import OverlayFS  # noqa: E402


def fill(d: str, total_mb: int, files: int) -> None:
    """Write ``files`` files totalling ``total_mb`` MB in a two-level tree under ``d``."""
    per = total_mb * 1_000_000 // files
    block = os.urandom(per)
    for i in range(files):
        sub = os.path.join(d, f"dir{i % 50:02d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{i:05d}"), "wb") as f:
            f.write(block)


def cycles(sn, parent: str, n: int) -> float:
    """Cycles per second of prepare+commit+remove on ``parent``."""
    t = time.perf_counter()
    for i in range(n):
        sn.prepare(f"a{i}", parent)
        sn.commit(f"c{i}", f"a{i}")
        sn.remove(f"c{i}")
    return n / (time.perf_counter() - t)


def base(sn, writer, mb: int, files: int) -> str:
    sn.prepare("base-a")
    if mb:
        fill(writer("base-a"), mb, files)
    sn.commit("base", "base-a")
    return "base"


def bench_overlay(work: str, n: int) -> None:
    sn = OverlayFS(os.path.join(work, "overlay"))
    p = base(sn, sn.upper_dir, 1, 10)
    print(f"overlayfs  prepare+commit+remove: {cycles(sn, p, n):8.1f} cycles/s "
          f"(parent 1 MB, {n} cycles)")
    sn.close()


def bench_native(work: str, n: int, mb: int, files: int) -> None:
    sn = Native(os.path.join(work, "native"))
    p = base(sn, sn.root_dir, mb, files)
    print(f"native     prepare+commit+remove: {cycles(sn, p, n):8.2f} cycles/s "
          f"(parent {mb} MB in {files} files, {n} cycles)")
    sn.close()


def bench_btrfs(work: str, n: int, mb: int, files: int) -> None:
    if os.geteuid() != 0 or not shutil.which("mkfs.btrfs"):
        print("btrfs      skipped: needs root and mkfs.btrfs")
        return
    img, mnt = os.path.join(work, "btrfs.img"), os.path.join(work, "btrfs")
    os.mkdir(mnt)
    with open(img, "wb") as f:
        f.truncate(2 << 30)
    dev = subprocess.run(["losetup", "-f", "--show", img], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        subprocess.run(["mkfs.btrfs", "-q", "-f", dev], check=True, capture_output=True)
        subprocess.run(["mount", dev, mnt], check=True)
        try:
            sn = Btrfs(os.path.join(mnt, "root"))
            p = base(sn, sn.subvolume, mb, files)
            print(f"btrfs      prepare+commit+remove: {cycles(sn, p, n):8.1f} cycles/s "
                  f"(parent {mb} MB in {files} files, {n} cycles)")
            sn.close()
        finally:
            subprocess.run(["umount", mnt], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


def bench_mount(work: str, layers: int, reps: int) -> None:
    if os.geteuid() != 0:
        print("mount      skipped: needs root")
        return
    sn = OverlayFS(os.path.join(work, "chain"))
    parent = ""
    for i in range(layers):
        sn.prepare(f"k{i}", parent)
        with open(os.path.join(sn.upper_dir(f"k{i}"), f"file{i}"), "w") as f:
            f.write(str(i))
        sn.commit(f"l{i}", f"k{i}")
        parent = f"l{i}"
    mounts = sn.view("view", parent)
    target = os.path.join(work, "t")
    os.mkdir(target)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        mount_all(mounts, target)
        unmount_all(target)
        times.append(time.perf_counter() - t)
    opts = len(",".join(mounts[0].options))
    print(f"overlay    {layers}-layer view mount+umount: {statistics.mean(times) * 1000:7.2f} ms "
          f"mean, {statistics.median(times) * 1000:.2f} ms median ({reps} reps, "
          f"{opts} bytes of options)")
    sn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--native-cycles", type=int, default=5)
    ap.add_argument("--parent-mb", type=int, default=200)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--mounts", type=int, default=20)
    ap.add_argument("--dir", default="/var/tmp")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cargohold-bench-", dir=a.dir)
    try:
        bench_overlay(work, a.cycles)
        bench_native(work, a.native_cycles, a.parent_mb, a.files)
        bench_btrfs(work, a.cycles, a.parent_mb, a.files)
        bench_mount(work, a.layers, a.mounts)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
