"""The space reserve and the LMDB replay that uses it, on a real full tmpfs.

The database is compacted before the disk fills, so LMDB has no free page to reuse and every
commit must extend ``data.mdb``: a removal then succeeds only through the reserve.
"""

from __future__ import annotations

import os
import subprocess
import sys

import lmdb
import pytest

from cargohold import _lmdb, _reserve
from cargohold._oserror import NoSpace
from cargohold.errors import Unavailable
from tests.diskkit import MIB, fill, space, tmpfs


def _compacted_env(fs: str, n: int) -> str:
    """A database of ``n`` 200-byte records with no free pages, in ``fs/db``."""
    build, path = os.path.join(fs, "build"), os.path.join(fs, "db")
    env = lmdb.open(build, map_size=1 << 30)
    with env.begin(write=True) as txn:
        for i in range(n):
            txn.put(b"rec/%08d" % (i * 7919 % n), os.urandom(200))
    os.mkdir(path)
    env.copy(path, compact=True)
    env.close()
    for name in os.listdir(build):
        os.unlink(os.path.join(build, name))
    os.rmdir(build)
    return path


@pytest.fixture
def full(tmp_path):
    """(fs, db path, registered reserve of 4 MiB in 1 MiB chunks) on a full 24 MiB tmpfs."""
    with tmpfs(str(tmp_path / "fs"), "24m") as fs:
        path = _compacted_env(fs, 20000)
        res = _reserve.Reserve(fs, size=4 * MIB, chunk=1 * MIB)
        assert res.ensure() and res.allocated() == 4 * MIB
        _reserve.register(res)
        try:
            yield fs, path, res
        finally:
            _reserve.unregister(res)


@pytest.fixture
def filled(full):
    """``full``'s (fs, db path, reserve) and the database opened as an ``_lmdb.Env``, with
    the tmpfs then filled to the last byte; the Env is closed after the test."""
    fs, path, res = full
    env = _lmdb.Env(path)
    try:
        fill(fs)
        yield fs, path, res, env
    finally:
        env.close()


def test_a_removal_on_a_full_disk_uses_one_chunk_and_commits(filled):
    fs, path, res, env = filled
    with env.update() as tx:  # every 200th record: 100 pages all over the tree
        for i in range(0, 20000, 200):
            assert tx.delete(b"rec/%08d" % i)
    assert res.allocated() == 3 * MIB, "one chunk given back"
    with env.view() as tx:
        assert tx.get(b"rec/%08d" % 0) is None and tx.get(b"rec/%08d" % 1) is not None
        assert sum(1 for _ in tx.scan(b"rec/")) == 19900


def test_a_larger_removal_takes_as_many_chunks_as_it_needs(filled):
    fs, path, res, env = filled
    with env.update() as tx:  # every 40th record: 500 pages, more than one chunk
        for i in range(0, 20000, 40):
            tx.delete(b"rec/%08d" % i)
    assert res.allocated() <= 2 * MIB
    with env.view() as tx:
        assert sum(1 for _ in tx.scan(b"rec/")) == 19500


def test_a_write_that_grows_never_takes_the_reserve(filled):
    fs, path, res, env = filled
    with pytest.raises(NoSpace, match=f"no space left on filesystem {fs} ") as ei:
        with env.update() as tx:
            for i in range(2000):
                tx.put(b"new/%08d" % i, os.urandom(200))
    assert "hold gc" in ei.value.hint
    assert res.allocated() == 4 * MIB
    with env.view() as tx:
        assert tx.get(b"new/%08d" % 0) is None


def test_a_commit_between_release_and_replay_makes_it_say_run_again(filled, monkeypatch):
    fs, path, res, env = filled
    real = _reserve.release_for

    def release_then_someone_writes(p: str) -> int:
        n = real(p)
        code = (f"import lmdb; e = lmdb.open({path!r}, map_size=1 << 30)\n"
                "with e.begin(write=True) as t: t.delete(b'rec/00000001')\n")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        return n

    monkeypatch.setattr(_reserve, "release_for", release_then_someone_writes)
    with pytest.raises(Unavailable, match="another process wrote while this removal"):
        with env.update() as tx:
            for i in range(0, 20000, 200):
                tx.delete(b"rec/%08d" % i)
    with env.view() as tx:  # the other process's write, and none of ours
        assert tx.get(b"rec/%08d" % 1) is None and tx.get(b"rec/%08d" % 0) is not None


def test_ensure_makes_and_tops_up_only_with_room_to_spare(tmp_path):
    with tmpfs(str(tmp_path / "fs"), "16m") as fs:
        res = _reserve.Reserve(fs, size=4 * MIB, chunk=1 * MIB)
        filler = fill(fs)
        assert not res.ensure() and res.allocated() == 0, "a full disk gets no reserve"
        os.truncate(filler, os.path.getsize(filler) - 6 * MIB)
        assert not res.ensure(), "making it would leave less than its size free"
        os.truncate(filler, os.path.getsize(filler) - 2 * MIB)
        assert res.ensure() and res.allocated() == 4 * MIB
        assert res.release() == 1 * MIB and res.allocated() == 3 * MIB
        before = space(fs)
        assert res.ensure() and res.allocated() == 4 * MIB and space(fs) == before - MIB
        for _ in range(4):
            res.release()
        assert not os.path.exists(res.path) and res.release() == 0
        assert res.released == 5 * MIB
