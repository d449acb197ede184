"""The collector: mark in a read transaction, sweep records in small batches, then delete files
and call backends with no lock held that writers wait on.

One plan for both runs. :meth:`Collector.collect` with ``dry_run`` computes the :class:`Plan`
from a read transaction and reports it; without, it sweeps the records and then computes the
same plan from what survived, and carries it out. So on a quiet store the dry run lists
exactly what the real run removes, byte totals included (blob files by size, backend snapshots
by their usage).

What is never removed: anything a root reaches (:mod:`.scan`), plus every snapshot in use by a
mount — named by a mount record under ``<state>/mounts`` (``pins``) or used by a kernel mount
(each backend's ``mounted()``: bind sources, overlay layers, devices) — and every backend object
a kernel mount uses even when no record names it. ``gc --why`` shows such a snapshot as
"mounted at DIR".

Concurrency without stalling writers: every metadata write bumps the ``epoch``, and while a
collection runs, every write also logs the keys it put (the write barrier of
:mod:`cargohold.metadata.db`). Each sweep batch is one small write transaction; when the
epoch moved since the mark, the batch first reads what was written meanwhile and spares every
node those writes name or reach (through the marked graph) — checked inside the batch's
transaction, so nothing slips in between. No mark is ever redone or taken inside a write
transaction: a writer waits for at most one batch, and the collector is never starved.
Blob files are unlinked under the store's per-digest lock
after re-checking that no namespace records the digest, so a concurrent commit of the same
digest (which writes its record under that lock) is never undone. Backend snapshots are
unrecorded under the snapshotter's exclusive lock (so no prepare or commit is between its
backend call and its record), but that lock covers only a rename (``remove(defer=True)``);
the deletion itself (rmtree, subvolume delete, zfs destroy) runs in ``cleanup()`` after the
lock is let go.

A backend this host cannot open is an error in the result (and ``hold gc`` exits 1), never a
silent skip: its records are still swept, its objects are not.
"""

from __future__ import annotations

import gc as pygc
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cargohold._fsutil import FileLock
from cargohold._record import field, record
from cargohold.errors import CargoholdError, NotFound, Unavailable
from cargohold.gc.mark import (
    CONTAINER,
    CONTENT,
    IMAGE,
    INGEST,
    LEASE,
    SNAPSHOT,
    Node,
    mark,
    paths,
)
from cargohold.gc.scan import Graph, _label_target, order_for_removal, scan, unreferenced_reason
from cargohold.metadata import content, images, leases, namespaces
from cargohold.metadata import snapshot_records as snaprec
from cargohold.metadata.content import recorded_anywhere
from cargohold.metadata.db import DB, Tx, begin_barrier, end_barrier, epoch, writes_since
from cargohold.metadata.gcrecords import written_records
from cargohold.metadata.snapshotter import Pin, backend_lock
from cargohold.snapshotters.api import children_first
from cargohold.types import now_ns

BATCH_PAUSE = 0.002  # seconds between sweep batches, for writers waiting on the lock
BARRIER_TTL = 600 * 10**9  # a killed collector's barrier stops by itself after this (ns)

SnapshotterLookup = Callable[[str], Any]
"""Maps a snapshotter name to an open backend; raises CargoholdError when it cannot."""


@record
class Removed:
    """One thing the collector removed (or would remove).

    ``kind``: content, image, snapshot, lease, ingest (records); blob-file, ingest-dir and
    backend-snapshot (``<snapshotter>/<backend name>``) for what is on disk.
    """

    kind: str
    ns: str
    key: str
    size: int = 0


@record
class Result:
    """What a collection did."""

    removed: list[Removed] = field(default_factory=list)
    bytes_freed: int = 0
    mark_seconds: float = 0.0
    sweep_seconds: float = 0.0
    backend_seconds: float = 0.0
    retries: int = 0  # sweep batches that had to spare what concurrent writes reached
    longest_batch_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False

    def add(self, r: Removed) -> None:
        self.removed.append(r)
        self.bytes_freed += r.size


@record
class Plan:
    """What is on disk with nothing left to keep it, for one graph (records come apart)."""

    files: list[tuple[str, int]] = field(default_factory=list)  # digest, size
    ingests: list[tuple[str, int]] = field(default_factory=list)  # backend ref, bytes
    # snapshotter -> [(backend name, size)], children before parents
    backend: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


_KINDS = {CONTENT: "content", IMAGE: "image", SNAPSHOT: "snapshot", LEASE: "lease",
          INGEST: "ingest"}


class Collector:
    """Garbage collection over one root (all namespaces).

    ``snapshotters`` opens a backend by name (raising CargoholdError when this host cannot);
    ``pins`` lists the snapshots mount records name (see the module docstring).
    """

    def __init__(self, db: DB, store: Any, snapshotters: SnapshotterLookup | None = None, *,
                 batch: int = 500, lock_path: str | None = None,
                 pins: Callable[[], list[Pin]] | None = None) -> None:
        self.db = db
        self.store = store  # a LocalStore: blob_path, walk, delete(check=), ingest_refs, abort
        self.snapshotters = snapshotters
        self.batch = batch
        self.lock_path = lock_path
        self.pins = pins or (lambda: [])
        self.root = os.path.dirname(os.path.abspath(db.path))
        # Per collection: open backends and what kernel mounts use (backend names).
        self._backends: dict[str, Any] = {}
        self._mounted: dict[str, dict[str, list[str]]] = {}
        self._unopened: dict[str, str] = {}  # snapshotter -> why it cannot be opened

    # --- marking -------------------------------------------------------------------------
    def graph(self, tx: Tx) -> tuple[Graph, set[Node]]:
        # Scan and mark allocate a few hundred thousand small tuples and make no reference
        # cycles; Python's cyclic collector would walk the growing heap again and again while
        # they do (about a fifth of the mark's time on 100,000 blobs), so it rests meanwhile.
        was = pygc.isenabled()
        pygc.disable()
        try:
            g = scan(tx, now_ns())
            self._add_mount_roots(g)
            live = mark((r for r, _ in g.roots), g.refs)
        finally:
            if was:
                pygc.enable()
        return g, live

    def _add_mount_roots(self, g: Graph) -> None:
        for p in self.pins():
            g.roots.append(((SNAPSHOT, p.ns, f"{p.snapshotter}/{p.key}"), p.reason))
        if not self._mounted:
            return
        for n, bname in g.snapshot_name.items():
            sn = n[2].split("/", 1)[0]
            for target in self._mounted.get(sn, {}).get(bname, ()):
                g.roots.append((n, f"mounted at {target}"))

    def unopenable(self) -> dict[str, str]:
        """Snapshotter -> why it cannot be opened, for each one that records or directories
        name: what :meth:`collect` would report as errors (and ``hold gc`` exit 1 for); empty
        when GC reaches every backend. Reads no mounts and removes nothing.
        """
        self._open_backends(Result(), mounts=False)
        return dict(self._unopened)

    def _open_backends(self, res: Result, *, mounts: bool = True) -> None:
        """Open every snapshotter that records or directories name; read what is mounted."""
        self._backends.clear()
        self._mounted.clear()
        self._unopened.clear()
        with self.db.view() as tx:
            names = set(_snapshot_names(tx))
        sdir = os.path.join(self.root, "snapshots")
        if os.path.isdir(sdir):
            names.update(e for e in os.listdir(sdir) if os.path.isdir(os.path.join(sdir, e)))
        if not names or self.snapshotters is None:
            return
        from cargohold.mount import MountUsers

        users = MountUsers() if mounts else None
        for sn in sorted(names):
            try:
                backend = self.snapshotters(sn)
            except CargoholdError as exc:
                self._unopened[sn] = str(exc)
                res.errors.append(f"snapshotter {sn}: cannot open it, so its snapshots were "
                                  f"not collected: {exc}")
                continue
            self._backends[sn] = backend
            if users is not None:
                self._mounted[sn] = backend.mounted(users)

    def why(self, obj: str) -> list[list[tuple[Node, str]]]:
        """For each namespace where ``obj`` is alive: the chain from a root to it.

        ``obj`` is a digest, ``snapshot/<snapshotter>/<key>``, ``image/<name>``,
        ``lease/<id>`` or ``ingest/<ref>``. Raises NotFound when no namespace has it.
        """
        kind, key = _parse_object(obj)
        self._open_backends(Result())
        with self.db.view() as tx:
            g = scan(tx, now_ns())
        self._add_mount_roots(g)
        targets = [Node(*n) for n in g.nodes if n[0] == kind and n[2] == key]
        if not targets:
            raise NotFound(f"{obj}: not found in any namespace",
                           hint="give a digest, snapshot/<snapshotter>/<key>, image/<name>, "
                                "lease/<id> or ingest/<ref>")
        chains = []
        roots = [Node(*r) for r, _ in g.roots]
        reasons: dict[Node, str] = {}
        for r, why in g.roots:  # a node can be a root several times over: say every reason
            n = Node(*r)
            if why not in reasons.get(n, "").split("; "):
                reasons[n] = f"{reasons[n]}; {why}" if n in reasons else why
        for t in targets:
            chain = paths(roots, g.refs_why, t)
            if chain is None:
                chains.append([(t, unreferenced_reason(g, t))])
            else:
                first, _ = chain[0]
                chain[0] = (first, reasons.get(first, reasons.get(first.flat(), "root")))
                chains.append(chain)
        return chains

    # --- collecting ----------------------------------------------------------------------
    def collect(self, *, dry_run: bool = False) -> Result:
        """Run one collection (or, with ``dry_run``, list what it would remove)."""
        res = Result(dry_run=dry_run)
        if not dry_run:
            self.db.check_writable()  # a read-only root: say so, even with nothing to remove
        lock = FileLock(self.lock_path, "gc") if self.lock_path else None
        if lock is not None:
            lock.acquire(wait=False)
        try:
            self._open_backends(res)
            if dry_run:
                t = time.monotonic()
                with self.db.view() as tx:
                    g, live = self.graph(tx)
                res.mark_seconds = time.monotonic() - t
                for n in order_for_removal(g, g.nodes - live):
                    res.add(Removed(_KINDS[n.type], n.ns, n.key))
                self._report(self._plan(g, live, res), res)
            else:
                g, live = self._sweep(res)
                t = time.monotonic()
                self._carry_out(self._plan(g, live, res), res)
                res.backend_seconds = time.monotonic() - t
        finally:
            self._backends.clear()
            if lock is not None:
                lock.release()
        return res

    def _sweep(self, res: Result) -> tuple[Graph, set[Node]]:
        """Remove unreachable records; return the graph and live set they were judged by."""
        with self.db.update() as tx:
            begin_barrier(tx, now_ns() + BARRIER_TTL)
        try:
            t = time.monotonic()
            with self.db.view() as tx:
                g, live = self.graph(tx)
                seen = epoch(tx)
            res.mark_seconds += time.monotonic() - t
            doomed = order_for_removal(g, g.nodes - live)
            t = time.monotonic()
            i = 0
            while i < len(doomed):
                with self.db.update() as tx:
                    b0 = time.monotonic()
                    now = epoch(tx)
                    if now != seen:
                        # Others wrote since the mark: spare what their writes reach.
                        saved = _reached(g, live, _written_nodes(tx, writes_since(tx, seen)))
                        if saved:
                            doomed = doomed[:i] + [n for n in doomed[i:] if n not in saved]
                            live |= saved
                        res.retries += 1
                        seen = now
                    batch = doomed[i:i + self.batch]
                    for n in batch:
                        self._remove_record(tx, n, res)
                    seen = seen + 1 if tx.dirty else seen
                res.longest_batch_seconds = max(res.longest_batch_seconds,
                                                time.monotonic() - b0)
                i += len(batch)
                if i < len(doomed):
                    # LMDB's writer lock is no queue: taken again at once, the next batch
                    # would win it before a woken writer runs, and a writer could wait
                    # through several batches. A pause lets it in: one batch at most.
                    time.sleep(BATCH_PAUSE)
            res.sweep_seconds += time.monotonic() - t
            return g, live
        finally:
            with self.db.update() as tx:
                end_barrier(tx)

    def _remove_record(self, tx: Tx, n: Node, res: Result) -> None:
        if n.type == CONTENT:
            content.delete_record(tx, n.ns, n.key)
        elif n.type == IMAGE:
            images.delete(tx, n.ns, n.key)
        elif n.type == LEASE:
            leases.delete(tx, n.ns, n.key)
        elif n.type == INGEST:
            content.delete_ingest_record(tx, n.ns, n.key)
        elif n.type == SNAPSHOT:
            sn, _, key = n.key.partition("/")
            try:
                snaprec.remove(tx, n.ns, sn, key)
            except CargoholdError as exc:  # a child appeared: not ours to remove now
                res.errors.append(str(exc))
                return
        res.add(Removed(_KINDS[n.type], n.ns, n.key))

    # --- what is on disk with nothing to keep it -------------------------------------------
    def _plan(self, g: Graph, live: set[Node], res: Result) -> Plan:
        """The files, ingests and backend snapshots that no surviving record keeps."""
        plan = Plan()
        keep = _surviving_digests(g, live)
        for d in self._blob_digests():
            if d not in keep:
                plan.files.append((d, self._file_size(d)))
        live_brefs = {g.ingest_bref[n] for n in g.ingest_bref if n in live}
        for st in self.store.list_statuses():
            if st.ref not in live_brefs and not st.holder:
                plan.ingests.append((st.ref, st.offset))
        kept_names: dict[str, set[str]] = {}
        for n, bname in g.snapshot_name.items():
            if n in live:
                kept_names.setdefault(n[2].split("/", 1)[0], set()).add(bname)
        for sn, backend in self._backends.items():
            doomed = _backend_doomed(backend, kept_names.get(sn, set()),
                                     set(self._mounted.get(sn, {})))
            sizes = []
            for name in doomed:
                try:
                    sizes.append((name, backend.usage(name).size))
                except CargoholdError as exc:
                    res.errors.append(f"snapshot {name} on {sn}: cannot measure it: {exc}")
                    sizes.append((name, 0))
            if sizes:
                plan.backend[sn] = sizes
        return plan

    def _report(self, plan: Plan, res: Result) -> None:
        for d, size in plan.files:
            res.add(Removed("blob-file", "", d, size))
        for ref, size in plan.ingests:
            res.add(Removed("ingest-dir", "", ref, size))
        for sn, items in plan.backend.items():
            for name, size in items:
                res.add(Removed("backend-snapshot", "", f"{sn}/{name}", size))

    def _carry_out(self, plan: Plan, res: Result) -> None:
        # Blob files no namespace records (swept now, or orphaned by a crash). Unlinks wait
        # on the disk and release the GIL, so a few run at once.
        def unrecorded(d: str) -> bool:
            with self.db.view() as tx:
                return not recorded_anywhere(tx, d)

        def drop(item: tuple[str, int]) -> tuple[str, int, str]:
            d, size = item
            try:
                self.store.delete(d, check=unrecorded)
            except NotFound:
                return d, -1, ""
            except CargoholdError as exc:
                return d, -1, str(exc)
            return d, size if not os.path.exists(self.store.blob_path(d)) else -1, ""

        with ThreadPoolExecutor(max_workers=4) as pool:
            for d, size, err in pool.map(drop, plan.files):
                if err:
                    res.errors.append(err)
                elif size >= 0:
                    res.add(Removed("blob-file", "", d, size))
        # Backend ingests nobody records (expired, aborted, or a crash before the record).
        for ref, size in plan.ingests:
            try:
                self.store.abort(ref)
                res.add(Removed("ingest-dir", "", ref, size))
            except (NotFound, Unavailable):
                continue  # finished meanwhile, or a writer is still on it
        for sn, items in plan.backend.items():
            self._prune_backend(sn, self._backends[sn], dict(items), res)

    def _prune_backend(self, sn: str, backend: Any, sizes: dict[str, int],
                       res: Result) -> None:
        # Under the snapshotter's exclusive lock no prepare/commit is between its backend call
        # and its record; what to keep is read again under it. Only renames happen inside.
        with backend_lock(self.db, sn).exclusive():
            with self.db.view() as tx:
                keep = _snapshot_names(tx).get(sn, set())
            doomed = _backend_doomed(backend, keep, set(self._mounted.get(sn, {})))
            for name in doomed:
                if name not in sizes:
                    continue  # appeared after the plan: the next collection judges it
                try:
                    backend.remove(name, defer=True)
                    res.add(Removed("backend-snapshot", "", f"{sn}/{name}", sizes[name]))
                except CargoholdError as exc:
                    res.errors.append(f"snapshot {name} on {sn}: {exc}")
        # The slow part, with no lock held that a writer waits on.
        try:
            backend.cleanup()
        except CargoholdError as exc:
            res.errors.append(f"snapshotter {sn} cleanup: {exc}")

    def _blob_digests(self) -> list[str]:
        """Every committed blob's digest, from directory names alone (no stat per file)."""
        out: list[str] = []
        root = os.path.join(self.store.root, "blobs")
        for alg in ("sha256", "sha512"):
            try:
                names = os.listdir(os.path.join(root, alg))
            except FileNotFoundError:
                continue
            out.extend(f"{alg}:{name}" for name in names)
        return out

    def _file_size(self, digest: str) -> int:
        try:
            return os.stat(self.store.blob_path(digest)).st_size
        except (FileNotFoundError, ValueError, CargoholdError):
            return 0


def _backend_doomed(backend: Any, keep: set[str], mounted: set[str]) -> list[str]:
    """Backend snapshots neither kept nor mounted, nor below one that is: children first."""
    infos: list[Any] = []
    backend.walk(infos.append)
    parent = {i.name: i.parent for i in infos}
    spared = set()
    for name in keep | mounted:
        while name and name not in spared:
            spared.add(name)
            name = parent.get(name, "")

    return children_first(sorted(n for n in parent if n not in spared), parent)


def _parse_object(obj: str) -> tuple[int, str]:
    if obj.startswith(("sha256:", "sha512:")):
        return CONTENT, obj
    kind, _, key = obj.partition("/")
    table = {"snapshot": SNAPSHOT, "image": IMAGE, "lease": LEASE, "ingest": INGEST,
             "content": CONTENT}
    if kind in table and key:
        return table[kind], key
    from cargohold.errors import InvalidArgument

    raise InvalidArgument(f"object {obj!r}: not understood",
                          hint="give a digest, snapshot/<snapshotter>/<key>, image/<name>, "
                               "lease/<id> or ingest/<ref>")


_KIND_TYPES = {"content": CONTENT, "image": IMAGE, "ingest": INGEST, "snapshot": SNAPSHOT,
               "lease": LEASE, "container": CONTAINER}


def _written_nodes(tx: Tx, writes: list[tuple[str, str]]) -> set[tuple[int, str, str]]:
    """Every node a logged write touched or names (:func:`written_records`: the record
    written, what its value refers to), plus the targets of the gc.ref labels it wrote.
    Over-approximate on purpose: sparing too much only leaves garbage for the next collection.
    """
    touched, labels = written_records(tx, writes)
    out = {(_KIND_TYPES[kind], ns, key) for kind, ns, key in touched}
    for ns, label, value in labels:
        t = _label_target(ns, label, value, "containerd.io/gc.ref.")
        if t is not None:
            out.add(t)
    return out


def _reached(g: Graph, live: set, starts: set) -> set:  # type: ignore[type-arg]
    """The nodes not yet live that ``starts`` reach through the marked graph's references."""
    saved: set = set()  # type: ignore[type-arg]
    stack = list(starts)
    while stack:
        n = stack.pop()
        if n in saved or n in live:
            continue  # what is live already has its whole closure live
        if n in g.nodes:
            saved.add(n)
        stack.extend(g.refs(n))
    return saved


def _surviving_digests(g: Graph, live: set) -> set[str]:  # type: ignore[type-arg]
    """Digests that surviving blob records or live ingests name."""
    keep = {n[2] for n in g.nodes & live if n[0] == CONTENT}
    for n in g.nodes & live:
        if n[0] == INGEST:
            keep.update(c[2] for c, _ in g.edges.get(n, ()))
    return keep


def _snapshot_names(tx: Tx) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for ns in namespaces.list_all(tx):
        for sn in snaprec.snapshotters(tx, ns):
            names = out.setdefault(sn, set())
            for key in snaprec.keys(tx, ns, sn):
                names.add(snaprec.get(tx, ns, sn, key).name)
    return out
