"""Fixtures for snapshotter tests: stale-mount sweep, a real loop-mounted btrfs, factories."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from cargohold.mount import is_mountpoint, unmount

BTRFS_MAGIC = 0x9123683E


def _mounts_under(prefix: str) -> list[str]:
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp.startswith(prefix + "/"):
                out.append(mp)
    return sorted(out, key=len, reverse=True)  # deepest first


@pytest.fixture(scope="session", autouse=True)
def sweep_stale_mounts():
    """Unmount what an interrupted earlier run left mounted under this run's temp directory.

    Only under ``tempfile.gettempdir()`` (``TMPDIR``): test runs with different ``TMPDIR``s
    can then run side by side without unmounting each other's work.
    """
    if os.geteuid() == 0:
        for mp in _mounts_under(os.path.realpath(tempfile.gettempdir())):
            if "pytest-of-" in mp or "cargohold-" in mp:
                unmount(mp, detach=True)
    yield


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="session")
def btrfs_mount(tmp_path_factory):
    """A fresh btrfs on a loop device for the session; skips with the reason it cannot."""
    if os.geteuid() != 0:
        pytest.skip("btrfs tests need root (loop devices and mounts)")
    if not shutil.which("mkfs.btrfs") or not shutil.which("losetup"):
        pytest.skip("btrfs tests need mkfs.btrfs (btrfs-progs) and losetup")
    with open("/proc/filesystems") as f:
        if "btrfs" not in f.read():
            subprocess.run(["modprobe", "btrfs"], capture_output=True)
    base = tmp_path_factory.mktemp("btrfs")
    img, mnt = str(base / "disk.img"), str(base / "mnt")
    os.mkdir(mnt)
    with open(img, "wb") as f:
        f.truncate(1 << 30)
    try:
        dev = _run("losetup", "-f", "--show", img)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"no loop device available: {exc.stderr.strip()}")
    try:
        _run("mkfs.btrfs", "-q", "-f", dev)
        _run("mount", "-t", "btrfs", dev, mnt)
    except subprocess.CalledProcessError as exc:
        subprocess.run(["losetup", "-d", dev])
        pytest.skip(f"kernel lacks btrfs or mkfs failed: {exc.stderr.strip()}")
    try:
        yield mnt
    finally:
        for mp in _mounts_under(mnt):
            unmount(mp, detach=True)
        if is_mountpoint(mnt):
            unmount(mnt, detach=True)
        subprocess.run(["losetup", "-d", dev])
        os.unlink(img)
