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
