"""_fsutil.remove_tree: a whole tree goes, and nothing a symlink inside it points at."""

from __future__ import annotations

import os

import pytest

from cargohold._fsutil import remove_tree


def _tree(base: str, outside: str) -> str:
    t = os.path.join(base, "t")
    os.makedirs(os.path.join(t, "a", "b", "c"))
    os.makedirs(os.path.join(outside, "keep"))
    with open(os.path.join(outside, "keep", "precious"), "w") as f:
        f.write("x")
    with open(os.path.join(t, "a", "b", "c", "f"), "w") as f:
        f.write("y")
    os.chmod(os.path.join(t, "a", "b", "c", "f"), 0o444)
    os.symlink(os.path.join(outside, "keep"), os.path.join(t, "a", "dirlink"))
    os.symlink(os.path.join(outside, "keep", "precious"), os.path.join(t, "filelink"))
    os.symlink("/nonexistent", os.path.join(t, "a", "b", "dangling"))
    os.mkfifo(os.path.join(t, "fifo"))
    os.makedirs(os.path.join(t, "empty", "deeper"))
    return t


def test_the_tree_goes_and_what_links_point_at_stays(tmp_path):
    outside = str(tmp_path / "outside")
    t = _tree(str(tmp_path), outside)
    remove_tree(t)
    assert not os.path.lexists(t)
    with open(os.path.join(outside, "keep", "precious")) as f:
        assert f.read() == "x"


def test_missing_and_ignored_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        remove_tree(str(tmp_path / "nope"))
    remove_tree(str(tmp_path / "nope"), ignore_errors=True)
    f = tmp_path / "file"
    f.write_text("z")
    with pytest.raises(NotADirectoryError):
        remove_tree(str(f))
    remove_tree(str(f), ignore_errors=True)
    assert f.exists()  # not a tree: left alone
