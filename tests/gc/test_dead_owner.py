"""GC and leases of dead owners: a lease whose process is gone holds nothing (like an expired
one) but its partial ingests stay until their own expiry; live owners, leases without an
owner and owners this host cannot judge keep everything; ``why`` names the dead process."""

from __future__ import annotations

import io
import os

import pytest
from tests.leases.ownerkit import dead_owner_labels

from cargohold.gc.collector import Collector
from cargohold.leases import owner
from cargohold.metadata import leases
from cargohold.metadata import snapshot_records as snapshots
from cargohold.metadata.content import NamespacedStore, ingest_path
from cargohold.metadata.db import open_db
from cargohold.metadata.leases import Resource
from cargohold.metadata.snapshot_records import SnapshotRecord
from cargohold.store.api import copy_into
from cargohold.store.local import LocalStore


class Root:
    def __init__(self, path):
        self.db = open_db(path)
        self.store = LocalStore(os.path.join(path, "content"))

    def lease(self, lid, labels):
        with self.db.update() as tx:
            leases.create(tx, "n", lid, labels)

    def blob(self, lid, data: bytes) -> str:
        s = NamespacedStore(self.db, self.store, "n", lease=lid)
        return copy_into(s.writer(f"w-{data.decode()}"), io.BytesIO(data))

    def partial(self, lid, ref, data: bytes, *, expiry=3600 * 10**9) -> None:
        s = NamespacedStore(self.db, self.store, "n", lease=lid, ingest_expiry=expiry)
        w = s.writer(ref, total=len(data) * 2)
        w.write(data)
        w.close()

    def snap(self, lid, key):
        with self.db.update() as tx:
            snapshots.create(tx, "n", SnapshotRecord("overlayfs", key, f"n/{key}"))
            leases.add_resource(tx, "n", lid, Resource("snapshots/overlayfs", key))

    def records(self):
        with self.db.view() as tx:
            return ({lease.id for lease in leases.list_leases(tx, "n")},
                    set(tx.children(b"v1\x00n\x00content\x00blob\x00")),
                    set(tx.children(b"v1\x00n\x00snapshots\x00overlayfs\x00")),
                    set(tx.children(b"v1\x00n\x00content\x00ingests\x00")))


@pytest.fixture
def r(tmp_path):
    r = Root(str(tmp_path))
    yield r
    r.db.close()


def test_a_dead_owner_lease_holds_nothing_but_its_partial_ingest_stays(r):
    dead = dead_owner_labels()
    r.lease("dead", dead)
    gone = r.blob("dead", b"layer one")
    r.snap("dead", "extract-1 sha256:abc")
    r.partial("dead", "import-sha256-big", b"half of a big layer")
    r.partial("dead", "import-old", b"stale", expiry=-1)  # its own expiry has passed
    r.lease("alive", owner.owner_labels("images import other.tar"))
    kept_alive = r.blob("alive", b"live owner")
    r.lease("user", {"team": "a"})  # hold leases create: no owner, never judged
    kept_user = r.blob("user", b"user lease")
    r.lease("elsewhere", {**dead, owner.LABEL_OWNER_PIDNS: "pid:[1]"})  # cannot be judged
    kept_unknown = r.blob("elsewhere", b"other pid namespace")
    res = Collector(r.db, r.store).collect()
    lids, blobs, snaps, ingests = r.records()
    assert lids == {"alive", "user", "elsewhere"}
    assert blobs == {kept_alive, kept_user, kept_unknown} and gone not in blobs
    assert snaps == set()
    assert ingests == {"import-sha256-big"}
    # The data stays too, resumable from its offset.
    s = NamespacedStore(r.db, r.store, "n")
    assert s.status("import-sha256-big").offset == len(b"half of a big layer")
    assert ("ingest-dir", "n/import-old") in {(x.kind, x.key) for x in res.removed}


def test_why_names_the_dead_process(r):
    dead = dead_owner_labels()
    r.lease("L1", dead)
    r.snap("L1", "extract-9 sha256:def")
    r.lease("L2", {"containerd.io/gc.expire": "2000-01-01T00:00:00Z"})
    r.snap("L2", "old")
    coll = Collector(r.db, r.store)
    pid = dead[owner.LABEL_OWNER_PID]
    [[(_, via)]] = coll.why("snapshot/overlayfs/extract-9 sha256:def")
    assert via == (f"unreferenced: held only by lease L1 of dead process {pid} "
                   "(images import big.tar), which holds nothing")
    [[(_, via)]] = coll.why("lease/L1")
    assert via == f"unreferenced: lease L1 of dead process {pid} (images import big.tar)"
    [[(_, via)]] = coll.why("snapshot/overlayfs/old")
    assert via.startswith("unreferenced: held only by lease L2 expired at 2000-01-01")


def test_a_dead_owner_lease_record_without_the_ingest_expiry_label_is_still_kept_by_it(r):
    """An ingest record written before ingests kept their expiry under a lease (no
    expireat) is not resumable after its owner died: it goes with the lease."""
    dead = dead_owner_labels()
    r.lease("D", dead)
    r.partial("D", "legacy", b"bytes")
    with r.db.update() as tx:
        tx.delete(ingest_path("n", "legacy", "expireat"))
    Collector(r.db, r.store).collect()
    assert r.records()[3] == set()
