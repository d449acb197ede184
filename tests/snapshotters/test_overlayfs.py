"""overlayfs specifics: mount shapes, pasteable commands, the differ's upper dir, probing."""

from __future__ import annotations

import os
import subprocess

import pytest

from cargohold.errors import FailedPrecondition
from cargohold.mount import unmount
from cargohold.snapshotters import overlayfs
from cargohold.snapshotters.api import Kind
from cargohold.snapshotters.overlayfs import OverlayFS

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts need root")


@pytest.fixture
def sn(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the overlayfs probe mounts: needs root")
    s = OverlayFS(str(tmp_path / "o"), mount_options=["volatile"])
    yield s
    s.close()


def _chain(sn, n):
    parent = ""
    for i in range(n):
        sn.prepare(f"k{i}", parent)
        sn.commit(f"c{i}", f"k{i}")
        parent = f"c{i}"
    return parent


def test_mount_shapes(sn):
    [m] = sn.prepare("empty")
    assert (m.type, m.source, m.options) == ("bind", sn.fs_dir("1"), ("rbind", "rw"))
    [m] = sn.view("empty-view")
    assert m.type == "bind" and m.read_only
    _chain(sn, 2)  # c0 = id 3, c1 = id 4
    [m] = sn.view("v1", "c0")
    assert (m.type, m.source, m.options) == ("bind", sn.fs_dir("3"), ("rbind", "ro"))
    [m] = sn.view("v2", "c1")
    assert m.type == "overlay" and m.read_only
    assert m.options[-1] == f"lowerdir={sn.fs_dir('4')}:{sn.fs_dir('3')}"
    assert "volatile" in m.options
    [m] = sn.prepare("a", "c1")
    opts = [o.split("=")[0] for o in m.options]
    assert opts[-3:] == ["workdir", "upperdir", "lowerdir"]
    if os.path.exists(overlayfs.INDEX_PARAM):
        assert "index=off" in m.options
    for o in m.options:
        if "=" in o and o.split("=")[0] in ("workdir", "upperdir", "lowerdir"):
            assert all(os.path.isabs(p) for p in o.split("=", 1)[1].split(":"))


def test_printed_mount_command_pastes_into_a_shell(sn, tmp_path):
    _chain(sn, 3)
    [m] = sn.prepare("a", "c2")
    target = tmp_path / "t"
    target.mkdir()
    subprocess.run(m.command(str(target)), shell=True, check=True, cwd="/")
    try:
        (target / "hello").write_text("hi")
        assert os.path.exists(os.path.join(sn.upper_dir("a"), "hello"))
    finally:
        unmount(str(target))


def test_differ_writes_into_the_upper_dir_without_mounting(sn, tmp_path):
    _chain(sn, 2)
    sn.prepare("a", "c1")
    up = sn.upper_dir("a")
    with open(os.path.join(up, "layer-file"), "w") as f:
        f.write("applied")
    assert sn.lower_dirs("a") == [sn.fs_dir("2"), sn.fs_dir("1")]
    sn.commit("c2", "a")
    assert sn.upper_dir("c2") == up
    assert sn.usage("c2").inodes == 1
    sn.view("v", "c2")
    with pytest.raises(FailedPrecondition):
        sn.upper_dir("v")


@needs_root
def test_probe_reports_d_type_and_caches(tmp_path):
    assert overlayfs.supports_d_type(str(tmp_path))
    assert overlayfs.probe(str(tmp_path / "not" / "yet")) == ""


def test_from_config_passes_mount_options(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the overlayfs probe mounts: needs root")
    s = OverlayFS.from_config(str(tmp_path / "o"), {"mount_options": ["metacopy=off"]})
    assert "metacopy=off" in s.mount_options
    s.prepare("k")
    assert s.stat("k").kind == Kind.ACTIVE
    s.close()


def test_a_passed_probe_is_remembered_for_the_next_process(tmp_path):
    """The trial mount runs once per kernel and filesystem, not in every command."""
    import sys

    root = str(tmp_path / "ov")
    OverlayFS(root).close()
    stamp = open(os.path.join(root, overlayfs.PROBED)).read()
    assert stamp == f"{os.uname().release} {os.stat(root).st_dev}"
    code = ("import sys; from cargohold.snapshotters import overlayfs as o\n"
            "o._trial_mount = lambda d, r: sys.exit('probed again')\n"
            f"o.OverlayFS({root!r}).close()\n")
    subprocess.run([sys.executable, "-c", code], check=True)  # no second trial mount
    # Another kernel (or filesystem) has another stamp: probe again.
    with open(os.path.join(root, overlayfs.PROBED), "w") as f:
        f.write("0.0.0-other 1")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode != 0 and "probed again" in p.stderr
