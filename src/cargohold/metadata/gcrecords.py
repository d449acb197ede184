"""What garbage collection needs from one namespace's records, read in one cursor pass.

:func:`read_namespace` walks the namespace's buckets of :mod:`cargohold.metadata.schema` in key
order with a single LMDB cursor and returns plain data: which blobs, images, snapshots, leases,
ingests and containers exist, their ``containerd.io/gc.*`` labels, and what links them. It
knows the key shapes; :mod:`cargohold.gc.scan` turns the result into a graph and knows the GC
rules. Nothing else is read (no sizes, no times), so the scan of a 100,000-blob store stays
well under a second.

The blob bucket is most of a store's keys, so its loop is written out bare: keys only (values
are fetched just for gc labels), and a sha256 key's field starts at a fixed offset, so its
first byte (c/l/s/u) tells createdat, labels, size and updatedat apart without a search.
"""

from __future__ import annotations

import json
from collections import defaultdict

from cargohold._record import field, record
from cargohold.metadata.db import Tx
from cargohold.metadata.schema import SEP, ns_bucket, ns_path

GC_PREFIX = b"containerd.io/gc."
_LBL_GC = b"labels" + SEP + GC_PREFIX
_REF_CONTENT = GC_PREFIX + b"ref.content"

Labels = dict[str, str]


@record
class NamespaceRecords:
    """One namespace, as GC sees it. Snapshot keys are ``(snapshotter, key)``."""

    blobs: list[str] = field(default_factory=list)
    # (digest, raw label key, target digest) of every gc.ref.content[.x|/x] label: the common
    # blob -> blob reference, kept raw until someone asks why (refs_why).
    blob_refs: list[tuple[str, bytes, str]] = field(default_factory=list)
    blob_labels: dict[str, Labels] = field(default_factory=lambda: defaultdict(dict))
    ingests: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    images: dict[str, str] = field(default_factory=dict)  # name -> target digest
    image_labels: dict[str, Labels] = field(default_factory=lambda: defaultdict(dict))
    snapshots: dict[tuple[str, str], str] = field(default_factory=dict)  # -> backend name
    snapshot_parents: dict[tuple[str, str], str] = field(default_factory=dict)  # -> parent key
    snapshot_labels: dict[tuple[str, str], Labels] = field(
        default_factory=lambda: defaultdict(dict))
    leases: set[str] = field(default_factory=set)
    lease_labels: dict[str, Labels] = field(default_factory=lambda: defaultdict(dict))
    # lease id -> [(kind, id)]: kind content, ingests, images or snapshots/<snapshotter>
    lease_resources: dict[str, list[tuple[str, str]]] = field(
        default_factory=lambda: defaultdict(list))
    containers: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    container_labels: dict[str, Labels] = field(default_factory=lambda: defaultdict(dict))


def _bucket(cur, prefix: bytes):  # noqa: ANN001, ANN202 - an lmdb cursor; yields (rest, v)
    """(key without ``prefix``, value) for every key under ``prefix``; one cursor, no seeks."""
    n = len(prefix)
    if not cur.set_range(prefix):
        return
    for k, v in cur.iternext():
        if not k.startswith(prefix):
            return
        yield k[n:], v


def read_namespace(tx: Tx, ns: str) -> NamespaceRecords:  # noqa: C901 - one dispatch table
    """Everything GC needs from namespace ``ns`` as ``tx`` sees it (see the module)."""
    r = NamespaceRecords()
    cur = tx.cursor()
    try:
        _read_blobs(cur, ns, r)
        for rest, v in _bucket(cur, ns_bucket(ns, "content", "ingests")):
            p = rest.split(SEP)
            if len(p) == 2:
                r.ingests[p[0].decode()][p[1].decode()] = v.decode()
        for rest, v in _bucket(cur, ns_bucket(ns, "images")):
            p = rest.split(SEP)
            if len(p) == 2 and p[1] == b"target":
                r.images[p[0].decode()] = json.loads(v)["digest"]
            elif len(p) == 3 and p[1] == b"labels" and p[2].startswith(GC_PREFIX):
                r.image_labels[p[0].decode()][p[2].decode()] = v.decode()
        for rest, v in _bucket(cur, ns_bucket(ns, "snapshots")):
            p = rest.split(SEP)
            if len(p) < 3:
                continue
            k = (p[0].decode(), p[1].decode())
            f = p[2]
            if f == b"name":
                r.snapshots[k] = v.decode()
            elif f == b"parent":
                r.snapshot_parents[k] = v.decode()
            elif f == b"labels" and len(p) == 4 and p[3].startswith(GC_PREFIX):
                r.snapshot_labels[k][p[3].decode()] = v.decode()
        for rest, v in _bucket(cur, ns_bucket(ns, "leases")):
            p = rest.split(SEP)
            if len(p) < 2:
                continue
            lid, kind = p[0].decode(), p[1]
            if kind == b"createdat":
                r.leases.add(lid)
            elif kind == b"labels" and len(p) == 3:
                r.lease_labels[lid][p[2].decode()] = v.decode()
            elif kind in (b"content", b"ingests", b"images") and len(p) == 3:
                r.lease_resources[lid].append((kind.decode(), p[2].decode()))
            elif kind == b"snapshots" and len(p) == 4:
                r.lease_resources[lid].append((f"snapshots/{p[2].decode()}", p[3].decode()))
        for rest, v in _bucket(cur, ns_bucket(ns, "containers")):
            p = rest.split(SEP)
            if len(p) == 3 and p[1] == b"labels":
                r.container_labels[p[0].decode()][p[2].decode()] = v.decode()
            elif len(p) == 2:
                r.containers[p[0].decode()][p[1].decode()] = v.decode()
    finally:
        cur.close()
    return r


def _read_blobs(cur, ns: str, r: NamespaceRecords) -> None:  # noqa: ANN001 - lmdb cursor
    prefix = ns_bucket(ns, "content", "blob")
    plen = len(prefix)
    end = prefix[:-1] + bytes([prefix[-1] + 1])  # first key after the bucket
    f0 = plen + len("sha256:") + 64 + 1  # field offset of a sha256 key
    blobs, refs, labels = r.blobs.append, r.blob_refs.append, r.blob_labels
    if not cur.set_range(prefix):
        return
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
                blobs(k[plen:j].decode())
        elif c == 108 and k.startswith(_LBL_GC, j + 1):  # "l": labels<SEP>containerd.io/gc.
            lk = k[j + 8:]
            if lk.startswith(_REF_CONTENT) and (len(lk) == 28 or lk[28] in b"./"):
                refs((k[plen:j].decode(), lk, cur.value().decode()))
            else:
                labels[k[plen:j].decode()][lk.decode()] = cur.value().decode()


def written_records(tx: Tx, writes: list[tuple[str, str]]
                    ) -> tuple[set[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """What logged writes (``(key, value)`` pairs, see :func:`~cargohold.metadata.db.
    writes_since`) touched, in GC's terms: ``(kind, namespace, key)`` for each record written
    or named by a written value (an image target, an ingest's expected digest, a snapshot's
    parent, a lease resource, a container's snapshot), with kinds ``content``, ``image``,
    ``ingest``, ``snapshot`` (key ``<snapshotter>/<key>``), ``lease`` and ``container``; and
    ``(namespace, label, value)`` for every label written, for GC to read as a reference.
    """
    touched: set[tuple[str, str, str]] = set()
    labels: list[tuple[str, str, str]] = []
    for k, v in writes:
        p = k.split("\x00")
        if len(p) < 4 or p[0] != "v1":
            continue
        ns, kind = p[1], p[2]
        if kind == "images":
            touched.add(("image", ns, p[3]))
            if len(p) == 5 and p[4] == "target":
                try:
                    touched.add(("content", ns, str(json.loads(v)["digest"])))
                except (ValueError, KeyError, TypeError):
                    pass  # not a descriptor: nothing it names
        elif kind == "content" and len(p) >= 5:
            if p[3] == "blob":
                touched.add(("content", ns, p[4]))
            elif p[3] == "ingests":
                touched.add(("ingest", ns, p[4]))
                if p[-1] == "expected" and v:
                    touched.add(("content", ns, v))
        elif kind == "snapshots" and len(p) >= 5:
            touched.add(("snapshot", ns, f"{p[3]}/{p[4]}"))
            if len(p) == 6 and p[5] == "parent" and v:
                touched.add(("snapshot", ns, f"{p[3]}/{v}"))
        elif kind == "leases":
            touched.add(("lease", ns, p[3]))
            if len(p) == 6 and p[4] in ("content", "ingests", "images"):
                touched.add(({"content": "content", "ingests": "ingest",
                              "images": "image"}[p[4]], ns, p[5]))
            elif len(p) == 7 and p[4] == "snapshots":
                touched.add(("snapshot", ns, f"{p[5]}/{p[6]}"))
        elif kind == "containers":
            touched.add(("container", ns, p[3]))
            sn = tx.get_str(ns_path(ns, "containers", p[3], "snapshotter"))
            key = tx.get_str(ns_path(ns, "containers", p[3], "snapshotkey"))
            if sn and key:
                touched.add(("snapshot", ns, f"{sn}/{key}"))
        if "labels" in p[3:] and v:
            i = p.index("labels", 3) + 1
            if i < len(p):
                labels.append((ns, p[i], v))
    return touched, labels
