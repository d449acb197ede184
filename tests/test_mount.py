"""Mounting Mount lists: binds, read-only remounts, temp mounts, and long overlay chains
through the new mount API and through the relative-lowerdir fallback.
"""

from __future__ import annotations

import errno
import os

import pytest

from cargohold.mount import (
    MountError,
    is_mountpoint,
    mount,
    parse_options,
    read_only,
    temp_mount,
    unmount,
    unmount_all,
)
from cargohold.mount import overlay as overlaymount
from cargohold.types import Mount

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


def test_parse_options_splits_flags_from_data():
    flags, data = parse_options(["ro", "nosuid", "lowerdir=/a", "index=off", "rw"])
    assert flags == 0x2 and data == "lowerdir=/a,index=off"


def test_read_only_folds_the_upper_into_the_lowers():
    m = Mount("overlay", "overlay", ("index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l"))
    assert read_only(m).options == ("index=off", "lowerdir=/u:/l")
    assert read_only(Mount("bind", "/x", ("rbind", "rw"))).options == ("rbind", "ro")


def test_compact_options_rewrites_lowers_relative_to_their_common_dir():
    common, data = overlaymount.compact_options(
        ["index=off", "upperdir=/r/s/9/fs", "lowerdir=/r/s/2/fs:/r/s/1/fs"])
    assert common == "/r/s"
    assert data == "index=off,upperdir=/r/s/9/fs,lowerdir=2/fs:1/fs"
    assert overlaymount.compact_options(["lowerdir=/a/x:/b/y"]) == ("", "")


def test_unmount_of_something_not_mounted_is_done(tmp_path):
    unmount(str(tmp_path))
    unmount(str(tmp_path / "missing"))
    assert not is_mountpoint(str(tmp_path))


@needs_root
def test_read_only_bind_is_read_only_for_real(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    mount(Mount("bind", str(src), ("rbind", "ro")), str(dst))
    try:
        assert is_mountpoint(str(dst))
        with pytest.raises(OSError) as ei:
            (dst / "f").write_text("x")
        assert ei.value.errno == errno.EROFS
    finally:
        unmount_all(str(dst))
    assert not is_mountpoint(str(dst))


@needs_root
def test_temp_mount_cleans_up(tmp_path):
    (tmp_path / "f").write_text("x")
    with temp_mount([Mount("bind", str(tmp_path), ("rbind",))], readonly=True) as d:
        assert os.listdir(d) == ["f"]
        kept = d
    assert not os.path.exists(kept)


def _layers(tmp_path, n):
    base = tmp_path / "snapshots"
    lowers = []
    for i in range(n):
        d = base / f"{i}" / "fs"
        d.mkdir(parents=True)
        lowers.append(str(d))
    (base / "0" / "fs" / "bottom").write_text("deep")
    return list(reversed(lowers))  # nearest first: the bottom layer last


@needs_root
@pytest.mark.parametrize("new_api", [True, False], ids=["fsconfig", "relative-fallback"])
def test_200_lower_overlay_mounts(tmp_path, monkeypatch, new_api):
    if new_api and not overlaymount.has_new_api():
        pytest.skip("kernel lacks fsconfig lowerdir+ (Linux 6.8+)")
    monkeypatch.setattr(overlaymount, "has_new_api", lambda: new_api)
    lowers = _layers(tmp_path, 200)
    m = Mount("overlay", "overlay", ("lowerdir=" + ":".join(lowers),))
    assert len(m.options[0]) > overlaymount.PAGE_LIMIT
    target = tmp_path / "t"
    target.mkdir()
    cwd = os.getcwd()
    mount(m, str(target))
    try:
        assert (target / "bottom").read_text() == "deep"
        assert os.getcwd() == cwd, "the fallback moved this process's working directory"
    finally:
        unmount(str(target))


@needs_root
def test_fallback_refuses_what_cannot_fit_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(overlaymount, "has_new_api", lambda: False)
    a, b = tmp_path / ("a" * 200), tmp_path / ("b" * 200)
    lowers = []
    for i in range(12):
        for top in (a, b):
            d = top / f"{i:0200d}"
            d.mkdir(parents=True)
            lowers.append(str(d))
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(MountError, match="more than one page") as ei:
        mount(Mount("overlay", "overlay", ("lowerdir=" + ":".join(lowers),)), str(target))
    assert "lowerdir+" in (ei.value.hint or "")
