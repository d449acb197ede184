"""btrfs specifics on a real loop-mounted btrfs, plus the quota command seam by argv."""

from __future__ import annotations

import errno
import os

import pytest

from cargohold.errors import Unsupported
from cargohold.snapshotters import btrfs
from cargohold.snapshotters.api import Usage
from cargohold.snapshotters.btrfs import Btrfs
from cargohold.snapshotters.runner import FakeRunner

QGROUPS = """\
Qgroupid    Referenced    Exclusive   Path
--------    ----------    ---------   ----
0/5              16384        16384   <toplevel>
0/{id}         1114112       1081344   snapshots/1
"""


@pytest.fixture
def sn(btrfs_mount, request):
    d = os.path.join(btrfs_mount, request.node.name)
    s = Btrfs(d)
    yield s
    s.close()


def test_not_btrfs_is_unsupported_with_a_reason(tmp_path):
    with pytest.raises(Unsupported, match="not on a btrfs filesystem"):
        Btrfs(str(tmp_path / "b"))


def test_objects_are_subvolumes_and_commits_are_read_only(sn):
    [m] = sn.prepare("a")
    sid = btrfs.subvol_id(sn.path("1"))
    assert (m.type, m.source, m.options) == ("btrfs", sn.device, (f"subvolid={sid}",))
    assert btrfs.is_subvolume(sn.path("1"))
    with open(os.path.join(sn.subvolume("a"), "f"), "w") as f:
        f.write("data")
    sn.commit("A", "a")
    with pytest.raises(OSError) as ei:
        open(os.path.join(sn.path("1"), "g"), "w")
    assert ei.value.errno == errno.EROFS
    [m] = sn.view("v", "A")
    assert m.options[-1] == "ro"
    sn.prepare("b", "A")
    with open(os.path.join(sn.subvolume("b"), "f")) as f:
        assert f.read() == "data"
    sn.remove("v")
    sn.remove("b")
    sn.remove("A")
    assert os.listdir(sn.snapshots_dir) == []


def test_nested_subvolumes_are_deleted_too(sn):
    sn.prepare("a")
    btrfs.subvol_create(os.path.join(sn.path("1"), "inner"))
    sn.remove("a")
    assert os.listdir(sn.snapshots_dir) == []


def test_usage_from_qgroups_by_argv(sn):
    sn.prepare("a")
    sid = btrfs.subvol_id(sn.path("1"))
    fake = FakeRunner().on("btrfs", "qgroup", stdout=QGROUPS.format(id=sid))
    sn.runner = fake
    sn._quotas = None
    assert sn.usage("a") == Usage(1081344, -1)
    assert fake.calls == [
        ["btrfs", "qgroup", "show", "--raw", sn.snapshots_dir],
        ["btrfs", "qgroup", "show", "--raw", "--sync", "-f", sn.path("1")],
    ]
