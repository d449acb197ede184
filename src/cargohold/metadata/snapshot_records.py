"""The per-namespace snapshot index: which snapshot keys a namespace sees, and their tree.

Each record maps a namespace's key to the backend's name for it (backends are shared by all
namespaces, so backend names carry the namespace: ``<ns>/<seq>/<key>``), keeps the parent key
and child links (so "has children" is one prefix probe) and the labels.
"""

from __future__ import annotations

from cargohold._record import field, record
from cargohold.errors import AlreadyExists, FailedPrecondition, NotFound
from cargohold.metadata import namespaces
from cargohold.metadata.db import Tx
from cargohold.metadata.schema import SEP, ns_bucket, ns_path
from cargohold.types import now_ns, validate_labels


@record(frozen=True)
class SnapshotRecord:
    """One snapshot as a namespace sees it."""

    snapshotter: str
    key: str
    name: str  # the backend's key
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0


def _path(ns: str, sn: str, key: str, *rest: str) -> bytes:
    return ns_path(ns, "snapshots", sn, key, *rest)


def exists(tx: Tx, ns: str, sn: str, key: str) -> bool:
    return tx.exists(_path(ns, sn, key, "name"))


def get(tx: Tx, ns: str, sn: str, key: str) -> SnapshotRecord:
    name = tx.get(_path(ns, sn, key, "name"))
    if name is None:
        raise NotFound(f"snapshot {key} on {sn}: not found",
                       hint=f"list snapshots with 'hold --snapshotter {sn} snapshots ls'")
    return SnapshotRecord(sn, key, name.decode(), tx.get_str(_path(ns, sn, key, "parent")),
                          tx.read_labels(_path(ns, sn, key)),
                          tx.get_int(_path(ns, sn, key, "createdat")),
                          tx.get_int(_path(ns, sn, key, "updatedat")))


def snapshotters(tx: Tx, ns: str) -> list[str]:
    """The snapshotters namespace ``ns`` has records on."""
    return list(tx.children(ns_bucket(ns, "snapshots")))


def keys(tx: Tx, ns: str, sn: str) -> list[str]:
    return list(tx.children(ns_bucket(ns, "snapshots", sn)))


def children(tx: Tx, ns: str, sn: str, key: str) -> list[str]:
    return list(tx.children(_path(ns, sn, key, "children") + SEP))


def next_name(tx: Tx, ns: str, sn: str, key: str) -> str:
    """A fresh backend name for ``key``: ``<ns>/<seq>/<key>``, never reused."""
    # The snapshotter's bucket key itself holds the sequence (it lists as the bucket name).
    seqkey = ns_path(ns, "snapshots", sn)
    seq = tx.get_int(seqkey) + 1
    tx.put(seqkey, seq)
    return f"{ns}/{seq}/{key}"


def create(tx: Tx, ns: str, rec: SnapshotRecord) -> SnapshotRecord:
    """Add a record (and its link under the parent); AlreadyExists when the key is taken."""
    if exists(tx, ns, rec.snapshotter, rec.key):
        raise AlreadyExists(f"snapshot {rec.key} on {rec.snapshotter}: already exists")
    if rec.parent and not exists(tx, ns, rec.snapshotter, rec.parent):
        raise NotFound(f"parent snapshot {rec.parent} on {rec.snapshotter}: not found")
    namespaces.ensure(tx, ns)
    now = now_ns()
    p = _path(ns, rec.snapshotter, rec.key)
    tx.put(_path(ns, rec.snapshotter, rec.key, "name"), rec.name)
    if rec.parent:
        tx.put(_path(ns, rec.snapshotter, rec.key, "parent"), rec.parent)
        tx.put(_path(ns, rec.snapshotter, rec.parent, "children", rec.key), b"")
    tx.put(_path(ns, rec.snapshotter, rec.key, "createdat"), now)
    tx.put(_path(ns, rec.snapshotter, rec.key, "updatedat"), now)
    tx.write_labels(p, validate_labels(rec.labels), replace=True)
    return SnapshotRecord(rec.snapshotter, rec.key, rec.name, rec.parent, dict(rec.labels),
                          now, now)


def set_labels(tx: Tx, ns: str, sn: str, key: str, labels: dict[str, str], *,
               replace: bool) -> SnapshotRecord:
    get(tx, ns, sn, key)
    tx.write_labels(_path(ns, sn, key), validate_labels(labels), replace=replace)
    tx.put(_path(ns, sn, key, "updatedat"), now_ns())
    return get(tx, ns, sn, key)


def rename(tx: Tx, ns: str, sn: str, key: str, new_key: str, name: str,
           labels: dict[str, str]) -> SnapshotRecord:
    """Commit bookkeeping: record ``key`` becomes ``new_key`` (backend ``name``)."""
    cur = get(tx, ns, sn, key)
    if exists(tx, ns, sn, new_key):
        raise AlreadyExists(f"snapshot {new_key} on {sn}: already exists")
    if children(tx, ns, sn, key):
        raise FailedPrecondition(f"snapshot {key} on {sn}: has children")
    remove(tx, ns, sn, key)
    return create(tx, ns, SnapshotRecord(sn, new_key, name, cur.parent, labels))


def remove(tx: Tx, ns: str, sn: str, key: str) -> SnapshotRecord:
    """Drop a record; refuse while children exist."""
    cur = get(tx, ns, sn, key)
    kids = children(tx, ns, sn, key)
    if kids:
        raise FailedPrecondition(
            f"snapshot {key} on {sn}: cannot remove, it has {len(kids)} child snapshot(s) "
            f"({', '.join(kids[:3])}{', ...' if len(kids) > 3 else ''})",
            hint="remove the children first")
    if cur.parent:
        tx.delete(_path(ns, sn, cur.parent, "children", key))
    tx.delete_tree(_path(ns, sn, key))
    return cur
