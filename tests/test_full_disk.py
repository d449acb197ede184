"""A 100 % full filesystem: every command that frees space works on it, and an import that runs
out of space says where, how much and what was free, and leaves nothing behind.

Each case mounts a real 64 MiB tmpfs, imports real archives with the real ``hold`` child
process, fills the filesystem to the last byte with a filler file, and runs the commands. Each
command meets a 100 % full disk (the filesystem is filled again before every command); the test
asserts it succeeds, that the space it should free is free (statvfs, counting the part of the
space reserve it used), and that ``hold fsck`` is clean afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.conftest import run_hold
from tests.diskkit import MIB, blobs_of, fill, make_archive, space, tmpfs

A, B = "example.com/full/a:1", "example.com/full/b:1"


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    d = tmp_path_factory.mktemp("full-disk-archives")
    out = {"a": make_archive(str(d / "a.tar"), 8, A, seed="a"),
           "b": make_archive(str(d / "b.tar"), 8, B, seed="b"),
           "big": make_archive(str(d / "big.tar"), 40, "example.com/full/big:1"),
           "c": make_archive(str(d / "c.tar"), 24, "example.com/full/c:1")}
    return out


class Disk:
    """A root on a tmpfs, the ``hold`` that runs on it, and its filler files."""

    def __init__(self, fs: str) -> None:
        self.fs = fs
        self.root = os.path.join(fs, "root")
        self.fillers: list[str] = []

    def hold(self, *args: str, check: bool = True):  # noqa: ANN201
        p = run_hold(self.root, *args, check=False)
        err = p.stderr.decode()
        assert "internal error" not in err and "Traceback" not in err, err
        if check:
            assert p.returncode == 0, f"hold {' '.join(args)} ({p.returncode}):\n{err}"
        return p

    def fill(self) -> None:
        self.fillers.append(fill(self.fs, f"filler{len(self.fillers)}"))

    def unfill(self) -> None:
        for f in self.fillers:
            os.unlink(f)
        self.fillers.clear()

    def reserve(self) -> int:
        try:
            return os.stat(os.path.join(self.root, "reserve")).st_blocks * 512
        except FileNotFoundError:
            return 0

    def available(self) -> int:
        """Free space plus what the reserve holds: what hold can give to the user."""
        return space(self.fs) + self.reserve()

    def blob_files(self) -> set[str]:
        d = os.path.join(self.root, "content", "blobs", "sha256")
        return {"sha256:" + n for n in os.listdir(d)} if os.path.isdir(d) else set()

    def snapshot_dirs(self) -> set[str]:
        d = os.path.join(self.root, "snapshots", "overlayfs", "snapshots")
        return set(os.listdir(d)) if os.path.isdir(d) else set()


@pytest.fixture
def disk(tmp_path):
    with tmpfs(str(tmp_path / "fs"), "64m") as fs:
        yield Disk(fs)


def chain_of(archive: str) -> str:
    """The snapshot key of a one-layer image: its layer's diffID, the layer digest here."""
    import tarfile

    with tarfile.open(archive) as t:
        sizes = {m.name.rsplit("/", 1)[1]: m.size for m in t.getmembers()
                 if m.name.startswith("blobs/")}
    return "sha256:" + max(sizes, key=sizes.get)


# Each case: the setup run before the disk fills, then the commands run each on a full disk,
# and the space (MiB) they must free together.
CASES = {
    "gc --dry-run": ([["images", "import", "{a}"], ["images", "import", "{b}"],
                      ["images", "rm", A]],
                     [["gc", "--dry-run", "--format", "json"]], 0),
    "fsck": ([["images", "import", "{a}"], ["images", "import", "{b}"]], [["fsck"]], 0),
    "fsck --repair": ([["images", "import", "{a}"], ["images", "import", "{b}"],
                       ["images", "rm", A], ["content", "rm", "{a_blobs}"]],
                      [["fsck", "--repair"]], 8),
    "images rm": ([["images", "import", "{a}"], ["images", "import", "{b}"]],
                  [["images", "rm", A], ["gc"]], 16),
    "content rm": ([["images", "import", "{a}"], ["images", "import", "{b}"],
                    ["images", "rm", A]],
                   [["content", "rm", "{a_blobs}"], ["gc"]], 16),
    "snapshots rm": ([["images", "import", "{a}"], ["images", "import", "{b}"]],
                     [["snapshots", "rm", "{a_chain}"]], 8),
    "leases rm": ([["leases", "create", "--id", "keep"],
                   ["--lease", "keep", "images", "import", "{a}"], ["images", "import", "{b}"],
                   ["images", "rm", A]],
                  [["leases", "rm", "--sync", "keep"]], 16),
    "gc": ([["images", "import", "{a}"], ["images", "import", "{b}"], ["images", "rm", A]],
           [["gc"]], 16),
}


def _expand(cmd: list[str], archives: dict) -> list[str]:
    subst = {"{a}": [archives["a"]], "{b}": [archives["b"]], "{a_blobs}": blobs_of(archives["a"]),
             "{a_chain}": [chain_of(archives["a"])]}
    out: list[str] = []
    for c in cmd:
        out.extend(subst.get(c, [c]))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_removal_works_on_a_full_disk(disk, archives, case):
    setup, commands, must_free = CASES[case]
    for cmd in setup:
        disk.hold(*_expand(cmd, archives))
    assert disk.reserve() > 0, "a writable root keeps a space reserve"
    a_blobs = set(blobs_of(archives["a"]))
    freed = 0
    outputs = []
    for cmd in commands:
        disk.fill()
        assert space(disk.fs) == 0
        before = disk.available()
        p = disk.hold(*_expand(cmd, archives))
        outputs.append(p.stdout.decode())
        freed += disk.available() - before
    print(f"\n[full disk] {case}: freed {freed} bytes ({freed / MIB:.1f} MiB); "
          f"reserve now {disk.reserve()} bytes")
    assert freed >= must_free * MIB, f"{case} freed only {freed} bytes"
    if must_free:
        assert not (a_blobs & disk.blob_files()) or case == "snapshots rm"
    if case == "gc --dry-run":
        plan = json.loads(outputs[0])
        gone = {r["key"] for r in plan["removed"] if r["kind"] == "blob-file"}
        assert a_blobs <= gone and plan["bytes_freed"] >= 8 * MIB
        assert a_blobs <= disk.blob_files(), "a dry run removes nothing"
    if case == "fsck":
        assert "clean" in outputs[0]
    disk.unfill()
    p = disk.hold("fsck")
    assert "clean" in p.stdout.decode()
    # With the space back, the reserve is whole again at the next command that opens the root.
    disk.hold("images", "ls")
    assert disk.reserve() >= 8 * MIB


def _leftovers(disk: Disk, before: tuple[set, set]) -> tuple[set, set]:
    return disk.blob_files() - before[0], disk.snapshot_dirs() - before[1]


def _leave_free(disk: Disk, n: int) -> None:
    """Fill the disk, then give back ``n`` bytes."""
    disk.fill()
    f = disk.fillers[-1]
    os.truncate(f, os.path.getsize(f) - n)


def _assert_nothing_left(disk: Disk, before: tuple[set, set], name: str,
                         start_available: int) -> None:
    assert name not in disk.hold("images", "ls", "-q").stdout.decode()
    left = _leftovers(disk, before)
    p = disk.hold("fsck", check=False)
    if left != (set(), set()):
        # What is left must be garbage that fsck reports and GC collects.
        assert p.returncode == 1, (left, p.stdout.decode())
    disk.hold("gc")
    assert _leftovers(disk, before) == (set(), set())
    assert json.loads(disk.hold("content", "active", "--format", "json").stdout) == []
    assert "clean" in disk.hold("fsck").stdout.decode()
    assert disk.available() >= start_available - MIB


def _import_that_does_not_fit(disk: Disk, archives: dict, free: int, name: str
                              ) -> tuple[str, str, tuple[set, set], int]:
    """Import ``b``, leave ``free`` bytes, then import ``archives[name]``, which must fail
    for want of space: (its stderr, the first line, the files before it, the free space
    before it)."""
    disk.hold("images", "import", archives["b"])
    before = (disk.blob_files(), disk.snapshot_dirs())
    _leave_free(disk, free)
    start = disk.available()
    p = disk.hold("images", "import", archives[name], check=False)
    err = p.stderr.decode()
    assert p.returncode == 1, err
    first = err.splitlines()[0]
    assert f"no space left on filesystem {disk.fs} " in first, err
    return err, first, before, start


def test_import_that_does_not_fit_during_blob_copy(disk, archives):
    err, first, before, start = _import_that_does_not_fit(disk, archives, 20 * MIB, "big")
    # The blob being written (40 MiB of files plus tar headers) and what was free for it.
    m = re.search(r"needs ([\d.]+) MiB, ([\d.]+) MiB free", first)
    assert m and float(m.group(1)) >= 39.9 and 18.1 <= float(m.group(2)) <= 20.5, first
    assert err.splitlines()[1].startswith("hint: free space with 'hold images rm'")
    print(f"\n[full disk] blob copy: {first}")
    _assert_nothing_left(disk, before, "example.com/full/big:1", start)


def test_import_whose_blobs_fit_but_unpack_does_not(disk, archives):
    err, first, before, start = _import_that_does_not_fit(disk, archives, 30 * MIB, "c")
    assert "layer sha256:" in first and "entry 'data/f" in first, first
    m = re.search(r"needs at least ([\d.]+) MiB, ([\d.]+) MiB free when the layer started",
                  first)
    assert m and float(m.group(1)) >= 23.9 and float(m.group(2)) < 7.7, first
    print(f"\n[full disk] unpack: {first}")
    _assert_nothing_left(disk, before, "example.com/full/c:1", start)


def test_unmount_on_a_full_disk(disk, archives, tmp_path):
    """Marking a kept rw mount's record unmounted replaces it in place: it may use the
    reserve; then removing it frees the snapshot.
    """
    target = str(tmp_path / "target")
    disk.hold("images", "import", archives["a"])
    disk.hold("images", "mount", "--rw", A, target)
    try:
        with open(os.path.join(target, "written"), "wb") as f:
            f.write(os.urandom(2 * MIB))
        disk.fill()
        disk.hold("images", "unmount", target)
        mounts = disk.hold("images", "mounts").stdout.decode()
        assert "unmounted (snapshot kept)" in mounts, mounts
        disk.fill()
        before = disk.available()
        disk.hold("images", "unmount", "--rm", target)
        assert disk.available() - before >= 2 * MIB
        assert target not in disk.hold("images", "mounts").stdout.decode()
    finally:
        subprocess.run(["umount", "-l", target], capture_output=True, timeout=60)
    disk.unfill()
    assert "clean" in disk.hold("fsck").stdout.decode()
