"""Read the metadata into a GC graph: roots, references (with the reason for each) and every
collectable node. One linear pass over each namespace's keys, inside one read transaction.

Rules (containerd's, with its label names):

- roots: every image (unless its ``gc.expire`` passed), every unexpired lease and each resource
  it holds, every container, every blob or snapshot labelled ``gc.root``, every ingest whose
  ``expireat`` is still ahead;
- references: image → its target blob; blob/snapshot/image/container → what its
  ``gc.ref.content[.x|/x]``, ``gc.ref.snapshot.<sn>[/x]``, ``gc.ref.image[.x|/x]`` labels
  name; snapshot → its parent; ingest → its expected digest; container → its snapshot;
  ``gc.bref.*`` labels add the edge backwards (the target keeps the labelled object);
- a ``gc.flat`` lease holds only its own resources: from them only parents and image targets
  are followed, not label references.
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
from cargohold.metadata import namespaces
from cargohold.metadata.db import Tx
from cargohold.metadata.schema import SEP, ns_bucket
from cargohold.types import LABEL_GC_EXPIRE, LABEL_GC_FLAT, LABEL_GC_ROOT, parse_time

_P = "containerd.io/gc."


@dataclass
class Graph:
    """What a scan found."""

    roots: list[tuple[Node, str]] = field(default_factory=list)
    edges: dict[Node, list[tuple[Node, str]]] = field(default_factory=lambda: defaultdict(list))
    flat_edges: dict[Node, list[tuple[Node, str]]] = field(
        default_factory=lambda: defaultdict(list))
    nodes: set[Node] = field(default_factory=set)  # every collectable node
    snapshot_parent: dict[Node, Node] = field(default_factory=dict)
    snapshot_name: dict[Node, str] = field(default_factory=dict)  # backend name
    ingest_bref: dict[Node, str] = field(default_factory=dict)

    def refs(self, n: Node) -> list[Node]:
        src = self.flat_edges if n.type & FLAT else self.edges
        return [c for c, _ in src.get(n.plain() if not n.type & FLAT else n, ())]

    def refs_why(self, n: Node) -> list[tuple[Node, str]]:
        src = self.flat_edges if n.type & FLAT else self.edges
        return list(src.get(n.plain() if not n.type & FLAT else n, ()))


def _label_target(ns: str, k: str, v: str, prefix: str) -> Node | None:
    """The node a ``gc.ref``/``gc.bref`` label names, or None when it is not such a label."""
    rest = k[len(prefix):]
    if rest.startswith("content") and (len(rest) == 7 or rest[7] in "./"):
        return Node(CONTENT, ns, v)
    if rest.startswith("snapshot.") and len(rest) > 9:
        sn = rest[9:].split("/", 1)[0]
        return Node(SNAPSHOT, ns, f"{sn}/{v}") if sn else None
    if rest.startswith("image") and (len(rest) == 5 or rest[5] in "./"):
        return Node(IMAGE, ns, v)
    if rest.startswith("container") and (len(rest) == 9 or rest[9] in "./"):
        return Node(CONTAINER, ns, v)
    return None


def _expired(value: str, now: int) -> bool:
    try:
        return parse_time(value) <= now
    except Exception:  # noqa: BLE001 - an unreadable expiry keeps the object, as containerd
        return False


def scan(tx: Tx, now: int) -> Graph:
    """Build the graph of every namespace as ``tx`` sees it."""
    g = Graph()
    for ns in namespaces.list_all(tx):
        _scan_ns(tx, ns, now, g)
    return g


def _scan_ns(tx: Tx, ns: str, now: int, g: Graph) -> None:  # noqa: C901 - one dispatch table
    prefix = ns_bucket(ns)
    plen = len(prefix)
    labels: dict[Node, dict[str, str]] = defaultdict(dict)
    leases: dict[str, list[Node]] = defaultdict(list)
    lease_labels: dict[str, dict[str, str]] = defaultdict(dict)
    lease_ids: set[str] = set()
    images: dict[str, str] = {}
    ingests: dict[str, dict[str, str]] = defaultdict(dict)
    containers: dict[str, dict[str, str]] = defaultdict(dict)

    for k, v in tx.scan(prefix):
        p = k[plen:].split(SEP)
        top = p[0]
        if top == b"content" and len(p) >= 4:
            if p[1] == b"blob":
                n = Node(CONTENT, ns, p[2].decode())
                if p[3] == b"size":
                    g.nodes.add(n)
                elif p[3] == b"labels" and len(p) == 5:
                    labels[n][p[4].decode()] = v.decode()
            elif p[1] == b"ingests":
                ingests[p[2].decode()][p[3].decode()] = v.decode()
        elif top == b"images" and len(p) >= 3:
            name = p[1].decode()
            if p[2] == b"target":
                images[name] = json.loads(v)["digest"]
            elif p[2] == b"labels" and len(p) == 4:
                labels[Node(IMAGE, ns, name)][p[3].decode()] = v.decode()
        elif top == b"snapshots" and len(p) >= 4:
            n = Node(SNAPSHOT, ns, f"{p[1].decode()}/{p[2].decode()}")
            f = p[3]
            if f == b"name":
                g.nodes.add(n)
                g.snapshot_name[n] = v.decode()
            elif f == b"parent":
                parent = Node(SNAPSHOT, ns, f"{p[1].decode()}/{v.decode()}")
                g.snapshot_parent[n] = parent
            elif f == b"labels" and len(p) == 5:
                labels[n][p[4].decode()] = v.decode()
        elif top == b"leases" and len(p) >= 3:
            lid = p[1].decode()
            kind = p[2]
            if kind == b"createdat":
                lease_ids.add(lid)
            elif kind == b"labels" and len(p) == 4:
                lease_labels[lid][p[3].decode()] = v.decode()
            elif kind == b"content" and len(p) == 4:
                leases[lid].append(Node(CONTENT, ns, p[3].decode()))
            elif kind == b"ingests" and len(p) == 4:
                leases[lid].append(Node(INGEST, ns, p[3].decode()))
            elif kind == b"images" and len(p) == 4:
                leases[lid].append(Node(IMAGE, ns, p[3].decode()))
            elif kind == b"snapshots" and len(p) == 5:
                leases[lid].append(Node(SNAPSHOT, ns, f"{p[3].decode()}/{p[4].decode()}"))
        elif top == b"containers" and len(p) >= 3:
            cid = p[1].decode()
            if p[2] == b"labels" and len(p) == 4:
                labels[Node(CONTAINER, ns, cid)][p[3].decode()] = v.decode()
            else:
                containers[cid][p[2].decode()] = v.decode()

    edges, flat = g.edges, g.flat_edges
    # Images: roots unless expired; reference their target.
    for name, digest in images.items():
        n = Node(IMAGE, ns, name)
        g.nodes.add(n)
        edges[n].append((Node(CONTENT, ns, digest), "image target"))
        flat[n.flat()].append((Node(CONTENT | FLAT, ns, digest), "image target"))
        exp = labels.get(n, {}).get(LABEL_GC_EXPIRE)
        if not (exp and _expired(exp, now)):
            g.roots.append((n, "image"))
    # Snapshots: parents.
    for n, parent in g.snapshot_parent.items():
        edges[n].append((parent, "parent snapshot"))
        flat[n.flat()].append((parent.flat(), "parent snapshot"))
    # Ingests: live ones are roots; they keep their expected digest.
    for ref, rec in ingests.items():
        n = Node(INGEST, ns, ref)
        g.nodes.add(n)
        g.ingest_bref[n] = rec.get("ref", "")
        if rec.get("expected"):
            edges[n].append((Node(CONTENT, ns, rec["expected"]), "ingest expects it"))
            flat[n.flat()].append((Node(CONTENT | FLAT, ns, rec["expected"]),
                                   "ingest expects it"))
        exp = rec.get("expireat")
        if exp and int(exp) > now:
            g.roots.append((n, "ingest in progress"))
    # Containers: always roots; keep their snapshot.
    for cid, rec in containers.items():
        n = Node(CONTAINER, ns, cid)
        g.roots.append((n, "container"))
        if rec.get("snapshotter") and rec.get("snapshotkey"):
            edges[n].append((Node(SNAPSHOT, ns, f"{rec['snapshotter']}/{rec['snapshotkey']}"),
                             "container snapshot"))
    # Labels: roots, references, back references.
    for n, lab in labels.items():
        for k, v in lab.items():
            if not k.startswith(_P):
                continue
            if k == LABEL_GC_ROOT and n.type in (CONTENT, SNAPSHOT):
                g.roots.append((n, f"label {k}"))
            elif k.startswith(_P + "ref."):
                t = _label_target(ns, k, v, _P + "ref.")
                if t is not None:
                    edges[n].append((t, f"label {k}"))
            elif k.startswith(_P + "bref."):
                t = _label_target(ns, k, v, _P + "bref.")
                if t is not None:
                    edges[t].append((n, f"back reference label {k} on {n}"))
    # Leases: unexpired ones are roots, and so is each resource they hold.
    for lid in lease_ids:
        n = Node(LEASE, ns, lid)
        g.nodes.add(n)
        lab = lease_labels.get(lid, {})
        exp = lab.get(LABEL_GC_EXPIRE)
        if exp and _expired(exp, now):
            continue
        g.roots.append((n, "lease"))
        is_flat = bool(lab.get(LABEL_GC_FLAT))
        for r in leases.get(lid, ()):
            held = r.flat() if is_flat and r.type != INGEST else r
            g.roots.append((held, f"held by lease {lid}"))


def order_for_removal(g: Graph, doomed: set[Node]) -> list[Node]:
    """Doomed nodes in a safe removal order: snapshots children first, the rest after."""

    def depth(n: Node) -> int:
        d = 0
        seen = set()
        while n in g.snapshot_parent and n not in seen:
            seen.add(n)
            n = g.snapshot_parent[n]
            d += 1
        return d

    snaps = sorted((n for n in doomed if n.type & TYPE_MASK == SNAPSHOT), key=depth,
                   reverse=True)
    rest = sorted(n for n in doomed if n.type & TYPE_MASK != SNAPSHOT)
    return snaps + rest
