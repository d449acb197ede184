"""native specifics: what a copy keeps, and that it works without privileges."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import unittest

import pytest

from cargohold.snapshotters import testing
from cargohold.snapshotters.native import Native, copy_tree


def test_copy_keeps_everything_a_layer_carries(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"data" * 1000)
    os.chmod(src / "d" / "f", 0o4755)
    os.link(src / "d" / "f", src / "hard")
    os.symlink("d/f", src / "link")
    os.mkfifo(src / "fifo")
    os.setxattr(src / "d" / "f", "user.k", b"v")
    os.setxattr(src / "d", "trusted.overlay.opaque", b"y")
    os.utime(src / "d" / "f", ns=(1_000_000_000, 2_000_000_000))
    if os.geteuid() == 0:
        os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.chown(src / "d" / "f", 1000, 1000, follow_symlinks=False)
        os.chmod(src / "d" / "f", 0o4755)  # chown cleared setuid
    os.chmod(src / "d", 0o710)
    dst = str(tmp_path / "dst")
    copy_tree(str(src), dst)
    f = os.lstat(os.path.join(dst, "d", "f"))
    assert stat.S_IMODE(f.st_mode) == 0o4755 and f.st_mtime_ns == 2_000_000_000
    assert os.lstat(os.path.join(dst, "hard")).st_ino == f.st_ino
    assert os.readlink(os.path.join(dst, "link")) == "d/f"
    assert stat.S_ISFIFO(os.lstat(os.path.join(dst, "fifo")).st_mode)
    assert os.getxattr(os.path.join(dst, "d", "f"), "user.k") == b"v"
    assert stat.S_IMODE(os.stat(os.path.join(dst, "d")).st_mode) == 0o710
    with open(os.path.join(dst, "d", "f"), "rb") as fh:
        assert fh.read() == b"data" * 1000
    if os.geteuid() == 0:
        assert (f.st_uid, f.st_gid) == (1000, 1000)
        assert os.getxattr(os.path.join(dst, "d"), "trusted.overlay.opaque") == b"y"
        assert os.lstat(os.path.join(dst, "null")).st_rdev == os.makedev(1, 3)


UNPRIVILEGED = ["lifecycle", "kinds", "parent_rules", "remove", "commit_retires_key",
                "labels_and_update", "walk_filters", "concurrent_prepare",
                "crash_after_prepare"]


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")
def test_native_works_unprivileged(tmp_path_factory):
    # import everything lmdb loads lazily while we can still read root's site-packages
    Native(str(tmp_path_factory.mktemp("warm"))).close()
    # pytest's tmp_path sits under a 0700 directory of root's: use one nobody can reach
    tmp = tempfile.mkdtemp(prefix="cargohold-unpriv-")
    os.chown(tmp, 65534, 65534)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops to nobody and runs the checks that need no mounts
        out = b"ok"
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            for name in UNPRIVILEGED:
                d = os.path.join(tmp, name)
                os.mkdir(d)
                try:
                    testing.ALL_CHECKS[name](Native, d)
                except unittest.SkipTest:
                    pass
        except BaseException as exc:
            out = f"{name}: {type(exc).__name__}: {exc}".encode()
        finally:
            os.write(w, out)
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read().decode()
    os.waitpid(pid, 0)
    shutil.rmtree(tmp)
    assert got == "ok", got
