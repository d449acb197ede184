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

import json
from collections import defaultdict
from dataclasses import dataclass, field

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
from cargohold.metadata.schema import SEP, ns_bucket
from cargohold.snapshotters.api import children_first
from cargohold.types import LABEL_GC_EXPIRE, LABEL_GC_FLAT, LABEL_GC_ROOT, parse_time

_P = "containerd.io/gc."


T = tuple[int, str, str]  # a node as a bare tuple: hot paths avoid NamedTuple construction


@dataclass
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


_GC = b"containerd.io/gc."
_LBL = b"labels" + SEP
_LBL_GC = _LBL + _GC


def _bucket(cur, prefix: bytes):  # noqa: ANN001, ANN202 - an lmdb cursor; yields (rest, v)
    """(key without ``prefix``, value) for every key under ``prefix``; one cursor, no seeks."""
    n = len(prefix)
    if not cur.set_range(prefix):
        return
    for k, v in cur.iternext():
        if not k.startswith(prefix):
            return
        yield k[n:], v


def _scan_ns(tx: Tx, ns: str, now: int, g: Graph,  # noqa: C901 - one dispatch table
             check: owners.OwnerCheck) -> None:
    cur = tx.cursor()
    labels: dict[T, dict[str, str]] = defaultdict(dict)
    nodes_add = g.nodes.add

    # Blobs: a node per record; only gc labels matter here. The hottest loop (most keys of a
    # store are blob fields), so it is written out bare: no generator, no splitting, no method
    # calls for the keys it skips. A sha256 key's field starts at a fixed offset, so its first
    # byte (c/l/s/u) tells createdat, labels, size and updatedat apart; other digest lengths
    # take the general path.
    prefix = ns_bucket(ns, "content", "blob")
    plen = len(prefix)
    end = prefix[:-1] + bytes([prefix[-1] + 1])  # first key after the bucket
    f0 = plen + len("sha256:") + 64 + 1  # field offset of a sha256 key
    content_refs = g.edges
    ref_content = _GC + b"ref.content"
    if cur.set_range(prefix):
        # Keys only: values are fetched just for the few keys that are gc labels.
        for k in cur.iternext(keys=True, values=False):
            if k >= end:
                break
            if len(k) > f0 and k[f0 - 1] == 0:
                j = f0 - 1
            else:
                j = k.find(SEP, plen)
                if j < 0 or j + 1 >= len(k):
                    continue
            c = k[j + 1]
            if c == 115:  # "s"
                if k[j + 1:] == b"size":
                    nodes_add((CONTENT, ns, k[plen:j].decode()))
            elif c == 108 and k.startswith(_LBL_GC, j + 1):  # "l": labels<SEP>containerd.io/gc.
                lk = k[j + 8:]
                # The common case, blob -> blob references, straight into the edge list; the
                # reason stays the raw label key until someone asks (refs_why).
                if lk.startswith(ref_content) and (len(lk) == 28 or lk[28] in b"./"):
                    content_refs[(CONTENT, ns, k[plen:j].decode())].append(
                        ((CONTENT, ns, cur.value().decode()), lk))
                else:
                    labels[(CONTENT, ns, k[plen:j].decode())][lk.decode()] = \
                        cur.value().decode()

    ingests: dict[str, dict[str, str]] = defaultdict(dict)
    for rest, v in _bucket(cur, ns_bucket(ns, "content", "ingests")):
        p = rest.split(SEP)
        if len(p) == 2:
            ingests[p[0].decode()][p[1].decode()] = v.decode()

    images: dict[str, str] = {}
    for rest, v in _bucket(cur, ns_bucket(ns, "images")):
        p = rest.split(SEP)
        if len(p) == 2 and p[1] == b"target":
            images[p[0].decode()] = json.loads(v)["digest"]
        elif len(p) == 3 and p[1] == b"labels" and p[2].startswith(_GC):
            labels[(IMAGE, ns, p[0].decode())][p[2].decode()] = v.decode()

    for rest, v in _bucket(cur, ns_bucket(ns, "snapshots")):
        p = rest.split(SEP)
        if len(p) < 3:
            continue
        n = (SNAPSHOT, ns, f"{p[0].decode()}/{p[1].decode()}")
        f = p[2]
        if f == b"name":
            nodes_add(n)
            g.snapshot_name[n] = v.decode()
        elif f == b"parent":
            g.snapshot_parent[n] = (SNAPSHOT, ns, f"{p[0].decode()}/{v.decode()}")
        elif f == b"labels" and len(p) == 4 and p[3].startswith(_GC):
            labels[n][p[3].decode()] = v.decode()

    leases: dict[str, list[T]] = defaultdict(list)
    lease_labels: dict[str, dict[str, str]] = defaultdict(dict)
    lease_ids: set[str] = set()
    for rest, v in _bucket(cur, ns_bucket(ns, "leases")):
        p = rest.split(SEP)
        if len(p) < 2:
            continue
        lid, kind = p[0].decode(), p[1]
        if kind == b"createdat":
            lease_ids.add(lid)
        elif kind == b"labels" and len(p) == 3:
            lease_labels[lid][p[2].decode()] = v.decode()
        elif kind == b"content" and len(p) == 3:
            leases[lid].append((CONTENT, ns, p[2].decode()))
        elif kind == b"ingests" and len(p) == 3:
            leases[lid].append((INGEST, ns, p[2].decode()))
        elif kind == b"images" and len(p) == 3:
            leases[lid].append((IMAGE, ns, p[2].decode()))
        elif kind == b"snapshots" and len(p) == 4:
            leases[lid].append((SNAPSHOT, ns, f"{p[2].decode()}/{p[3].decode()}"))

    containers: dict[str, dict[str, str]] = defaultdict(dict)
    for rest, v in _bucket(cur, ns_bucket(ns, "containers")):
        p = rest.split(SEP)
        if len(p) == 3 and p[1] == b"labels":
            labels[(CONTAINER, ns, p[0].decode())][p[2].decode()] = v.decode()
        elif len(p) == 2:
            containers[p[0].decode()][p[1].decode()] = v.decode()
    cur.close()

    edges, flat = g.edges, g.flat_edges
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
