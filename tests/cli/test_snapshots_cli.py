"""`hold snapshots` as a user runs it: the real command against a tmp root, real mounts."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from tests.conftest import run_hold

from cargohold.mount import is_mountpoint, unmount_all

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting snapshots needs root")


@pytest.fixture(params=["overlayfs", "native"])
def sh(request, root, tmp_path):
    """``sh(*args)`` runs ``hold --snapshotter NAME snapshots *args``; ``sh.dir(name)`` makes a
    mount point, and every mount point is unmounted at teardown even when the test fails."""
    name = request.param
    targets: list[str] = []

    def run(*args, check=True):
        return run_hold(root, "--snapshotter", name, "snapshots", *args, check=check)

    def mkdir(n: str) -> str:
        d = str(tmp_path / n)
        os.mkdir(d)
        targets.append(d)
        return d

    run.dir = mkdir
    run.name = name
    run.root = root
    yield run
    for d in targets:
        unmount_all(d)


def out(p) -> str:
    return p.stdout.decode().strip()


def backend_objects(root: str, name: str) -> list[str]:
    d = os.path.join(root, "snapshots", name, "snapshots")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_prepare_write_commit_view_read_paste_mounts_unmount_rm(sh):
    m1, m2, m3 = sh.dir("m1"), sh.dir("m2"), sh.dir("m3")
    assert out(sh("prepare", "base-a", "--target", m1)) == m1
    with open(os.path.join(m1, "hello"), "w") as f:
        f.write("world")
    sh("unmount", m1)
    sh("unmount", m1)  # idempotent
    assert not is_mountpoint(m1)
    assert out(sh("commit", "base", "base-a")) == "base"
    sh("view", "v", "base", "--target", m2)
    with open(os.path.join(m2, "hello")) as f:
        assert f.read() == "world"
    with pytest.raises(OSError):
        open(os.path.join(m2, "new"), "w")
    sh("unmount", m2)

    sh("prepare", "work", "base")
    cmd = out(sh("mounts", m3, "work"))
    assert cmd.startswith("mount -t ") and cmd.endswith(m3)
    if sh.name == "overlayfs":
        assert "-t overlay overlay -o " not in cmd  # options come before the source
        assert "index=off" in cmd and "upperdir=" in cmd and "lowerdir=" in cmd
    subprocess.run(["sh", "-c", cmd], check=True, cwd="/")  # pasted as is, from anywhere
    with open(os.path.join(m3, "hello")) as f:
        assert f.read() == "world"
    with open(os.path.join(m3, "more"), "w") as f:
        f.write("x")
    sh("unmount", m3)
    assert not is_mountpoint(m3)

    assert out(sh("rm", "work", "v", "base")).split() == ["work", "v", "base"]
    assert out(sh("ls", "-q")) == ""
    assert backend_objects(sh.root, sh.name) == []


def test_prepare_without_target_prints_the_mount_command(sh):
    lines = out(sh("prepare", "k")).splitlines()
    assert len(lines) == 1 and lines[0].startswith("mount -t ")
    assert lines[0].endswith(" TARGET")


def test_ls_tree_usage_info_label(sh):
    m = sh.dir("m")
    sh("prepare", "a", "--target", m)
    with open(os.path.join(m, "blob"), "wb") as f:
        f.write(os.urandom(64 * 1024))
    sh("unmount", m)
    sh("commit", "--label", "team=x", "A", "a")
    sh("prepare", "b", "A")
    sh("view", "c", "A")
    rows = out(sh("ls")).splitlines()
    assert rows[0].split() == ["KEY", "PARENT", "KIND"]
    assert [r.split() for r in rows[1:]] == [["A", "Committed"], ["b", "A", "Active"],
                                             ["c", "A", "View"]]
    assert out(sh("ls", "-q", "kind==committed")) == "A"
    assert [i["name"] for i in json.loads(out(sh("ls", "--format", "json")))] == ["A", "b", "c"]

    tree = out(sh("tree")).splitlines()
    assert tree[0].startswith("A (committed")
    assert [t.split()[:2] for t in tree[1:]] == [["\\_", "b"], ["\\_", "c"]]

    usage = {u["key"]: u for u in json.loads(out(sh("usage", "--format", "json")))}
    assert usage["A"]["size"] >= 64 * 1024 and usage["A"]["inodes"] >= 1
    assert usage["b"]["size"] < 64 * 1024
    assert out(sh("usage", "A")).splitlines()[1].split()[0] == "A"

    info = json.loads(out(sh("info", "A")))
    assert info["name"] == "A" and info["kind"] == "Committed" and info["parent"] == ""
    root_label = info["labels"].pop("containerd.io/gc.root")  # made by hand: a GC root
    assert info["labels"] == {"team": "x"}
    assert out(sh("label", "A", "env=prod", "team=")) == \
        f"containerd.io/gc.root={root_label},env=prod"
    assert json.loads(out(sh("info", "A")))["labels"] == {"env": "prod",
                                                          "containerd.io/gc.root": root_label}


def test_errors_are_clear(sh):
    p = sh("prepare", "x", "nope", check=False)
    assert p.returncode == 1
    assert b"parent snapshot nope" in p.stderr and b"not found" in p.stderr
    assert b"hint:" in p.stderr
    sh("prepare", "a")
    sh("commit", "A", "a")
    sh("prepare", "b", "A")
    p = sh("rm", "A", check=False)
    assert p.returncode == 1 and b"child" in p.stderr and b"remove the children first" in p.stderr
    p = sh("info", "zzz", check=False)
    assert p.returncode == 1 and b"snapshot zzz" in p.stderr and b"snapshots ls" in p.stderr
    p = sh("prepare", "b", check=False)
    assert p.returncode == 1 and b"already exists" in p.stderr
    p = sh("mounts", "/mnt", "A", check=False)
    assert p.returncode == 1 and b"committed" in p.stderr
    assert b"/" not in p.stderr.split(b":")[1], "a backend name leaked into the message"


def test_namespaces_and_lease(sh):
    sh("prepare", "a")
    assert run_hold(sh.root, "-n", "other", "--snapshotter", sh.name, "snapshots", "ls",
                    "-q").stdout == b""
    p = run_hold(sh.root, "-n", "other", "--snapshotter", sh.name, "snapshots", "rm", "a",
                 check=False)
    assert p.returncode == 1 and b"not found" in p.stderr
    run_hold(sh.root, "leases", "create", "--id", "keep")
    run_hold(sh.root, "--lease", "keep", "--snapshotter", sh.name, "snapshots", "prepare", "k")
    run_hold(sh.root, "gc")
    # "a" was made by hand outside a lease: a GC root, as ctr makes it; "k" is leased.
    assert out(sh("ls", "-q")).split() == ["a", "k"]
    run_hold(sh.root, "leases", "rm", "keep")
    run_hold(sh.root, "gc")
    assert out(sh("ls", "-q")) == "a", "gc collects what only the removed lease kept"
    assert len(backend_objects(sh.root, sh.name)) == 1
