"""GC never removes what a user made or is using: hand-made snapshots are GC roots, mounted
snapshots (kernel mounts or mount records) survive GC and `snapshots rm`, the dry run is the
real run, backends are never deleted from under the lock writers wait on, lock waits say who
holds the lock, and a backend GC cannot open is an error. Real overlay mounts, real `hold`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading

import pytest
from tests.conftest import run_hold

from cargohold import config
from cargohold.client import Client
from cargohold.mount import is_mountpoint, unmount_all

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="real overlay mounts need root")
SN = "overlayfs"


def paste(cmd_text: str, target: str) -> None:
    """Run what `hold snapshots prepare|mounts` printed, as a user pasting it would."""
    for line in cmd_text.strip().splitlines():
        subprocess.run(["sh", "-c", line.replace("TARGET", shlex.quote(target))], check=True)


def keys(root: str) -> list[str]:
    return run_hold(root, "snapshots", "ls", "-q").stdout.decode().split()


def gc_json(root: str, *args: str, check: bool = True) -> dict:
    return json.loads(run_hold(root, "gc", "--format", "json", *args, check=check).stdout)


def test_prepared_snapshot_is_a_root_and_survives_gc_with_its_data(root, mnt):
    out = run_hold(root, "snapshots", "prepare", "work1").stdout.decode()
    target = mnt()
    paste(out, target)
    with open(os.path.join(target, "notes.txt"), "w") as f:
        f.write("mine\n")
    res = gc_json(root)
    assert [r for r in res["removed"] if r["kind"].endswith("snapshot")] == []
    assert keys(root) == ["work1"]
    with open(os.path.join(target, "notes.txt")) as f:
        assert f.read() == "mine\n"
    info = json.loads(run_hold(root, "snapshots", "info", "work1").stdout)
    assert "containerd.io/gc.root" in info["labels"]


def test_view_and_commit_are_roots_too_but_not_inside_a_lease(root):
    run_hold(root, "snapshots", "prepare", "a")
    run_hold(root, "snapshots", "commit", "base", "a")
    run_hold(root, "snapshots", "view", "v", "base")
    run_hold(root, "leases", "create", "--id", "L")
    run_hold(root, "--lease", "L", "snapshots", "prepare", "leased", "base")
    for k in ("base", "v"):
        assert "containerd.io/gc.root" in json.loads(
            run_hold(root, "snapshots", "info", k).stdout)["labels"]
    assert "containerd.io/gc.root" not in json.loads(
        run_hold(root, "snapshots", "info", "leased").stdout)["labels"]
    run_hold(root, "leases", "rm", "L")
    gc_json(root)
    assert keys(root) == ["base", "v"]


def test_mounted_snapshot_outlives_its_lease_and_why_says_where(root, mnt):
    run_hold(root, "leases", "create", "--id", "L")
    run_hold(root, "--lease", "L", "snapshots", "prepare", "b-a")
    run_hold(root, "--lease", "L", "snapshots", "commit", "base", "b-a")
    out = run_hold(root, "--lease", "L", "snapshots", "prepare", "top", "base").stdout.decode()
    target = mnt()
    paste(out, target)  # an overlay: upper = top, lower = base
    with open(os.path.join(target, "f"), "w") as f:
        f.write("x")
    run_hold(root, "leases", "rm", "L")
    dry = gc_json(root, "--dry-run")
    assert not [r for r in dry["removed"] if "snapshot" in r["kind"]], dry
    gc_json(root)
    assert keys(root) == ["base", "top"]
    why = run_hold(root, "gc", "--why", f"snapshot/{SN}/top").stdout.decode()
    assert f"mounted at {target}" in why, why
    why = run_hold(root, "gc", "--why", f"snapshot/{SN}/base").stdout.decode()
    assert f"mounted at {target}" in why, why  # an overlay lower of that mount
    # `snapshots rm` refuses, saying where and what to do; --force detaches, then removes.
    p = run_hold(root, "snapshots", "rm", "top", check=False)
    assert p.returncode == 1
    assert f"in use (mounted at {target})" in p.stderr.decode()
    assert "--force" in p.stderr.decode()
    assert keys(root) == ["base", "top"] and is_mountpoint(target)
    run_hold(root, "snapshots", "rm", "--force", "top")
    assert not is_mountpoint(target) and keys(root) == ["base"]
    gc_json(root)
    assert keys(root) == []


def test_bind_mounted_committed_layer_is_kept(root, mnt):
    """A user bind-mounts a committed layer directory by hand (no record, no lease)."""
    run_hold(root, "leases", "create", "--id", "L")
    run_hold(root, "--lease", "L", "snapshots", "prepare", "a")
    run_hold(root, "--lease", "L", "snapshots", "commit", "layer", "a")
    run_hold(root, "leases", "rm", "L")
    objs = os.path.join(root, "snapshots", SN, "snapshots")
    [sid] = [e for e in os.listdir(objs) if e.isdigit()]
    target = mnt()
    subprocess.run(["mount", "--bind", os.path.join(objs, sid, "fs"), target], check=True)
    gc_json(root)
    assert keys(root) == ["layer"]
    assert f"mounted at {target}" in run_hold(
        root, "gc", "--why", f"snapshot/{SN}/layer").stdout.decode()
    unmount_all(target)
    gc_json(root)
    assert keys(root) == [] and [e for e in os.listdir(objs) if e.isdigit()] == []


@pytest.mark.parametrize("alias", ["symlink", "bind-mount", "read-only-bind-mount"])
def test_a_mount_made_through_one_name_of_the_root_is_seen_through_another(root, mnt,
                                                                          tmp_path, alias):
    """The overlay shows its layers as the mounter spelled them; GC run through another name
    of the same root (a symlink, a bind mount, a read-only export) must still see them."""
    run_hold(root, "leases", "create", "--id", "L")
    run_hold(root, "--lease", "L", "snapshots", "prepare", "b-a")
    run_hold(root, "--lease", "L", "snapshots", "commit", "base", "b-a")
    out = run_hold(root, "--lease", "L", "snapshots", "prepare", "top", "base").stdout.decode()
    target = mnt()
    paste(out, target)  # upper and lower spelled under ``root``
    with open(os.path.join(target, "f"), "w") as f:
        f.write("mine")
    run_hold(root, "leases", "rm", "L")
    other = str(tmp_path / "other")
    if alias == "symlink":
        os.symlink(root, other)
    else:
        os.makedirs(other)
        subprocess.run(["mount", "--bind", root, other], check=True)
        if alias == "read-only-bind-mount":
            subprocess.run(["mount", "-o", "remount,bind,ro", other], check=True)
    try:
        dry = gc_json(other, "--dry-run")
        assert not [r for r in dry["removed"] if "snapshot" in r["kind"]], dry
        for k in ("top", "base"):
            why = run_hold(other, "gc", "--why", f"snapshot/{SN}/{k}").stdout.decode()
            assert f"mounted at {target}" in why, why
        if alias != "read-only-bind-mount":
            gc_json(other)
            p = run_hold(other, "snapshots", "rm", "top", check=False)
            assert p.returncode == 1 and f"mounted at {target}" in p.stderr.decode()
    finally:
        if alias != "symlink":
            unmount_all(other)
    assert keys(root) == ["base", "top"]
    with open(os.path.join(target, "f")) as f:
        assert f.read() == "mine"


def test_image_mount_record_keeps_the_snapshot_without_its_lease(root, mnt, tmp_path):
    src = tmp_path / "tree"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hello").write_text("hi\n")
    run_hold(root, "images", "pack", str(src), "localhost/x:1")
    target = mnt()
    run_hold(root, "images", "mount", "localhost/x:1", target)
    lease = [x["id"] for x in json.loads(run_hold(root, "leases", "ls", "--format",
                                                  "json").stdout)
             if x["id"].startswith("mount-")][0]
    run_hold(root, "leases", "rm", lease)  # someone removes the mount's lease by hand
    gc_json(root)
    with open(os.path.join(target, "etc", "hello")) as f:
        assert f.read() == "hi\n"
    snaps = [x["name"] for x in json.loads(run_hold(root, "snapshots", "ls", "--format",
                                                     "json").stdout)]
    assert lease in snaps
    assert f"mounted at {target}" in run_hold(
        root, "gc", "--why", f"snapshot/{SN}/{lease}").stdout.decode()
    run_hold(root, "images", "unmount", target)


def test_dry_run_lists_exactly_what_gc_removes_with_the_same_bytes(root, tmp_path):
    run_hold(root, "leases", "create", "--id", "L")
    out = run_hold(root, "--lease", "L", "snapshots", "prepare", "big").stdout.decode()
    upper = out.split()[-2]  # mount -t bind -o rbind,rw <upper> TARGET
    with open(os.path.join(upper, "blob.bin"), "wb") as f:
        f.write(os.urandom(3 << 20))
    run_hold(root, "--lease", "L", "snapshots", "commit", "bigc", "big")
    run_hold(root, "--lease", "L", "snapshots", "prepare", "top", "bigc")
    run_hold(root, "--lease", "L", "content", "ingest", "r1", input=os.urandom(1 << 20))
    run_hold(root, "leases", "rm", "L")
    # An interrupted ingest past its expiry: its 2 MiB of data count too.
    cfg = os.path.join(root, "expire-now.toml")
    with open(cfg, "w") as f:
        f.write('[gc]\ningest_expiry = "0s"\n')
    p = run_hold(root, "content", "ingest", "--expected-size", str(4 << 20), "partial",
                 input=os.urandom(2 << 20), check=False, env={"HOLD_CONFIG": cfg})
    assert p.returncode == 1 and b"kept" in p.stderr
    dry = gc_json(root, "--dry-run")
    real = gc_json(root)
    seen = {(r["kind"], r["key"], r["size"]) for r in dry["removed"]}
    assert seen == {(r["kind"], r["key"], r["size"]) for r in real["removed"]}
    assert dry["bytes_freed"] == real["bytes_freed"]
    # The snapshot's 3 MiB counts, and the ingest's 2 MiB, not only the 1 MiB blob.
    assert real["bytes_freed"] >= (6 << 20)
    assert {r["kind"] for r in real["removed"]} >= {"snapshot", "backend-snapshot", "blob-file",
                                                     "ingest-dir"}
    assert [r["size"] for r in real["removed"] if r["kind"] == "ingest-dir"] == [2 << 20]
    assert gc_json(root)["removed"] == []


CHILD_HOLDS_LOCK = r"""
import sys
from cargohold.metadata.snapshotter import SnapshotterLock
lock = SnapshotterLock(sys.argv[1], "overlayfs")
with lock.exclusive():
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_writer_kept_waiting_says_who_holds_the_lock(root):
    run_hold(root, "snapshots", "ls")  # create the root
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "src"))
    holder = subprocess.Popen([sys.executable, "-c", CHILD_HOLDS_LOCK,
                               os.path.join(root, "metadata")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        e = dict(os.environ, HOLD_ROOT=root, HOLD_STATE=os.path.join(root, "_state"),
                 HOLD_CONFIG=os.path.join(root, "_no_config.toml"),
                 PYTHONPATH=env["PYTHONPATH"])
        writer = subprocess.Popen([sys.executable, "-m", "cargohold", "snapshots", "prepare",
                                   "k"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=e)
        # The notice comes after one second of waiting: read it, then let the holder go.
        line = writer.stderr.readline().decode()
        assert "waiting for pid" in line and str(holder.pid) in line, line
        assert "since" in line, line
        holder.stdin.write("go\n")
        holder.stdin.flush()
        out, err = writer.communicate(timeout=30)
        assert writer.returncode == 0, err
    finally:
        holder.kill()
        holder.wait()
    assert keys(root) == ["k"]


def test_gc_deletes_backend_objects_after_letting_go_of_the_lock(root):
    """A prepare must get through while GC is still deleting a big snapshot's files."""
    os.environ["HOLD_CONFIG"] = os.path.join(root, "_no_config.toml")
    c = Client(config.load(None, root=root, state=os.path.join(root, "_state"),
                           snapshotter=SN))
    try:
        sn = c.snapshotter()
        sn.prepare("doomed")  # no lease, no label: garbage
        backend = c.backend_snapshotter(SN)
        deleting = threading.Event()
        release = threading.Event()
        real = backend._delete

        def slow_delete(path: str) -> None:
            deleting.set()
            release.wait(30)
            real(path)

        backend._delete = slow_delete
        t = threading.Thread(target=c.collector.collect)
        t.start()
        assert deleting.wait(30), "GC never got to deleting"
        done = threading.Event()
        w = threading.Thread(target=lambda: (sn.prepare("mine"), done.set()))
        w.start()
        ok = done.wait(20)
        release.set()
        t.join(30)
        w.join(30)
        assert ok, "prepare waited for GC's deletion: the lock was held through it"
        assert sorted(i for i in _keys(sn)) == ["mine"]
    finally:
        c.close()


def _keys(sn) -> list[str]:  # noqa: ANN001
    out: list[str] = []
    sn.walk(lambda i: out.append(i.name))
    return out


def test_a_backend_gc_cannot_open_is_an_error_and_exit_1(root):
    run_hold(root, "snapshots", "ls")
    # Snapshots were once made on btrfs here, but this directory is not on btrfs (today).
    os.makedirs(os.path.join(root, "snapshots", "btrfs"))
    p = run_hold(root, "gc", check=False)
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "snapshotter btrfs: cannot open it, so its snapshots were not collected" in err, err
    assert "internal error" not in err
    res = json.loads(run_hold(root, "gc", "--format", "json", check=False).stdout)
    assert any("snapshotter btrfs" in e for e in res["errors"])
