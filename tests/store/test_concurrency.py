"""Several real processes on one store: concurrent ingests, and commit racing delete."""

from __future__ import annotations

import hashlib
import os

from cargohold.store.local import LocalStore

from .store_helpers import assert_blobs_verify, file_digest, spawn

MiB = 1 << 20


def _wait_all(children, timeout=60):
    outs = []
    for c in children:
        out, err = c.communicate(timeout=timeout)
        assert c.returncode == 0, f"child failed ({c.returncode}):\n{err}"
        outs.append(out)
    return outs


def test_many_processes_ingest_same_and_different_content(tmp_path):
    root = str(tmp_path / "content")
    srcs = []
    for name, size in [("shared-a", 6 * MiB), ("shared-b", 1 * MiB + 3), ("tiny", 10)]:
        p = tmp_path / name
        p.write_bytes(os.urandom(size))
        srcs.append(str(p))
    children = []
    for i in range(4):
        own = tmp_path / f"own-{i}"
        own.write_bytes(os.urandom(2 * MiB + i))
        # Every process ingests the shared files (in a different order) plus one of its own.
        order = srcs[i % 3:] + srcs[:i % 3]
        children.append(spawn("ingest-many", root, *order, str(own)))
    _wait_all(children)
    store = LocalStore(root)
    want = {file_digest(s) for s in srcs} | {
        file_digest(str(tmp_path / f"own-{i}")) for i in range(4)}
    got = assert_blobs_verify(store)
    assert sorted(got) == sorted(want), "exactly one copy of every digest"
    assert store.ingest_refs() == []
    assert sorted(os.listdir(os.path.join(root, "blobs", "sha256"))) == sorted(
        d.split(":")[1] for d in want)


def test_commit_and_conditional_delete_never_lose_a_recorded_blob(tmp_path):
    root = str(tmp_path / "content")
    markers = tmp_path / "markers"
    markers.mkdir()
    LocalStore(root)
    children = [spawn("race-commit", root, str(markers), "2"),
                spawn("race-commit", root, str(markers), "2"),
                spawn("race-delete", root, str(markers), "2")]
    commits_a, commits_b, deletes = (int(o) for o in _wait_all(children))
    # The race must really have happened, many times over, in both directions.
    assert commits_a > 20 and commits_b > 20 and deletes > 5, (commits_a, commits_b, deletes)
    store = LocalStore(root)
    assert_blobs_verify(store)
    digest = "sha256:" + hashlib.sha256(b"raced content").hexdigest()
    for m in os.listdir(markers):  # a record left behind must still have its blob
        assert os.path.exists(store.blob_path(digest)), m
