"""The conformance suite of cargohold.snapshotters.testing, run on every backend this host has."""

from __future__ import annotations

import glob
import os
import secrets
import subprocess

import pytest

from cargohold.errors import Unsupported
from cargohold.snapshotters import testing
from cargohold.snapshotters.registry import load, open_snapshotter
from cargohold.snapshotters.runner import FakeRunner

BACKENDS = ["overlayfs", "native", "btrfs", "zfs", "devmapper"]


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    """(make, tmp) for one backend; btrfs works in a directory on the loop-mounted btrfs."""
    name = request.param
    if name == "btrfs":
        mnt = request.getfixturevalue("btrfs_mount")
        tmp = os.path.join(mnt, request.node.name.replace("/", "_")[:80])
        os.mkdir(tmp)
    else:
        tmp = str(tmp_path)
    section = request.getfixturevalue(f"{name}_section") if name in TOOL_BACKENDS else {}
    return (lambda root: open_snapshotter(name, root, section)), tmp


# --- zfs and devmapper: a fresh parent dataset / thin pool per test, where the kernel has them --
TOOL_BACKENDS = ("zfs", "devmapper")


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def _supported(name: str, section: dict, tmp: str) -> None:
    """Skip with the backend's own reason unless this host has its kernel feature and tools.

    The pool or dataset is made by the fixture, so its existence is answered by a fake here.
    """
    fake = FakeRunner().on("dmsetup", "status", stdout="0 8 thin-pool 0 1/8 0/8 - rw\n")
    try:
        load(name).check_support(tmp, section, runner=fake)
    except Unsupported as exc:
        pytest.skip(f"{name}: {exc}" + (f" ({exc.hint})" if exc.hint else ""))
    if os.geteuid() != 0:
        pytest.skip(f"{name}: needs root")


@pytest.fixture
def zfs_section(tmp_path):
    """A child of $CARGOHOLD_TEST_ZFS_DATASET for this test, destroyed after it."""
    base = os.environ.get("CARGOHOLD_TEST_ZFS_DATASET", "")
    _supported("zfs", {"dataset": base or "unset"}, str(tmp_path))
    if not base:
        pytest.skip("zfs: set CARGOHOLD_TEST_ZFS_DATASET to a parent dataset tests may use")
    child = f"{base}/t{secrets.token_hex(4)}"
    _sh("zfs", "create", "-o", "mountpoint=none", child)
    try:
        yield {"dataset": child}
    finally:
        subprocess.run(["zfs", "destroy", "-r", child], capture_output=True)


@pytest.fixture
def devmapper_section(tmp_path):
    """A thin pool on two loop devices for this test, torn down after it."""
    pool = f"chtest{secrets.token_hex(3)}"
    section = {"pool_name": pool, "base_image_size": "64MiB", "fs_type": "ext4"}
    _supported("devmapper", section, str(tmp_path))
    loops = []
    for part, size in (("meta", 16 << 20), ("data", 1 << 30)):
        img = str(tmp_path / f"{part}.img")
        with open(img, "wb") as f:
            f.truncate(size)
        loops.append(_sh("losetup", "-f", "--show", img))
    try:
        _sh("dd", "if=/dev/zero", f"of={loops[0]}", "bs=4096", "count=1")
        _sh("dmsetup", "create", pool, "--table",
            f"0 {(1 << 30) // 512} thin-pool {loops[0]} {loops[1]} 128 32768")
        yield section
    finally:
        for dev in glob.glob(f"/dev/mapper/{pool}-snap-*"):
            subprocess.run(["dmsetup", "remove", "--force", os.path.basename(dev)],
                           capture_output=True)
        subprocess.run(["dmsetup", "remove", pool], capture_output=True)
        for loop in loops:
            subprocess.run(["losetup", "-d", loop], capture_output=True)


@pytest.mark.parametrize("check", list(testing.ALL_CHECKS))
def test_conformance(backend, check):
    make, tmp = backend
    testing.ALL_CHECKS[check](make, tmp)
