"""Long overlay chains from the command line: a 200-layer chain's printed mount command pastes
(the absolute form ctr prints is 13 KB of options, past mount(2)'s one page: it fails, or the
kernel silently stacks only the first page's worth of layers), GC sees the pasted mount, and
`hold snapshots mount` mounts and records it (a GC pin) until `hold snapshots unmount`. Real
overlay mounts, real `hold`, real sh.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess

import pytest
from tests.conftest import run_hold
from tests.peers import open_client

from cargohold.mount import is_mountpoint, unmount_all

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="real overlay mounts need root")
DEPTH = 200
SN = "overlayfs"


def build_chain(root: str, depth: int = DEPTH, *, lease: str | None = None) -> None:
    """Committed l0 <- l1 <- ... <- l<depth-1>, with layer0.txt in the bottom layer and
    layer<depth-1>.txt in the top, made in-process (library calls, no GC-root labels: only
    a lease or a mount keeps them)."""
    c = open_client(root)
    try:
        if lease:
            c.lease = lease
        sn = c.snapshotter()
        parent = ""
        for i in range(depth):
            m = sn.prepare(f"a{i}", parent)[0]
            upper = m.source if m.type == "bind" else next(
                o[len("upperdir="):] for o in m.options if o.startswith("upperdir="))
            if i in (0, depth - 1):
                with open(os.path.join(upper, f"layer{i}.txt"), "w") as f:
                    f.write(f"{i}\n")
            sn.commit(f"l{i}", f"a{i}")
            parent = f"l{i}"
    finally:
        c.close()


def paste(text: str, target: str) -> None:
    """Run what hold printed, as a user pasting it (TARGET filled in) would, from /."""
    for line in text.strip().splitlines():
        subprocess.run(["sh", "-c", line.replace("TARGET", shlex.quote(target))], check=True,
                       cwd="/")


def keys(root: str) -> set[str]:
    return set(run_hold(root, "snapshots", "ls", "-q").stdout.decode().split())


def test_a_200_layer_view_prints_a_command_that_pastes_and_gc_sees_it(root, mnt):
    build_chain(root)
    top = f"l{DEPTH - 1}"
    run_hold(root, "snapshots", "view", "v", top)  # a GC root, as ctr's
    # What ctr prints (absolute lowerdirs) is past the page mount(8) can pass the kernel.
    c = open_client(root)
    try:
        [m] = c.snapshotter().mounts("v")
    finally:
        c.close()
    assert len(m.command("TARGET")) > 4096
    # Pasted, it fails, or (this kernel) mount(2) keeps the first page of the options and
    # stacks a truncated chain whose last "layer" is a cut path: the bottom layers are gone.
    ctr_form = mnt("ctr-form")
    p = subprocess.run(["sh", "-c", m.command(ctr_form)], capture_output=True)
    if p.returncode == 0:
        assert not os.path.exists(os.path.join(ctr_form, "layer0.txt"))
        unmount_all(ctr_form)

    out = run_hold(root, "snapshots", "mounts", "TARGET", "v").stdout.decode()
    sdir = os.path.join(root, "snapshots", SN, "snapshots")
    assert out.startswith(f"(cd {sdir} && mount -t overlay -o ")
    # the source names the directory the lowers are relative to (mountinfo shows it)
    assert out.rstrip().endswith(f" {sdir} TARGET)") and len(out) < 4000
    assert "lowerdir=" in out and f"{sdir}/" not in out.split("&&", 1)[1]
    target = mnt()
    paste(out, target)
    assert is_mountpoint(target)
    with open(os.path.join(target, "layer0.txt")) as f:
        assert f.read() == "0\n"  # the bottom layer
    with open(os.path.join(target, f"layer{DEPTH - 1}.txt")) as f:
        assert f.read() == f"{DEPTH - 1}\n"  # the top layer
    with pytest.raises(OSError):
        open(os.path.join(target, "new"), "w")  # a view
    # The kernel shows the lowers relative; GC resolves them against the snapshots dir.
    why = run_hold(root, "gc", "--why", f"snapshot/{SN}/l0").stdout.decode()
    assert f"mounted at {target}" in why, why
    dry = json.loads(run_hold(root, "gc", "--dry-run", "--format", "json").stdout)
    assert [r for r in dry["removed"] if "snapshot" in r["kind"]] == []
    # ... and only there: another root's snapshots with the same ids are not in use.
    other = os.path.join(os.path.dirname(root), "other-root")
    run_hold(other, "snapshots", "prepare", "w")
    assert "mounted at" not in run_hold(other, "gc", "--why", f"snapshot/{SN}/w").stdout.decode()
    run_hold(other, "snapshots", "rm", "w")  # no --force needed: nothing mounts it
    # The same with a real target given to `mounts`: made absolute, pasted from anywhere.
    t2 = mnt("again")
    out2 = run_hold(root, "snapshots", "mounts", os.path.relpath(t2), "v").stdout.decode()
    assert out2.rstrip().endswith(f" {t2})")
    subprocess.run(["sh", "-c", out2], check=True, cwd="/")
    assert os.path.exists(os.path.join(t2, "layer0.txt"))
    run_hold(root, "snapshots", "unmount", t2)
    run_hold(root, "snapshots", "unmount", target)
    assert not is_mountpoint(target)
    # Unmounted, only the view's GC-root label keeps the chain.
    run_hold(root, "snapshots", "rm", "v")
    run_hold(root, "gc")
    assert keys(root) == set()


def test_a_200_layer_active_snapshot_pastes_writable(root, mnt):
    build_chain(root)
    out = run_hold(root, "snapshots", "prepare", "w", f"l{DEPTH - 1}").stdout.decode()
    assert out.startswith("(cd ") and "upperdir=" in out and "workdir=" in out
    target = mnt()
    paste(out, target)
    with open(os.path.join(target, "new.txt"), "w") as f:
        f.write("written\n")
    assert os.path.exists(os.path.join(target, "layer0.txt"))
    run_hold(root, "snapshots", "unmount", target)
    run_hold(root, "snapshots", "commit", "w2", "w")
    out = run_hold(root, "snapshots", "view", "v2", "w2").stdout.decode()
    paste(out, target)
    with open(os.path.join(target, "new.txt")) as f:
        assert f.read() == "written\n"
    run_hold(root, "snapshots", "unmount", target)


def test_short_chains_still_print_ctr_s_absolute_command(root, mnt):
    build_chain(root, 3)
    out = run_hold(root, "snapshots", "view", "v", "l2").stdout.decode().strip()
    assert out.startswith("mount -t overlay -o ") and out.endswith(" overlay TARGET")
    assert os.path.join(root, "snapshots", SN, "snapshots") + "/" in out
    target = mnt()
    paste(out, target)
    assert os.path.exists(os.path.join(target, "layer2.txt"))
    run_hold(root, "snapshots", "unmount", target)
    # --target mounts it directly, as before.
    t2 = mnt("direct")
    assert run_hold(root, "snapshots", "view", "--target", t2, "v3", "l2").stdout.decode(
    ).strip() == t2
    assert os.path.exists(os.path.join(t2, "layer0.txt"))
    run_hold(root, "snapshots", "unmount", t2)


def _records(root: str) -> list[dict]:
    d = os.path.join(root, "_state", "mounts")
    out = []
    for n in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        with open(os.path.join(d, n)) as f:
            out.append(json.load(f))
    return out


def test_snapshots_mount_records_pins_and_unmount_drops(root, mnt):
    run_hold(root, "leases", "create", "--id", "L")
    build_chain(root, lease="L")
    run_hold(root, "--lease", "L", "snapshots", "prepare", "top", f"l{DEPTH - 1}")
    target = mnt()
    assert run_hold(root, "snapshots", "mount", target, "top").stdout.decode().strip() == target
    assert is_mountpoint(target)
    with open(os.path.join(target, "layer0.txt")) as f:
        assert f.read() == "0\n"
    with open(os.path.join(target, "mine.txt"), "w") as f:
        f.write("mine\n")  # active: writable
    [rec] = _records(root)
    assert rec["kind"] == "snapshot" and rec["snapshot"] == "top" and rec["target"] == target
    assert rec["snapshotter"] == SN and rec["namespace"] == "default" and rec["rw"] is True
    assert rec["mounted"] is True and rec["lease"] == "" and rec["image"] == ""
    listed = json.loads(run_hold(root, "images", "mounts", "--format", "json").stdout)
    assert [(m["target"], m["state"]) for m in listed] == [(target, "mounted")]

    run_hold(root, "leases", "rm", "L")  # nothing but the mount keeps the chain now
    gc = json.loads(run_hold(root, "gc", "--format", "json").stdout)
    assert [r for r in gc["removed"] if "snapshot" in r["kind"]] == []
    assert keys(root) == {"top", *(f"l{i}" for i in range(DEPTH))}
    why = run_hold(root, "gc", "--why", f"snapshot/{SN}/top").stdout.decode()
    assert f"mounted at {target}" in why, why

    # The record alone is a pin: with the kernel mount gone behind hold's back, GC still
    # keeps the snapshot, and `images mounts` says the record is stale.
    unmount_all(target)
    run_hold(root, "gc")
    assert "top" in keys(root)
    [st] = json.loads(run_hold(root, "images", "mounts", "--format", "json").stdout)
    assert st["state"] == "stale: not mounted"

    # A second mount on a mounted target is refused; `images unmount` leaves it alone.
    run_hold(root, "snapshots", "mount", target, "top")
    p = run_hold(root, "snapshots", "mount", target, "top", check=False)
    assert p.returncode == 1 and b"something is mounted there already" in p.stderr
    p = run_hold(root, "images", "unmount", target, check=False)
    assert p.returncode == 1 and b"hold snapshots unmount" in p.stderr
    assert is_mountpoint(target) and "top" in keys(root)

    assert run_hold(root, "snapshots", "unmount", target).stdout.decode().strip() == target
    assert not is_mountpoint(target) and _records(root) == []
    run_hold(root, "snapshots", "unmount", target)  # a repeat is fine
    run_hold(root, "gc")
    assert keys(root) == set(), "unmounted and unleased, the chain is garbage"


def test_snapshots_unmount_refuses_an_image_mount(root, mnt, tmp_path):
    d = tmp_path / "tree"
    d.mkdir()
    (d / "f").write_text("x\n")
    run_hold(root, "images", "pack", str(d), "example.com/m:1")
    target = mnt()
    run_hold(root, "images", "mount", "example.com/m:1", target)
    p = run_hold(root, "snapshots", "unmount", target, check=False)
    assert p.returncode == 1 and b"hold images unmount" in p.stderr
    assert is_mountpoint(target)
    run_hold(root, "images", "unmount", target)
    assert not is_mountpoint(target) and _records(root) == []
