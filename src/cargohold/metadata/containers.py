"""Container records: an id bound to an image, a runtime, a spec and a snapshot.

A container is always a GC root: its snapshot (and what it references) stays until the
container record is removed.
"""

from __future__ import annotations

from collections.abc import Sequence

from cargohold._record import field, record, replace
from cargohold.errors import AlreadyExists, InvalidArgument, NotFound
from cargohold.filters import Filter, adaptor_for
from cargohold.metadata import namespaces
from cargohold.metadata.db import Tx
from cargohold.metadata.schema import ns_bucket, ns_path
from cargohold.types import apply_field_paths, now_ns, validate_identifier, validate_labels

_FIELDS = ("image", "runtime", "spec", "snapshotter", "snapshotkey")


@record(frozen=True)
class Container:
    """A container record; ``spec`` is the OCI runtime spec as JSON text."""

    id: str
    image: str = ""
    runtime: str = "runc"
    spec: str = ""
    snapshotter: str = ""
    snapshotkey: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0


def _path(ns: str, cid: str, *rest: str) -> bytes:
    return ns_path(ns, "containers", cid, *rest)


def get(tx: Tx, ns: str, cid: str) -> Container:
    created = tx.get(_path(ns, cid, "createdat"))
    if created is None:
        raise NotFound(f"container {cid}: not found in namespace {ns}",
                       hint="list containers with 'hold containers ls'")
    vals = {f: tx.get_str(_path(ns, cid, f)) for f in _FIELDS}
    return Container(cid, labels=tx.read_labels(_path(ns, cid)), created_at=int(created),
                     updated_at=tx.get_int(_path(ns, cid, "updatedat")), **vals)


def _write(tx: Tx, ns: str, c: Container) -> None:
    for f in _FIELDS:
        tx.put(_path(ns, c.id, f), getattr(c, f))
    tx.put(_path(ns, c.id, "createdat"), c.created_at)
    tx.put(_path(ns, c.id, "updatedat"), c.updated_at)
    tx.write_labels(_path(ns, c.id), validate_labels(c.labels), replace=True)


def create(tx: Tx, ns: str, c: Container) -> Container:
    validate_identifier("container", c.id)
    if tx.exists(_path(ns, c.id, "createdat")):
        raise AlreadyExists(f"container {c.id}: already exists")
    if bool(c.snapshotter) != bool(c.snapshotkey):
        raise InvalidArgument(f"container {c.id}: snapshotter and snapshot key go together")
    namespaces.ensure(tx, ns)
    now = now_ns()
    c = replace(c, created_at=now, updated_at=now)
    _write(tx, ns, c)
    return c


def update(tx: Tx, ns: str, c: Container, fieldpaths: Sequence[str]) -> Container:
    cur = get(tx, ns, c.id)
    labels, named = apply_field_paths(cur.labels, c.labels, fieldpaths,
                                      subject=f"container {c.id}",
                                      other=("image", "spec", "runtime"))
    changes = {f: getattr(c, f) for f in named}
    new = replace(cur, labels=labels, updated_at=now_ns(), **changes)  # type: ignore[arg-type]
    _write(tx, ns, new)
    return new


def list_containers(tx: Tx, ns: str, filters: Sequence[str] = ()) -> list[Container]:
    flt = Filter(filters)
    out = []
    for cid in tx.children(ns_bucket(ns, "containers")):
        c = get(tx, ns, cid)
        if flt.match(adaptor_for({"id": c.id, "image": c.image, "runtime.name": c.runtime},
                                 c.labels)):
            out.append(c)
    return out


def delete(tx: Tx, ns: str, cid: str) -> None:
    get(tx, ns, cid)
    tx.delete_tree(_path(ns, cid))
