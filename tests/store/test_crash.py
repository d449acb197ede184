"""Crash tests with real processes: kill -9 mid-ingest, and one commit step broken at a time.

After every crash the store is reopened and must hold: no blob under a digest it does not
hash to, no writable blob, and an ingest that either resumes to the right digest or was
already committed whole.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from cargohold.errors import NotFound
from cargohold.store.local import LocalStore

from .store_helpers import assert_blobs_verify, file_digest, finish_ingest, run, spawn

MiB = 1 << 20


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "big.bin"
    with open(path, "wb") as f:
        for _ in range(96):
            f.write(os.urandom(MiB))
    return str(path)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "small.bin"
    path.write_bytes(os.urandom(3 * MiB + 17))
    return str(path)


def test_kill9_mid_ingest_then_resume(tmp_path, big):
    root = str(tmp_path / "content")
    child = spawn("ingest-pause", root, "layer", big, str(40 * MiB))
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    store = LocalStore(root)
    st = store.status("layer")
    # What reached the file survives; only the last unflushed buffer can be lost.
    assert 30 * MiB <= st.offset <= 40 * MiB, st
    assert st.holder == "", "the kernel drops a dead holder's lock"
    w = store.writer("layer")
    assert w.status().offset == st.offset
    w.close()
    assert finish_ingest(store, "layer", big) == file_digest(big)
    assert assert_blobs_verify(store) == [file_digest(big)]
    assert store.ingest_refs() == []


@pytest.mark.parametrize("kill_at", [1 * MiB, 24 * MiB, 80 * MiB])
def test_kill9_at_a_random_moment(tmp_path, big, kill_at):
    root = str(tmp_path / "content")
    child = spawn("ingest", root, "layer", big)
    store = LocalStore(root)
    deadline = time.monotonic() + 20
    try:
        while child.poll() is None and time.monotonic() < deadline:
            try:
                if store.status("layer").offset >= kill_at:
                    break
            except NotFound:
                pass
            time.sleep(0.001)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert_blobs_verify(store)
    # Either it finished before the kill, or it resumes from wherever it stopped.
    assert finish_ingest(store, "layer", big) == file_digest(big)
    assert assert_blobs_verify(store) == [file_digest(big)]
    assert store.ingest_refs() == []


# A crash (os._exit, as abrupt as kill -9 for the store) or an I/O error at one commit step.
# "committed": the blob is in place whole; "resumable": it is not, and the ingest resumes.
CRASH_STEPS = [
    ("before-rename", 137, "resumable"),
    ("after-rename", 137, "committed"),
    ("after-dir-fsync", 137, "committed"),
    ("mid-ingest-removal", 137, "committed"),
    ("after-ingest-removal", 137, "committed"),
    ("rename-fails", 3, "resumable"),
    ("dir-fsync-fails", 3, "committed"),
]


@pytest.mark.parametrize(("step", "code", "outcome"), CRASH_STEPS, ids=[s[0] for s in CRASH_STEPS])
def test_crash_during_commit(tmp_path, small, step, code, outcome):
    root = str(tmp_path / "content")
    p = run("commit-crash", root, "layer", small, step)
    assert p.returncode == code, p.stderr
    if code == 3:
        # The injected EIO, in the words the store translates it to.
        assert "FailedPrecondition" in p.stderr and "I/O error" in p.stderr, p.stderr
    store = LocalStore(root)
    digest = file_digest(small)
    blobs = assert_blobs_verify(store)
    if outcome == "committed":
        assert blobs == [digest]
    else:
        assert blobs == []
        assert store.status("layer").offset == os.path.getsize(small)
        assert store.status("layer").holder == ""
    # Whatever is left over, the ingest finishes (or is already done) and nothing is doubled.
    assert finish_ingest(store, "layer", small) == digest
    assert assert_blobs_verify(store) == [digest]
    for ref in store.ingest_refs():  # leftovers GC would abort
        store.abort(ref)
    assert store.list_statuses() == []
