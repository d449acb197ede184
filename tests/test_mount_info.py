"""mount.info.MountUsers: which mounts use a directory, relative overlay layers included."""

from __future__ import annotations

from cargohold.mount.info import MountEntry, MountUsers


def _overlay(target: str, source: str, lowers: str) -> MountEntry:
    return MountEntry(target=target, root="/", dev="0:99", fstype="overlay", source=source,
                      options=("rw", f"lowerdir={lowers}", "upperdir=/u/fs", "workdir=/u/w"))


def test_relative_lowers_resolve_against_a_directory_source_only():
    users = MountUsers([_overlay("/mnt/a", "/rootA/snaps", "1/fs:2/fs")])
    bases = ("/rootA/snaps", "/rootB/snaps")
    assert users.targets("/rootA/snaps/1", bases) == ["/mnt/a"]
    assert users.targets("/rootA/snaps/2", bases) == ["/mnt/a"]
    assert users.targets("/rootB/snaps/1", ("/rootB/snaps",)) == []
    assert users.targets("/rootA/snaps/3", bases) == []


def test_relative_lowers_of_an_unknown_origin_count_for_every_base():
    """A mount made by hand after some `cd`, its source a word: when in doubt, in use."""
    users = MountUsers([_overlay("/mnt/a", "overlay", "1/fs")])
    assert users.targets("/rootA/snaps/1", ("/rootA/snaps",)) == ["/mnt/a"]
    assert users.targets("/rootB/snaps/1", ("/rootB/snaps",)) == ["/mnt/a"]
    assert users.targets("/rootB/snaps/2", ("/rootB/snaps",)) == []


def test_absolute_layers_need_no_base():
    users = MountUsers([_overlay("/mnt/a", "overlay", "/rootA/snaps/1/fs")])
    assert users.targets("/rootA/snaps/1") == ["/mnt/a"]
    assert users.targets("/u") == ["/mnt/a"]  # the upper directory too
