"""Read the metadata into a GC graph: roots, references (with the reason for each) and every
collectable node. One linear pass over each namespace's keys, inside one read transaction.

Rules (containerd's, with its label names):

- roots: every image (unless its ``gc.expire`` passed), every unexpired lease whose owner (if
  it records one, see :mod:`cargohold.leases.owner`) still runs, and each resource it holds,
  every container, every blob or snapshot labelled ``gc.root``, every ingest whose ``expireat``
  is still ahead (leased or not: a partial ingest outlives a dead owner's lease until then);
- references: image → its target blob; blob/snapshot/image/container → what its
  ``gc.ref.content[.x|/x]``, ``gc.ref.snapshot.<sn>[/x]``, ``gc.ref.image[.x|/x]`` labels
  name; snapshot → its parent; ingest → its expected digest; container → its snapshot;
  ``gc.bref.*`` labels add the edge backwards (the target keeps the labelled object);
- a ``gc.flat`` lease holds only its own resources: from them only parents and image targets
  are followed, not label references;
- a lease that holds nothing (expired, or its owner is dead) is recorded in
  :attr:`Graph.released` with the reason, for ``hold gc --why``.
"""

from __future__ import annotations

from collections import defaultdict

from cargohold._record import field, record
from cargohold.gc.mark import (
    CONTAINER,
    CONTENT,
    FLAT,
    IMAGE,
    INGEST,
    LEASE,
    SNAPSHOT,
    TYPE_MASK,
    Node,
)
from cargohold.leases import owner as owners
from cargohold.metadata import namespaces
from cargohold.metadata.db import Tx
from cargohold.metadata.gcrecords import read_namespace
from cargohold.snapshotters.api import children_first
from cargohold.types import LABEL_GC_EXPIRE, LABEL_GC_FLAT, LABEL_GC_ROOT, parse_time

_P = "containerd.io/gc."


T = tuple[int, str, str]  # a node as a bare tuple: hot paths avoid NamedTuple construction


@record
class Graph:
    """What a scan found. Nodes are bare ``(type, ns, key)`` tuples (equal to :class:`Node`)."""

    roots: list[tuple[T, str]] = field(default_factory=list)
    edges: dict[T, list[tuple[T, str]]] = field(default_factory=lambda: defaultdict(list))
    flat_edges: dict[T, list[tuple[T, str]]] = field(default_factory=lambda: defaultdict(list))
    nodes: set[T] = field(default_factory=set)  # every collectable node
    snapshot_parent: dict[T, T] = field(default_factory=dict)
    snapshot_name: dict[T, str] = field(default_factory=dict)  # backend name
    ingest_bref: dict[T, str] = field(default_factory=dict)
    # A lease that holds nothing, and each thing it lists -> why ("lease L expired at T",
    # "lease L of dead process P (...)").
    released: dict[T, list[str]] = field(default_factory=lambda: defaultdict(list))

    def refs(self, n: T) -> list[T]:
        src = self.flat_edges if n[0] & FLAT else self.edges
        got = src.get(n)
        return [c for c, _ in got] if got else []

    def refs_why(self, n: T) -> list[tuple[T, str]]:
        src = self.flat_edges if n[0] & FLAT else self.edges
        # The hot scan leaves blob -> blob reasons as the raw label key (bytes); spell them out.
        return [(c, why if isinstance(why, str) else "label " + why.decode())
                for c, why in src.get(n, ())]


def _label_target(ns: str, k: str, v: str, prefix: str) -> T | None:
    """The node a ``gc.ref``/``gc.bref`` label names, or None when it is not such a label."""
    rest = k[len(prefix):]
    if rest.startswith("content") and (len(rest) == 7 or rest[7] in "./"):
        return (CONTENT, ns, v)
    if rest.startswith("snapshot.") and len(rest) > 9:
        sn = rest[9:].split("/", 1)[0]
        return (SNAPSHOT, ns, f"{sn}/{v}") if sn else None
    if rest.startswith("image") and (len(rest) == 5 or rest[5] in "./"):
        return (IMAGE, ns, v)
    if rest.startswith("container") and (len(rest) == 9 or rest[9] in "./"):
        return (CONTAINER, ns, v)
    return None


def _expired(value: str, now: int) -> bool:
    try:
        return parse_time(value) <= now
    except Exception:  # noqa: BLE001 - an unreadable expiry keeps the object, as containerd
        return False


def scan(tx: Tx, now: int, owner_check: owners.OwnerCheck | None = None) -> Graph:
    """Build the graph of every namespace as ``tx`` sees it. ``owner_check`` judges the
    owners leases record (default: this host's /proc, read once per owner).
    """
    g = Graph()
    check = owner_check or owners.cached_check()
    for ns in namespaces.list_all(tx):
        _scan_ns(tx, ns, now, g, check)
    return g


def _scan_ns(tx: Tx, ns: str, now: int, g: Graph,  # noqa: C901 - one dispatch table
             check: owners.OwnerCheck) -> None:
    r = read_namespace(tx, ns)
    nodes_add = g.nodes.add
    labels: dict[T, dict[str, str]] = {}
    # Blobs: a node per record; their blob -> blob references straight into the edge list
    # (the reason stays the raw label key until someone asks, refs_why).
    g.nodes.update([(CONTENT, ns, d) for d in r.blobs])
    edges = g.edges
    for d, lk, target in r.blob_refs:
        edges[(CONTENT, ns, d)].append(((CONTENT, ns, target), lk))
    for d, lab in r.blob_labels.items():
        labels[(CONTENT, ns, d)] = lab
    images = r.images
    for name, lab in r.image_labels.items():
        labels[(IMAGE, ns, name)] = lab
    for (sn, key), bname in r.snapshots.items():
        n = (SNAPSHOT, ns, f"{sn}/{key}")
        nodes_add(n)
        g.snapshot_name[n] = bname
    for (sn, key), parent in r.snapshot_parents.items():
        g.snapshot_parent[(SNAPSHOT, ns, f"{sn}/{key}")] = (SNAPSHOT, ns, f"{sn}/{parent}")
    for (sn, key), lab in r.snapshot_labels.items():
        labels[(SNAPSHOT, ns, f"{sn}/{key}")] = lab
    kinds = {"content": CONTENT, "ingests": INGEST, "images": IMAGE}
    leases: dict[str, list[T]] = {}
    for lid, res in r.lease_resources.items():
        leases[lid] = [(kinds[kind], ns, rid) if kind in kinds
                       else (SNAPSHOT, ns, f"{kind[len('snapshots/'):]}/{rid}")
                       for kind, rid in res]
    lease_labels, lease_ids = r.lease_labels, r.leases
    ingests, containers = r.ingests, r.containers
    for cid, lab in r.container_labels.items():
        labels[(CONTAINER, ns, cid)] = lab

    flat = g.flat_edges
    # Images: roots unless expired; reference their target.
    for name, digest in images.items():
        n = (IMAGE, ns, name)
        nodes_add(n)
        edges[n].append(((CONTENT, ns, digest), "image target"))
        flat[(IMAGE | FLAT, ns, name)].append(((CONTENT | FLAT, ns, digest), "image target"))
        exp = labels.get(n, {}).get(LABEL_GC_EXPIRE)
        if not (exp and _expired(exp, now)):
            g.roots.append((n, "image"))
    # Snapshots: parents.
    for n, parent in g.snapshot_parent.items():
        edges[n].append((parent, "parent snapshot"))
        flat[(n[0] | FLAT, n[1], n[2])].append(((parent[0] | FLAT, ns, parent[2]),
                                                 "parent snapshot"))
    # Ingests: live ones are roots; they keep their expected digest.
    for ref, rec in ingests.items():
        n = (INGEST, ns, ref)
        nodes_add(n)
        g.ingest_bref[n] = rec.get("ref", "")
        if rec.get("expected"):
            edges[n].append(((CONTENT, ns, rec["expected"]), "ingest expects it"))
        exp = rec.get("expireat")
        if exp and int(exp) > now:
            g.roots.append((n, "ingest in progress"))
    # Containers: always roots; keep their snapshot.
    for cid, rec in containers.items():
        n = (CONTAINER, ns, cid)
        g.roots.append((n, "container"))
        if rec.get("snapshotter") and rec.get("snapshotkey"):
            edges[n].append(((SNAPSHOT, ns, f"{rec['snapshotter']}/{rec['snapshotkey']}"),
                             "container snapshot"))
    # Labels: roots, references, back references.
    ref_p, bref_p = _P + "ref.", _P + "bref."
    for n, lab in labels.items():
        for k, v in lab.items():
            if k == LABEL_GC_ROOT:
                if n[0] in (CONTENT, SNAPSHOT):
                    g.roots.append((n, f"label {k}"))
            elif k.startswith(ref_p):
                t = _label_target(ns, k, v, ref_p)
                if t is not None:
                    edges[n].append((t, f"label {k}"))
            elif k.startswith(bref_p):
                t = _label_target(ns, k, v, bref_p)
                if t is not None:
                    edges[t].append((n, f"back reference label {k} on {Node(*n)}"))
    # Leases: unexpired ones whose owner (if any) runs are roots, and so is each resource they
    # hold. One that holds nothing is remembered with the reason.
    for lid in lease_ids:
        n = (LEASE, ns, lid)
        nodes_add(n)
        lab = lease_labels.get(lid, {})
        exp = lab.get(LABEL_GC_EXPIRE)
        why = ""
        if exp and _expired(exp, now):
            why = f"lease {lid} expired at {exp}"
        elif check(lab) is owners.State.DEAD:
            why = owners.dead_lease_text(lid, lab)
        if why:
            g.released[n].append(why)
            for r in leases.get(lid, ()):
                g.released[r].append(why)
            continue
        g.roots.append((n, "lease"))
        is_flat = bool(lab.get(LABEL_GC_FLAT))
        for r in leases.get(lid, ()):
            held = (r[0] | FLAT, r[1], r[2]) if is_flat and r[0] != INGEST else r
            g.roots.append((held, f"held by lease {lid}"))


def unreferenced_reason(g: Graph, n: T) -> str:
    """How ``hold gc --why`` explains a node no root reaches: ``unreferenced``, plus the
    leases that list it but hold nothing (expired, or their owner is dead).
    """
    why = g.released.get(n)
    if not why:
        return "unreferenced"
    if n[0] & TYPE_MASK == LEASE:
        return f"unreferenced: {why[0]}"
    return f"unreferenced: held only by {'; '.join(why)}, which holds nothing"


def order_for_removal(g: Graph, doomed: set[T]) -> list[Node]:
    """Doomed nodes in a safe removal order: snapshots children first, the rest after."""
    snaps = children_first((n for n in doomed if n[0] & TYPE_MASK == SNAPSHOT),
                           g.snapshot_parent)
    rest = sorted(n for n in doomed if n[0] & TYPE_MASK != SNAPSHOT)
    return [Node(*n) for n in snaps + rest]
