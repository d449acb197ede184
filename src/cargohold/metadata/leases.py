"""Lease records and the resources they hold.

Resource types, as containerd names them: ``content`` (a digest), ``ingests`` (an ingest ref),
``images`` (an image name), ``snapshots/<snapshotter>`` (a snapshot key). A lease whose
``containerd.io/gc.expire`` label is in the past protects nothing and is removed by GC.

Internal leases (import, unpack, pack; later pull) also name the process that owns them, in
the labels ``cargohold.owner/pid``, ``cargohold.owner/start`` (start time from
/proc/<pid>/stat), ``cargohold.owner/boot`` (the boot id), ``cargohold.owner/pidns`` and
``cargohold.owner/purpose``; a lease whose owner is gone protects nothing either. What the
labels mean and how an owner is judged: :mod:`cargohold.leases.owner`. Leases without them
(``hold leases create``) are never judged.
"""

from __future__ import annotations

from collections.abc import Sequence

from cargohold._record import field, record
from cargohold.errors import AlreadyExists, InvalidArgument, NotFound, Unsupported
from cargohold.filters import Filter, adaptor_for
from cargohold.metadata import namespaces
from cargohold.metadata.db import Tx
from cargohold.metadata.schema import SEP, ns_bucket, ns_path
from cargohold.types import (
    LABEL_GC_EXPIRE,
    Digest,
    now_ns,
    parse_time,
    validate_identifier,
    validate_labels,
)


@record(frozen=True)
class Lease:
    """A lease record."""

    id: str
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = 0

    def expired(self, now: int) -> bool:
        exp = self.labels.get(LABEL_GC_EXPIRE)
        if not exp:
            return False
        try:
            return parse_time(exp) <= now
        except InvalidArgument:
            return False  # an unreadable expiry keeps the lease, as containerd does


@record(frozen=True)
class Resource:
    """One thing a lease holds."""

    type: str
    id: str

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"


def _path(ns: str, lid: str, *rest: str) -> bytes:
    return ns_path(ns, "leases", lid, *rest)


def _check_resource(r: Resource) -> tuple[str, ...]:
    if r.type == "content":
        Digest(r.id)
        return ("content", r.id)
    if r.type in ("ingests", "images"):
        return (r.type, r.id)
    if r.type.startswith("snapshots/") and len(r.type) > 10:
        return ("snapshots", r.type[10:], r.id)
    raise Unsupported(f"lease resource type {r.type!r}: not supported",
                      hint="use content, ingests, images or snapshots/<snapshotter>")


def get(tx: Tx, ns: str, lid: str) -> Lease:
    created = tx.get(_path(ns, lid, "createdat"))
    if created is None:
        raise NotFound(f"lease {lid}: not found", hint="list leases with 'hold leases ls'")
    return Lease(lid, tx.read_labels(_path(ns, lid)), int(created))


def exists(tx: Tx, ns: str, lid: str) -> bool:
    return tx.exists(_path(ns, lid, "createdat"))


def create(tx: Tx, ns: str, lid: str, labels: dict[str, str] | None = None) -> Lease:
    validate_identifier("lease", lid)
    if exists(tx, ns, lid):
        raise AlreadyExists(f"lease {lid}: already exists")
    namespaces.ensure(tx, ns)
    now = now_ns()
    tx.put(_path(ns, lid, "createdat"), now)
    labels = {k: v for k, v in validate_labels(dict(labels or {})).items() if v}
    tx.write_labels(_path(ns, lid), labels, replace=True)
    return Lease(lid, labels, now)


def list_leases(tx: Tx, ns: str, filters: Sequence[str] = ()) -> list[Lease]:
    flt = Filter(filters)
    out = []
    for lid in tx.children(ns_bucket(ns, "leases")):
        if not exists(tx, ns, lid):
            continue
        lease = get(tx, ns, lid)
        if flt.match(adaptor_for({"id": lid}, lease.labels)):
            out.append(lease)
    return out


def delete(tx: Tx, ns: str, lid: str) -> None:
    if not exists(tx, ns, lid):
        raise NotFound(f"lease {lid}: not found", hint="list leases with 'hold leases ls'")
    tx.delete_tree(_path(ns, lid))


def add_resource(tx: Tx, ns: str, lid: str, r: Resource) -> None:
    if not exists(tx, ns, lid):
        raise NotFound(f"lease {lid}: not found",
                       hint="create it with 'hold leases create' or drop --lease")
    tx.put(_path(ns, lid, *_check_resource(r)), b"")


def delete_resource(tx: Tx, ns: str, lid: str, r: Resource) -> None:
    if not exists(tx, ns, lid):
        raise NotFound(f"lease {lid}: not found", hint="list leases with 'hold leases ls'")
    tx.delete(_path(ns, lid, *_check_resource(r)))


def list_resources(tx: Tx, ns: str, lid: str) -> list[Resource]:
    if not exists(tx, ns, lid):
        raise NotFound(f"lease {lid}: not found", hint="list leases with 'hold leases ls'")
    out = []
    base = _path(ns, lid) + SEP
    for k, _v in tx.scan(base):
        parts = k[len(base):].decode().split("\x00")
        if parts[0] in ("content", "ingests", "images") and len(parts) == 2:
            out.append(Resource(parts[0], parts[1]))
        elif parts[0] == "snapshots" and len(parts) == 3:
            out.append(Resource(f"snapshots/{parts[1]}", parts[2]))
    return out


def is_live(lease: Lease) -> bool:
    return not lease.expired(now_ns())
