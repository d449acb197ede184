"""Check every snapshotter's backend against the snapshot records of all namespaces.

For each snapshotter that some namespace records snapshots on, or that has a root directory
under ``<root>/snapshots/<name>``:

- ``backend``: the backend's own check (``fsck(repair=...)`` of
  :class:`~cargohold.snapshotters._common.DirSnapshotter`: its bookkeeping against its objects).
  It runs first, so that what it drops shows up below in the same run.
- ``missing``: a namespace record whose backend snapshot does not exist (a crash between a
  backend commit and its record, or a backend repaired above). Repair: drop the record when no
  snapshot builds on it; records are visited children first, so a chain that is missing as a
  whole goes in one run.
- ``unreferenced``: a backend snapshot that no namespace records (a crash between a backend
  prepare and its record). Repair: remove it, children first, as ``hold gc`` would.
- ``snapshotter``: records exist but this host cannot open their backend; nothing is checked.

Everything is compared under the snapshotter's exclusive lock
(:class:`~cargohold.metadata.snapshotter.SnapshotterLock`), so a prepare or commit caught
between its backend call and its record is never taken for damage.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from cargohold.errors import CargoholdError
from cargohold.fsck.check import Problem
from cargohold.metadata import namespaces
from cargohold.metadata import snapshots as snaprec
from cargohold.metadata.db import DB
from cargohold.metadata.snapshots import SnapshotRecord
from cargohold.metadata.snapshotter import backend_lock
from cargohold.snapshotters.api import children_first

Lookup = Callable[[str], Any]


def _records(db: DB) -> dict[str, list[tuple[str, SnapshotRecord]]]:
    """(namespace, record) pairs of every namespace, by snapshotter."""
    out: dict[str, list[tuple[str, SnapshotRecord]]] = {}
    with db.view() as tx:
        for ns in namespaces.list_all(tx):
            for sn in snaprec.snapshotters(tx, ns):
                recs = out.setdefault(sn, [])
                for key in snaprec.keys(tx, ns, sn):
                    recs.append((ns, snaprec.get(tx, ns, sn, key)))
    return out


def check_snapshots(db: DB, lookup: Lookup, *, repair: bool = False,
                    root: str | None = None) -> tuple[list[Problem], int]:
    """Check (and with ``repair`` reconcile) every snapshotter; return (problems, records
    checked). ``root`` is the hold root (default: the parent of the metadata directory).
    """
    root = root or os.path.dirname(os.path.abspath(db.path))
    by_sn = _records(db)
    names = set(by_sn)
    sdir = os.path.join(root, "snapshots")
    if os.path.isdir(sdir):
        names.update(e for e in os.listdir(sdir) if os.path.isdir(os.path.join(sdir, e)))
    problems: list[Problem] = []
    checked = 0
    for sn in sorted(names):
        try:
            backend = lookup(sn)
        except CargoholdError:
            backend = None
        recs = by_sn.get(sn, [])
        if backend is None:
            if recs:
                problems.append(Problem(
                    "snapshotter", sn, f"cannot be opened on this host; its {len(recs)} "
                    "record(s) were not checked", ""))
            continue
        with backend_lock(db, sn).exclusive():
            problems += _backend_self(sn, backend, repair)
            n, found = _reconcile(db, sn, backend, repair)
        checked += n
        problems += found
    return problems, checked


def _backend_self(sn: str, backend: Any, repair: bool) -> list[Problem]:
    fsck = getattr(backend, "fsck", None)
    if fsck is None:
        return []
    found = fsck(repair=repair)
    left = set(fsck(repair=False)) if repair and found else set(found)
    return [Problem("backend", f"snapshotter {sn}", msg,
                    "reconcile the backend's bookkeeping with its objects",
                    repaired=repair and msg not in left) for msg in found]


def _reconcile(db: DB, sn: str, backend: Any, repair: bool) -> tuple[int, list[Problem]]:
    infos: list[Any] = []
    backend.walk(infos.append)
    bparent = {i.name: i.parent for i in infos}
    recs = _records(db).get(sn, [])  # again: the backend check may have changed things
    problems: list[Problem] = []

    # Records -> backend, children first so a wholly missing chain is dropped in one run.
    by_key = {(ns, r.key): (ns, r) for ns, r in recs}
    up = {(ns, r.key): (ns, r.parent) for ns, r in recs if r.parent}
    missing = [(ns, r.key) for ns, r in recs if r.name not in bparent]
    for ns, r in (by_key[k] for k in children_first(missing, up)):
        p = Problem("missing", f"namespace {ns} snapshot {r.key} on {sn}",
                    f"its backend snapshot {r.name} does not exist",
                    "drop the record if no snapshot builds on it")
        if repair:
            p.repaired = _drop_if_still_missing(db, ns, sn, r)
        problems.append(p)

    # Backend -> records, children first (a parent cannot go before its children).
    recorded = {r.name for _, r in recs}
    for name in children_first((n for n in bparent if n not in recorded), bparent):
        p = Problem("unreferenced", f"snapshot {name} on {sn}",
                    "no namespace records this backend snapshot (garbage)",
                    "remove it (as 'hold gc' would)")
        if repair:
            try:
                backend.remove(name)
                p.repaired = True
            except CargoholdError as exc:
                p.message += f"; could not remove it: {exc}"
        problems.append(p)
    if repair and any(p.repaired for p in problems if p.kind == "unreferenced"):
        backend.cleanup()
    return len(recs), problems


def _drop_if_still_missing(db: DB, ns: str, sn: str, r: SnapshotRecord) -> bool:
    with db.update() as tx:
        try:
            cur = snaprec.get(tx, ns, sn, r.key)
        except CargoholdError:
            return True  # gone meanwhile: nothing left to repair
        if cur.name != r.name or snaprec.children(tx, ns, sn, r.key):
            return False
        snaprec.remove(tx, ns, sn, r.key)
        return True
