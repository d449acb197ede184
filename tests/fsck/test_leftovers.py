"""fsck and what interrupted work left: a dead owner's half-extracted snapshot is a problem
that --repair removes; its lease and resumable partial ingests are notes; leases without an
owner are never reported; a live lease keeps an ingest past its own expiry."""

from __future__ import annotations

import io
import os

import pytest
from tests.leases.ownerkit import dead_owner_labels
from tests.peers import open_client

from cargohold.fsck.check import Fsck
from cargohold.leases import owner
from cargohold.metadata.content import NamespacedStore, ingest_path
from cargohold.metadata.snapshotter import NamespacedSnapshotter
from cargohold.store.api import copy_into
from cargohold.types import LABEL_SNAPSHOT_REF


@pytest.fixture
def c(tmp_path):
    c = open_client(str(tmp_path))
    yield c
    c.close()


def _fsck(c, repair=False):
    return Fsck(c.db, c.store, repair=repair, snapshotters=c.snapshotter_or_none).run()


def _leftovers(c, lid):
    """What a killed import leaves: a committed layer, a half-extracted one, a partial
    ingest and a blob, all in lease ``lid``."""
    sn = NamespacedSnapshotter(c.db, c.backend_snapshotter("native"), c.namespace, "native",
                               lease=lid)
    sn.prepare("extract-1 sha256:one", labels={LABEL_SNAPSHOT_REF: "sha256:one"})
    sn.commit("sha256:one", "extract-1 sha256:one")
    [m] = sn.prepare("extract-2 sha256:two", "sha256:one",
                     labels={LABEL_SNAPSHOT_REF: "sha256:two"})
    with open(os.path.join(m.source, "half.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    store = NamespacedStore(c.db, c.store, c.namespace, lease=lid)
    copy_into(store.writer("import-sha256-small"), io.BytesIO(b"config"))
    w = store.writer("import-sha256-big", total=10 << 20)
    w.write(os.urandom(3 << 20))
    w.close()


def test_a_dead_imports_leftovers_are_reported_and_repaired(c):
    dead = dead_owner_labels()
    lid = c.leases.create("L", labels=dead).id
    _leftovers(c, lid)
    rep = _fsck(c)
    [p] = rep.problems
    pid = dead[owner.LABEL_OWNER_PID]
    text = str(p)
    assert text.startswith("interrupted unpack: snapshot extract-2 sha256:two, ")
    assert int(text.split(", ")[1].split()[0]) >= 1 << 20
    assert f", lease L of dead process {pid} (images import big.tar); namespace default, " \
           "snapshotter native" in text
    assert not rep.clean and p.repair
    [note] = [n for n in rep.notes if "import-sha256-big" in n]
    assert note.startswith("note: resumable partial ingest import-sha256-big (namespace "
                           f"default), {3 << 20} of {10 << 20} bytes, lease L of dead "
                           f"process {pid}")
    rep = _fsck(c, repair=True)
    assert [x.repaired for x in rep.problems] == [True]
    rep = _fsck(c)
    assert rep.clean and rep.problems == []
    sn = c.snapshotter("native")
    assert [i.name for i in _walk(sn)] == ["sha256:one"]  # committed layers are GC's call
    assert c.leases.list() == []
    assert c.content.status("import-sha256-big").offset == 3 << 20  # still resumable
    assert any("resumable partial ingest import-sha256-big" in n for n in rep.notes)


def _walk(sn):
    out = []
    sn.walk(out.append)
    return out


def test_leftovers_of_a_lease_without_owner_are_not_judged(c):
    lid = c.leases.create("mine").id  # hold leases create
    _leftovers(c, lid)
    rep = _fsck(c)
    assert rep.clean and rep.problems == []
    assert [n for n in rep.notes if "lease" in n] == []
    assert [n.split(",")[0] for n in rep.notes] == [
        "note: resumable partial ingest import-sha256-big (namespace default)"]
    assert _fsck(c, repair=True).problems == [] and len(c.leases.list()) == 1


def test_a_dead_lease_with_only_blobs_is_a_note_and_repair_deletes_it(c):
    lid = c.leases.create("D", labels=dead_owner_labels()).id
    store = NamespacedStore(c.db, c.store, c.namespace, lease=lid)
    copy_into(store.writer("x"), io.BytesIO(b"a blob"))
    rep = _fsck(c)
    assert rep.clean
    [note] = rep.notes
    assert "lease D of dead process" in note and "holds 1 blob(s)" in note
    rep = _fsck(c, repair=True)
    assert "deleted" in rep.notes[0] and c.leases.list() == []


def test_an_expired_ingest_record_held_by_a_live_lease_is_not_a_problem(c):
    lid = c.leases.create("live").id
    store = NamespacedStore(c.db, c.store, c.namespace, lease=lid, ingest_expiry=-1)
    w = store.writer("slow")
    w.write(b"still coming")
    w.close()
    assert _fsck(c).problems == []
    c.leases.delete(lid)
    [p] = _fsck(c).problems
    assert p.kind == "expired-ingest"
    with c.db.view() as tx:
        assert tx.get_int(ingest_path(c.namespace, "slow", "expireat"))


CRASH_BETWEEN_RENAME_AND_RECORD = r"""
import os, sys
from tests.peers import open_client
from cargohold.metadata import content as mc

c = open_client(sys.argv[1])
def hook_factory(self, ref, size, labels):
    def killed(digest, existed):
        os._exit(9)  # as kill -9 between the rename into blobs/ and the namespace record
    return killed
mc.NamespacedStore._commit_hook = hook_factory
w = c.content.writer("upload-1")  # opened without a digest, as a registry upload is
w.write(b"x" * 200000)
w.commit(200000, "")
"""


def _killed_mid_commit(root: str) -> None:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", CRASH_BETWEEN_RENAME_AND_RECORD, root],
                       capture_output=True, timeout=60)
    assert p.returncode == 9, p.stderr.decode()


def test_a_commit_killed_before_its_record_is_a_note_and_the_retry_records_it(tmp_path):
    """A blob renamed into blobs/ whose record never got written is no garbage while its
    ingest lives: fsck notes the interrupted commit (clean), GC keeps it, the next commit of
    the same ref records it."""
    import hashlib

    root = str(tmp_path)
    _killed_mid_commit(root)
    digest = "sha256:" + hashlib.sha256(b"x" * 200000).hexdigest()
    c = open_client(root)
    try:
        assert os.path.exists(c.store.blob_path(digest))
        rep = _fsck(c)
        assert rep.problems == []
        [note] = [n for n in rep.notes if "interrupted commit" in n]
        assert f"ingest upload-1 (namespace default) stored blob {digest} (200000 bytes)" in note
        assert c.collector.collect().removed == [] and os.path.exists(c.store.blob_path(digest))
        w = c.content.writer("upload-1")
        w.write(b"x" * 200000)
        assert w.commit(200000, "") == digest
        assert c.content.info(digest).size == 200000
        assert [n for n in _fsck(c).notes if "interrupted commit" in n] == []
    finally:
        c.close()


def test_an_interrupted_commit_goes_with_its_expired_ingest(tmp_path):
    root = str(tmp_path)
    _killed_mid_commit(root)
    c = open_client(root)
    try:
        with c.db.update() as tx:
            tx.put(ingest_path("default", "upload-1", "expireat"), 1)
        res = c.collector.collect()
        assert not os.listdir(os.path.join(c.store.root, "blobs", "sha256")), res
        assert _fsck(c).problems == []
    finally:
        c.close()
