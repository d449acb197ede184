"""The collector on real metadata and a real blob store: tables of objects and the exact
survivors, dry-run, why, and bounded sweeping."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from cargohold.gc.collector import Collector
from cargohold.metadata import containers, images, leases
from cargohold.metadata import snapshot_records as snapshots
from cargohold.metadata.content import NamespacedStore, ingest_path
from cargohold.metadata.db import open_db
from cargohold.metadata.images import Image
from cargohold.metadata.leases import Resource
from cargohold.metadata.snapshot_records import SnapshotRecord
from cargohold.store.api import copy_into
from cargohold.store.local import LocalStore
from cargohold.types import Descriptor

PAST = "2000-01-01T00:00:00Z"
FUTURE = "2099-01-01T00:00:00Z"
REF = "containerd.io/gc.ref."


def dg(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


class World:
    def __init__(self, root):
        self.db = open_db(root)
        self.store = LocalStore(os.path.join(root, "content"))

    def _resolve(self, v: str) -> str:
        return dg(v[1:]) if v.startswith("@") else v

    def blob(self, ns, name, **labels):
        s = NamespacedStore(self.db, self.store, ns)
        w = s.writer(f"w-{name}")
        copy_into(w, io.BytesIO(name.encode()),
                  labels={k.replace("__", "/").replace("_", "."): self._resolve(v)
                          for k, v in labels.items()})

    def labelled_blob(self, ns, name, labels):
        s = NamespacedStore(self.db, self.store, ns)
        copy_into(s.writer(f"w-{name}"), io.BytesIO(name.encode()),
                  labels={k: self._resolve(v) for k, v in labels.items()})

    def image(self, ns, name, target, labels=None):
        with self.db.update() as tx:
            images.create(tx, ns, Image(name, Descriptor("application/json", dg(target), 9),
                                        dict(labels or {})))

    def lease(self, ns, lid, resources=(), labels=None):
        with self.db.update() as tx:
            leases.create(tx, ns, lid, dict(labels or {}))
            for t, i in resources:
                leases.add_resource(tx, ns, lid, Resource(t, self._resolve(i)))

    def snap(self, ns, key, parent="", labels=None):
        with self.db.update() as tx:
            snapshots.create(tx, ns, SnapshotRecord("overlayfs", key, f"{ns}/{key}", parent,
                                                    {k: self._resolve(v)
                                                     for k, v in (labels or {}).items()}))

    def container(self, ns, cid, key):
        with self.db.update() as tx:
            containers.create(tx, ns, containers.Container(
                cid, snapshotter="overlayfs", snapshotkey=key))

    def ingest(self, ns, ref, expireat, expected=""):
        with self.db.update() as tx:
            tx.put(ingest_path(ns, ref, "ref"), f"{ns}/{ref}")
            tx.put(ingest_path(ns, ref, "expected"), self._resolve(expected))
            tx.put(ingest_path(ns, ref, "expireat"), expireat)

    def survivors(self):
        out = set()
        with self.db.view() as tx:
            for k, _v in tx.scan(b"v1\x00"):
                p = k.decode().split("\x00")
                if len(p) >= 5 and p[2] == "content" and p[3] == "blob" and p[5:] == ["size"]:
                    out.add(("content", p[1], p[4]))
                elif len(p) == 5 and p[2] == "images" and p[4] == "target":
                    out.add(("image", p[1], p[3]))
                elif len(p) == 5 and p[2] == "leases" and p[4] == "createdat":
                    out.add(("lease", p[1], p[3]))
                elif len(p) == 6 and p[2] == "snapshots" and p[5] == "name":
                    out.add(("snapshot", p[1], p[4]))
                elif len(p) == 6 and p[2] == "content" and p[3] == "ingests" and p[5] == "ref":
                    out.add(("ingest", p[1], p[4]))
        files = set()
        d = os.path.join(self.store.root, "blobs", "sha256")
        for name in os.listdir(d) if os.path.isdir(d) else []:
            files.add("sha256:" + name)
        return out, files


def C(ns, name):
    return ("content", ns, dg(name))


def image_tree(w, ns="n", tag="img:1", prefix=""):
    """index -> manifest -> config + 2 layers, linked with containerd's client labels."""
    p = prefix
    w.labelled_blob(ns, p + "l0", {})
    w.labelled_blob(ns, p + "l1", {})
    w.labelled_blob(ns, p + "cfg", {REF + "snapshot.overlayfs": "top"})
    w.labelled_blob(ns, p + "man", {REF + "content.config": "@" + p + "cfg",
                                    REF + "content.l.0": "@" + p + "l0",
                                    REF + "content.l.1": "@" + p + "l1"})
    w.labelled_blob(ns, p + "idx", {REF + "content.m.0": "@" + p + "man"})
    w.image(ns, tag, p + "idx")


def tree_nodes(ns="n", prefix=""):
    return {C(ns, prefix + x) for x in ("l0", "l1", "cfg", "man", "idx")}


def case_unreferenced(w):
    w.labelled_blob("n", "lonely", {})
    return set(), set()


def case_image_tree(w):
    image_tree(w)
    w.labelled_blob("n", "junk", {})
    return tree_nodes() | {("image", "n", "img:1")}, {n[2] for n in tree_nodes()}


def case_expired_image(w):
    image_tree(w)
    w.labelled_blob("n", "x", {})
    with w.db.update() as tx:
        images.update(tx, "n", Image("img:1", Descriptor("a/b", dg("idx"), 9),
                                     {"containerd.io/gc.expire": PAST}), ["labels"])
    return set(), set()


def case_lease(w):
    w.labelled_blob("n", "held", {})
    w.labelled_blob("n", "lost", {})
    w.lease("n", "live", [("content", "@held")], {"containerd.io/gc.expire": FUTURE})
    w.lease("n", "dead", [("content", "@lost")], {"containerd.io/gc.expire": PAST})
    return {C("n", "held"), ("lease", "n", "live")}, {dg("held")}


def case_flat_lease(w):
    w.labelled_blob("n", "l0", {})
    w.labelled_blob("n", "man", {REF + "content.l.0": "@l0"})
    w.lease("n", "flat", [("content", "@man")], {"containerd.io/gc.flat": "1"})
    return {C("n", "man"), ("lease", "n", "flat")}, {dg("man")}


def case_gc_root(w):
    w.labelled_blob("n", "pinned", {"containerd.io/gc.root": "2024-01-01T00:00:00Z"})
    w.labelled_blob("n", "child", {})
    w.labelled_blob("n", "pin2", {"containerd.io/gc.root": "x", REF + "content": "@child"})
    return {C("n", "pinned"), C("n", "pin2"), C("n", "child")}, \
        {dg("pinned"), dg("pin2"), dg("child")}


def case_snapshot_chain(w):
    image_tree(w)
    w.snap("n", "base")
    w.snap("n", "mid", "base")
    w.snap("n", "top", "mid")
    w.snap("n", "orphan-base")
    w.snap("n", "orphan-child", "orphan-base")
    snaps = {("snapshot", "n", k) for k in ("base", "mid", "top")}
    return tree_nodes() | {("image", "n", "img:1")} | snaps, {n[2] for n in tree_nodes()}


def case_container(w):
    w.snap("n", "rootfs")
    w.snap("n", "rw", "rootfs")
    w.container("n", "c1", "rw")
    return {("snapshot", "n", "rootfs"), ("snapshot", "n", "rw")}, set()


def case_back_reference(w):
    w.labelled_blob("n", "idx", {})
    w.image("n", "img:1", "idx")
    w.labelled_blob("n", "sig", {"containerd.io/gc.bref.image": "img:1"})
    w.labelled_blob("n", "other", {"containerd.io/gc.bref.image": "gone:1"})
    return {C("n", "idx"), C("n", "sig"), ("image", "n", "img:1")}, {dg("idx"), dg("sig")}


def case_ingests(w):
    w.labelled_blob("n", "wanted", {})
    w.ingest("n", "live", 2**62, "@wanted")
    w.ingest("n", "stale", 1)
    return {C("n", "wanted"), ("ingest", "n", "live")}, {dg("wanted")}


def case_cross_namespace(w):
    w.labelled_blob("a", "both", {})
    w.labelled_blob("b", "both", {})
    w.image("b", "keep:1", "both")
    return {C("b", "both"), ("image", "b", "keep:1")}, {dg("both")}


def case_lease_holds_snapshot_and_image(w):
    w.snap("n", "s1")
    image_tree(w, tag="leased:1")
    with w.db.update() as tx:
        images.delete(tx, "n", "leased:1")
        images.create(tx, "n", Image("leased:1", Descriptor("a/b", dg("idx"), 9),
                                     {"containerd.io/gc.expire": PAST}))
    w.lease("n", "L", [("snapshots/overlayfs", "s1"), ("images", "leased:1")])
    return {("snapshot", "n", "s1"), ("lease", "n", "L"), ("image", "n", "leased:1")} | \
        tree_nodes(), {n[2] for n in tree_nodes()}


CASES = [case_unreferenced, case_image_tree, case_expired_image, case_lease, case_flat_lease,
         case_gc_root, case_snapshot_chain, case_container, case_back_reference, case_ingests,
         case_cross_namespace, case_lease_holds_snapshot_and_image]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_gc_table(root, case):
    w = World(root)
    want_records, want_files = case(w)
    coll = Collector(w.db, w.store, batch=2)
    plan = coll.collect(dry_run=True)
    before = w.survivors()
    res = coll.collect()
    got_records, got_files = w.survivors()
    assert got_records == want_records
    assert got_files == want_files
    # The dry run changed nothing and predicted exactly what went.
    assert plan.dry_run and before != (got_records, got_files) or not res.removed
    planned = {(r.kind, r.ns, r.key) for r in plan.removed}
    done = {(r.kind, r.ns, r.key) for r in res.removed}
    assert planned == done
    assert res.bytes_freed == plan.bytes_freed
    # A second collection finds nothing more.
    assert Collector(w.db, w.store).collect().removed == []
    w.db.close()


def test_why_prints_the_chain(root):
    w = World(root)
    image_tree(w)
    chains = Collector(w.db, w.store).why(dg("l1"))
    [chain] = chains
    kinds = [(n.key, via) for n, via in chain]
    assert kinds[0] == ("img:1", "image")
    assert kinds[-1] == (dg("l1"), f"label {REF}content.l.1")
    assert [k for k, _ in kinds] == ["img:1", dg("idx"), dg("man"), dg("l1")]
    w.labelled_blob("n", "free", {})
    [[(node, via)]] = Collector(w.db, w.store).why(dg("free"))
    assert via == "unreferenced"
    with pytest.raises(Exception, match="not found"):
        Collector(w.db, w.store).why(dg("never"))
    w.db.close()


def test_sweep_retries_when_a_writer_races_it(root, monkeypatch):
    """A write between mark and sweep forces a re-mark; what it made live survives."""
    w = World(root)
    w.labelled_blob("n", "rescued", {})
    w.labelled_blob("n", "junk", {})
    coll = Collector(w.db, w.store)
    real = coll.graph
    calls = []

    def graph(tx):
        out = real(tx)
        if not calls:
            calls.append(1)
            # Another process pins "rescued" right after our first mark.
            with w.db.update() as wtx:
                images.create(wtx, "n", Image("late:1", Descriptor("a/b", dg("rescued"), 8)))
        return out

    monkeypatch.setattr(coll, "graph", graph)
    res = coll.collect()
    assert res.retries >= 1
    recs, files = w.survivors()
    assert C("n", "rescued") in recs and dg("rescued") in files
    assert dg("junk") not in files
    w.db.close()
