"""``hold images mount/unmount/mounts``: real mounts, read-only for real, leases GC respects."""

from __future__ import annotations

import errno
import json
import os

import pytest
from tests.peers import build_image, make_tree, need_root

from cargohold import mount as kmount
from cargohold.errors import AlreadyExists, FailedPrecondition
from cargohold.images import mount as mounting
from cargohold.images.pack import pack
from cargohold.metadata import images as image_records
from cargohold.metadata import leases as lease_records
from cargohold.types import Mount


@pytest.fixture(autouse=True)
def _root_only():
    need_root()


@pytest.fixture
def two_layers(client, tmp_path):
    """An image whose second layer changes a file, deletes one and adds one."""
    a = make_tree(str(tmp_path / "a"))
    b = tmp_path / "b"
    os.system(f"cp -a {a} {b}")  # noqa: S605 - a fixed test path
    (b / "etc" / "hello.txt").unlink()
    (b / "etc" / "hardlink.txt").unlink()
    (b / "added.txt").write_text("layer two\n")
    (b / "usr" / "bin" / "tool").write_text("#!/bin/sh\necho v2\n")
    build_image(client, "example.com/two:1", [a, str(b)])
    return "example.com/two:1"


def _write_refused(path: str) -> None:
    with pytest.raises(OSError) as ei:
        with open(os.path.join(path, "new-file"), "w"):
            pass
    assert ei.value.errno == errno.EROFS


def _lease_ids(client) -> list[str]:
    return [lease.id for lease in client.leases.list()]


def test_ro_single_layer_is_a_readonly_bind_with_a_lease_and_record(client, tmp_path, targets):
    pack(client, make_tree(str(tmp_path / "src")), "example.com/one:1")
    target = str(tmp_path / "mnt" / "deep")  # created when missing
    targets.append(target)
    rec = mounting.mount(client, "example.com/one:1", target)
    assert open(os.path.join(target, "etc", "hello.txt")).read() == "hello from cargohold\n"
    _write_refused(target)
    assert os.statvfs(target).f_flag & os.ST_RDONLY
    with open(os.path.join(client.config.state, "mounts", f"{rec.id}.json")) as f:
        saved = json.load(f)
    assert saved["target"] == target and saved["image"] == "example.com/one:1"
    assert saved["rw"] is False and saved["namespace"] == "default" and saved["pid"]
    lease = client.leases.get(rec.lease)
    assert "containerd.io/gc.expire" not in lease.labels  # no expiry while mounted
    assert [s.state for s in mounting.list_mounts(client)] == ["mounted"]
    res = mounting.unmount(client, target)
    assert res.was_mounted and res.removed
    assert not kmount.is_mountpoint(target)
    assert _lease_ids(client) == [] and mounting.list_mounts(client) == []
    again = mounting.unmount(client, target)  # twice is not an error
    assert not again.was_mounted and not again.removed


def test_ro_multi_layer_is_an_overlay_with_whiteouts(client, two_layers, tmp_path, targets):
    target = str(tmp_path / "mnt")
    targets.append(target)
    rec = mounting.mount(client, two_layers, target)
    assert any(m.startswith("mount -t overlay") for m in rec.mounts)
    assert not os.path.exists(os.path.join(target, "etc", "hello.txt"))
    assert open(os.path.join(target, "added.txt")).read() == "layer two\n"
    assert "v2" in open(os.path.join(target, "usr", "bin", "tool")).read()
    _write_refused(target)
    mounting.unmount(client, target)


def test_gc_never_removes_a_mounted_view(client, hold, two_layers, tmp_path, targets):
    target = str(tmp_path / "mnt")
    targets.append(target)
    mounting.mount(client, two_layers, target)
    with client.db.update() as tx:  # even with the image gone
        image_records.delete(tx, "default", two_layers)
    hold("gc")
    assert open(os.path.join(target, "added.txt")).read() == "layer two\n"
    assert os.listdir(os.path.join(target, "usr", "bin")) == ["tool"]
    mounting.unmount(client, target)
    out = hold("gc").stdout.decode()
    assert "snapshot" in out  # now the view and the chain go
    assert hold("snapshots", "ls", "-q").stdout.strip() == b""


def test_rw_mount_keeps_changes_until_rm(client, two_layers, tmp_path, targets):
    target = str(tmp_path / "rw")
    targets.append(target)
    rec = mounting.mount(client, two_layers, target, rw=True)
    assert rec.rw
    with open(os.path.join(target, "written.txt"), "w") as f:
        f.write("mine\n")
    res = mounting.unmount(client, target)  # rw default: keep
    assert res.was_mounted and not res.removed
    (status,) = mounting.list_mounts(client)
    assert status.state == "unmounted (snapshot kept)"
    mounting.mount(client, two_layers, target, rw=True)
    assert open(os.path.join(target, "written.txt")).read() == "mine\n"
    with pytest.raises(FailedPrecondition, match="another image or mode"):
        mounting.unmount(client, target, rm=False)
        mounting.mount(client, two_layers, target)  # ro on a kept rw snapshot
    res = mounting.unmount(client, target, rm=True)
    assert res.removed and _lease_ids(client) == []


def test_double_mount_and_foreign_mount_point_are_refused(client, two_layers, tmp_path,
                                                           targets):
    target = str(tmp_path / "mnt")
    targets.append(target)
    mounting.mount(client, two_layers, target)
    with pytest.raises(AlreadyExists, match="already mounted"):
        mounting.mount(client, two_layers, target)
    mounting.unmount(client, target)
    other = str(tmp_path / "other")
    os.makedirs(other)
    targets.append(other)
    kmount.mount(Mount("bind", str(tmp_path), ("rbind", "ro")), other)
    with pytest.raises(FailedPrecondition, match="something else is mounted"):
        mounting.mount(client, two_layers, other)


def test_mounts_flags_stale_entries_and_unmount_cleans_them(client, two_layers, tmp_path,
                                                             targets):
    target = str(tmp_path / "mnt")
    targets.append(target)
    rec = mounting.mount(client, two_layers, target)
    kmount.unmount(target)  # behind our back
    with client.db.update() as tx:
        lease_records.delete(tx, "default", rec.lease)
    (status,) = mounting.list_mounts(client)
    assert status.problems == ("not mounted", "lease gone")
    mounting.unmount(client, target)
    assert mounting.list_mounts(client) == []
    # A crash between lease and record: the lease shows up, and unmount removes it.
    client.leases.create(mounting.mount_id(target), labels={mounting.LABEL_TARGET: target})
    (status,) = mounting.list_mounts(client)
    assert status.problems == ("no record",) and status.record.target == target
    mounting.unmount(client, target)
    assert _lease_ids(client) == []


def test_native_snapshotter_view_is_readonly(client, two_layers, tmp_path, targets):
    target = str(tmp_path / "mnt")
    targets.append(target)
    rec = mounting.mount(client, two_layers, target, snapshotter="native")
    assert rec.snapshotter == "native"
    assert open(os.path.join(target, "added.txt")).read() == "layer two\n"
    _write_refused(target)
    mounting.unmount(client, target)


def test_cli_mount_mounts_unmount(hold, tmp_path, targets):
    src = make_tree(str(tmp_path / "src"))
    hold("images", "pack", src, "cli:1")
    target = str(tmp_path / "mnt")
    targets.append(target)
    out = hold("images", "mount", "cli:1", target).stdout.decode().split()
    assert out[0].startswith("sha256:") and out[1] == target
    listed = json.loads(hold("images", "mounts", "--format", "json").stdout)
    assert [(m["target"], m["state"]) for m in listed] == [(target, "mounted")]
    assert b"unmounted; snapshot and lease removed" in hold("images", "unmount",
                                                              target).stdout
    assert b"not mounted" in hold("images", "unmount", target).stdout
    p = hold("images", "mount", "nope:1", target, check=False)
    assert p.returncode == 1 and b"image nope:1: not found" in p.stderr
