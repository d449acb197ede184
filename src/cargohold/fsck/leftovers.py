"""What interrupted work left behind: leases of dead owners, their snapshots, partial ingests.

An import, unpack or pack killed with -9 (or lost to a power cut) cannot clean up; its lease
names it as owner (:mod:`cargohold.leases.owner`), so once it is gone the lease holds nothing
and GC frees what it held. This check says so instead of calling the root clean:

- ``interrupted unpack`` (a problem): an active snapshot of a dead owner's lease, usually a
  half-extracted ``extract-*`` one, with its size: "interrupted unpack: snapshot K, N bytes,
  lease L of dead process P (...)". ``--repair`` removes it and then the dead lease, as the
  next ``hold gc`` would.
- a dead owner's lease that holds no such snapshot is a note (what it holds, that the next
  ``hold gc`` drops it); ``--repair`` deletes it.
- partial ingests that nobody writes now are notes, not problems: "resumable partial ingest
  R, O of T bytes, ...; kept until T". They are what lets the next import of the same archive
  resume (the record's own expiry keeps them after a dead owner's lease is gone); once
  expired they are the ``expired-ingest`` problem of :mod:`.check`.

Leases without an owner (``hold leases create``) are never reported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from cargohold._record import field, record
from cargohold.errors import CargoholdError, NotFound
from cargohold.fsck.check import Problem
from cargohold.leases import owner as owners
from cargohold.metadata import leases as lease_records
from cargohold.metadata import namespaces
from cargohold.metadata import snapshot_records as snaprec
from cargohold.metadata.content import has_record, ingest_records
from cargohold.metadata.db import DB
from cargohold.metadata.leases import Lease, Resource
from cargohold.snapshotters.api import Kind
from cargohold.types import LABEL_SNAPSHOT_REF, format_time, now_ns

Lookup = Callable[[str], Any]


@record
class Leftover(Problem):
    """A problem whose text reads "kind: subject, details" (the subject is the object)."""

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}, {self.message}"


@record
class _LeaseView:
    ns: str
    lease: Lease
    state: owners.State
    expired: bool
    resources: list[Resource] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        """Whether GC counts this lease as a root."""
        return not self.expired and self.state is not owners.State.DEAD


def _leases(db: DB, check: owners.OwnerCheck) -> list[_LeaseView]:
    now = now_ns()
    out = []
    with db.view() as tx:
        for ns in namespaces.list_all(tx):
            for lease in lease_records.list_leases(tx, ns):
                out.append(_LeaseView(ns, lease, check(lease.labels), lease.expired(now),
                                      lease_records.list_resources(tx, ns, lease.id)))
    return out


def held_ingests(db: DB, check: owners.OwnerCheck | None = None) -> set[tuple[str, str]]:
    """(namespace, ref) of every ingest a lease that GC counts as a root holds."""
    views = _leases(db, check or owners.cached_check())
    return {(v.ns, r.id) for v in views if v.holds for r in v.resources if r.type == "ingests"}


def check_leftovers(db: DB, store: Any, lookup: Lookup | None, *, repair: bool = False,
                    check: owners.OwnerCheck | None = None) -> tuple[list[Problem], list[str]]:
    """Report (and with ``repair`` remove) dead owners' leftovers; return (problems, notes).

    ``store`` is the blob store (for ingest offsets), ``lookup`` maps a snapshotter name to
    its backend (None: snapshots are not looked at).
    """
    check = check or owners.cached_check()
    problems: list[Problem] = []
    notes: list[str] = []
    dead_ingests: dict[tuple[str, str], str] = {}
    for v in _leases(db, check):
        if v.state is not owners.State.DEAD:
            continue
        who = owners.dead_lease_text(v.lease.id, v.lease.labels)
        for r in v.resources:
            if r.type == "ingests":
                dead_ingests[(v.ns, r.id)] = who
        found = _interrupted_unpacks(db, lookup, v, who) if lookup is not None else []
        if repair:
            for p, remove in found:
                p.repaired = remove()
        problems += [p for p, _ in found]
        if not found:
            blobs = sum(r.type == "content" for r in v.resources)
            snaps = sum(r.type.startswith("snapshots/") for r in v.resources)
            parts = sum(r.type == "ingests" for r in v.resources)
            text = (f"note: {who} holds {blobs} blob(s), {snaps} snapshot(s) and {parts} "
                    f"ingest(s) (namespace {v.ns}); it holds nothing now, so the next "
                    "'hold gc' drops it and what only it kept")
            if repair and _delete_if_dead(db, v, check):
                text = f"note: {who} (namespace {v.ns}): deleted; the next 'hold gc' frees " \
                       "what only it kept"
            notes.append(text)
        elif repair and all(p.repaired for p, _ in found):
            _delete_if_dead(db, v, check)
    notes += _partial_ingests(db, store, dead_ingests)
    return problems, notes


def _interrupted_unpacks(db: DB, lookup: Lookup, v: _LeaseView,
                         who: str) -> list[tuple[Problem, Callable[[], bool]]]:
    """The active snapshots ``v`` holds, each with the function that removes it."""
    out: list[tuple[Problem, Callable[[], bool]]] = []
    for r in v.resources:
        if not r.type.startswith("snapshots/"):
            continue
        sn = r.type.split("/", 1)[1]
        with db.view() as tx:
            try:
                rec = snaprec.get(tx, v.ns, sn, r.id)
            except NotFound:
                continue  # removed since (a dangling lease entry is harmless)
        try:
            backend = lookup(sn)
        except CargoholdError:
            backend = None
        if backend is None:
            continue  # check_snapshots reports a snapshotter this host cannot open
        try:
            if backend.stat(rec.name).kind is not Kind.ACTIVE:
                continue  # committed layers are reusable; GC takes them if nothing needs them
            size = backend.usage(rec.name).size
        except CargoholdError:
            continue  # no backend snapshot: check_snapshots reports the record as missing
        kind = ("interrupted unpack" if r.id.startswith("extract-")
                or LABEL_SNAPSHOT_REF in rec.labels else "interrupted work")
        p = Leftover(kind, f"snapshot {r.id}",
                     f"{size} bytes, {who}; namespace {v.ns}, snapshotter {sn}",
                     "remove it and the dead lease (as 'hold gc' would)")
        out.append((p, _remover(db, backend, v.ns, sn, r.id)))
    return out


def _remover(db: DB, backend: Any, ns: str, sn: str, key: str) -> Callable[[], bool]:
    def remove() -> bool:
        from cargohold.metadata.snapshotter import NamespacedSnapshotter

        try:
            NamespacedSnapshotter(db, backend, ns, sn).remove(key)
        except NotFound:
            return True  # GC was faster
        except CargoholdError:
            return False  # reported as not repaired; the next 'hold gc' tries again
        return True

    return remove


def _delete_if_dead(db: DB, v: _LeaseView, check: owners.OwnerCheck) -> bool:
    with db.update() as tx:
        try:
            lease = lease_records.get(tx, v.ns, v.lease.id)
        except NotFound:
            return True
        if check(lease.labels) is not owners.State.DEAD:
            return False
        lease_records.delete(tx, v.ns, v.lease.id)
    return True


def _partial_ingests(db: DB, store: Any, dead: dict[tuple[str, str], str]) -> list[str]:
    """A note per ingest nobody writes now: how far it got and until when it is kept."""
    recs = []
    stored: set[tuple[str, str]] = set()  # (ns, ref) whose expected blob is in, unrecorded
    with db.view() as tx:
        for ns in namespaces.list_all(tx):
            for r in ingest_records(tx, ns):
                recs.append((ns, r.ref, r.bref, r.expire_at, r.expected))
                if r.expected and os.path.exists(store.blob_path(r.expected)) \
                        and not has_record(tx, ns, r.expected):
                    stored.add((ns, r.ref))
    notes = []
    now = now_ns()
    for ns, ref, bref, exp, expected in recs:
        if exp and exp < now:
            continue  # expired: a problem of the ingest check, not a resumable ingest
        if (ns, ref) in stored:
            size = os.path.getsize(store.blob_path(expected))
            until = f" once the ingest expires ({format_time(exp)})" if exp else ""
            notes.append(f"note: interrupted commit: ingest {ref} (namespace {ns}) stored blob "
                         f"{expected} ({size} bytes) but its record was not written (the "
                         f"process was stopped between the two); the next commit of {ref} "
                         f"records it, and GC removes it{until}")
            continue
        try:
            st = store.status(bref)
        except NotFound:
            continue  # a record without data: the next writer starts it empty
        if st.holder:
            continue  # being written right now
        total = f" of {st.total}" if st.total else ""
        who = f", {dead[(ns, ref)]}" if (ns, ref) in dead else ""
        until = f"; kept until {format_time(exp)}" if exp else ""
        notes.append(f"note: resumable partial ingest {ref} (namespace {ns}), "
                     f"{st.offset}{total} bytes{who}{until}")
    return notes
