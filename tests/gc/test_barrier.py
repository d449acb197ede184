"""The write barrier: writes that land between sweep batches are honoured without a re-mark,
and no batch ever marks inside its write transaction."""

from __future__ import annotations

import contextlib

from tests.gc.test_collector import C, World, dg

from cargohold.gc.collector import Collector
from cargohold.metadata import images, leases
from cargohold.metadata.content import NamespacedStore
from cargohold.metadata.db import GC_ACTIVE_KEY, GC_LOG
from cargohold.metadata.images import Image
from cargohold.metadata.leases import Resource
from cargohold.store.api import Info
from cargohold.types import Descriptor


def test_writes_between_batches_spare_what_they_reach(root, monkeypatch):
    w = World(root)
    w.labelled_blob("n", "keeper", {})
    w.image("n", "keep:1", "keeper")
    # The sweep goes in digest order here: a junk blob that sorts first is the first batch.
    others = min(dg(x) for x in ("a", "b", "c", "holds-c", "junk2"))
    first_junk = next(f"junk-{i}" for i in range(10000) if dg(f"junk-{i}") < others)
    for name in ("a", "b", "c", first_junk, "junk2"):
        w.labelled_blob("n", name, {})
    w.labelled_blob("n", "holds-c", {"containerd.io/gc.ref.content.x": dg("c")})
    coll = Collector(w.db, w.store, batch=1)
    marks = []
    real_graph = coll.graph

    def graph(tx):
        marks.append(tx.write)
        return real_graph(tx)

    monkeypatch.setattr(coll, "graph", graph)
    real_update = w.db.update
    calls = []
    entries = []

    def late_writes():
        # Another writer, after the first batch: an image now points at "a", a label on the
        # live "keeper" names "b", a lease holds "holds-c" (which keeps "c").
        with real_update() as wtx:
            images.create(wtx, "n", Image("late:1", Descriptor("a/b", dg("a"), 1)))
            leases.create(wtx, "n", "late-lease", {})
            leases.add_resource(wtx, "n", "late-lease", Resource("content", dg("holds-c")))
        NamespacedStore(w.db, w.store, "n").update(
            Info(dg("keeper"), 0, labels={"containerd.io/gc.ref.content.y": dg("b")}),
            ["labels.containerd.io/gc.ref.content.y"])

    @contextlib.contextmanager
    def update():
        entries.append(1)
        if len(entries) == 3:  # barrier, batch 1, now batch 2: the writer got in first
            late_writes()
        with real_update() as tx:
            yield tx

    monkeypatch.setattr(w.db, "update", update)
    real_remove = coll._remove_record

    def remove(tx, n, res):
        calls.append(n)
        return real_remove(tx, n, res)

    monkeypatch.setattr(coll, "_remove_record", remove)
    res = coll.collect()
    assert marks == [False], "marked once, in a read transaction"
    recs, files = w.survivors()
    assert calls[0].key == dg(first_junk)
    for name in ("a", "b", "c", "holds-c", "keeper"):
        assert C("n", name) in recs and dg(name) in files, name
    assert res.retries >= 1
    for name in (first_junk, "junk2"):
        assert dg(name) not in files
    with w.db.view() as tx:
        assert tx.get(GC_ACTIVE_KEY) is None and not tx.has_prefix(GC_LOG)
    w.db.close()


def test_no_barrier_log_outside_a_collection(root):
    w = World(root)
    w.labelled_blob("n", "x", {})
    with w.db.view() as tx:
        assert not tx.has_prefix(GC_LOG)
    w.db.close()
