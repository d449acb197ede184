"""The collector: mark in a read transaction, sweep records in small batches, then delete files
and call backends with no metadata lock held.

Concurrency without stalling writers: every metadata write bumps the ``epoch``. The sweep
removes a batch only if the epoch is still the one it marked at (checked inside the batch's
write transaction, so nothing can slip in between); if another process wrote meanwhile, the
mark is redone. After a few lost races the last attempt marks inside the write transaction
(a bounded stall, never starvation). Blob files are unlinked under the store's per-digest lock
after re-checking that no namespace records the digest, so a concurrent commit of the same
digest (which writes its record under that lock) is never undone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cargohold._fsutil import FileLock
from cargohold.errors import CargoholdError, NotFound, Unavailable
from cargohold.gc.mark import CONTENT, IMAGE, INGEST, LEASE, SNAPSHOT, Node, mark, paths
from cargohold.gc.scan import Graph, order_for_removal, scan
from cargohold.metadata import namespaces
from cargohold.metadata import snapshots as snaprec
from cargohold.metadata.content import blob_path, ingest_path, recorded_anywhere
from cargohold.metadata.db import DB, Tx, epoch
from cargohold.metadata.schema import ns_bucket, ns_path
from cargohold.types import now_ns

SnapshotterLookup = Callable[[str], Any]
"""Maps a snapshotter name to an open backend (or None when it is not available here)."""


@dataclass
class Removed:
    """One thing the collector removed (or would remove)."""

    kind: str  # content, image, snapshot, lease, ingest, blob-file, ingest-dir
    ns: str
    key: str
    size: int = 0


@dataclass
class Result:
    """What a collection did."""

    removed: list[Removed] = field(default_factory=list)
    bytes_freed: int = 0
    mark_seconds: float = 0.0
    sweep_seconds: float = 0.0
    backend_seconds: float = 0.0
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False


_KINDS = {CONTENT: "content", IMAGE: "image", SNAPSHOT: "snapshot", LEASE: "lease",
          INGEST: "ingest"}


class Collector:
    """Garbage collection over one root (all namespaces)."""

    def __init__(self, db: DB, store: Any, snapshotters: SnapshotterLookup | None = None, *,
                 batch: int = 500, attempts: int = 4, lock_path: str | None = None) -> None:
        self.db = db
        self.store = store  # a LocalStore: blob_path, walk, delete(check=), ingest_refs, abort
        self.snapshotters = snapshotters or (lambda name: None)
        self.batch = batch
        self.attempts = attempts
        self.lock_path = lock_path

    # --- marking -------------------------------------------------------------------------
    def graph(self, tx: Tx) -> tuple[Graph, set[Node]]:
        g = scan(tx, now_ns())
        live = mark((r for r, _ in g.roots), g.refs)
        return g, live

    def why(self, obj: str) -> list[list[tuple[Node, str]]]:
        """For each namespace where ``obj`` is alive: the chain from a root to it.

        ``obj`` is a digest, ``snapshot/<snapshotter>/<key>``, ``image/<name>``,
        ``lease/<id>`` or ``ingest/<ref>``. Raises NotFound when no namespace has it.
        """
        kind, key = _parse_object(obj)
        with self.db.view() as tx:
            g = scan(tx, now_ns())
        targets = [Node(*n) for n in g.nodes if n[0] == kind and n[2] == key]
        if not targets:
            raise NotFound(f"{obj}: not found in any namespace",
                           hint="give a digest, snapshot/<snapshotter>/<key>, image/<name>, "
                                "lease/<id> or ingest/<ref>")
        chains = []
        roots = [Node(*r) for r, _ in g.roots]
        reasons = {r: why for r, why in g.roots}
        for t in targets:
            chain = paths(roots, g.refs_why, t)
            if chain is None:
                chains.append([(t, "unreferenced")])
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
            if dry_run:
                self._plan(res)
            else:
                survivors = self._sweep(res)
                t = time.monotonic()
                self._backends(res, survivors)
                res.backend_seconds = time.monotonic() - t
        finally:
            if lock is not None:
                lock.release()
        return res

    def _plan(self, res: Result) -> None:
        t = time.monotonic()
        with self.db.view() as tx:
            g, live = self.graph(tx)
        res.mark_seconds = time.monotonic() - t
        for n in order_for_removal(g, g.nodes - live):
            res.removed.append(Removed(_KINDS[n.type], n.ns, n.key))
        # A file survives when a record that survives (or a live ingest) still names it.
        keep = _surviving_digests(g, live)
        for d in self._blob_digests():
            if d not in keep:
                size = self._file_size(d)
                res.removed.append(Removed("blob-file", "", d, size))
                res.bytes_freed += size

    def _sweep(self, res: Result) -> set[str]:
        """Remove unreachable records; return the digests the surviving records name."""
        for attempt in range(self.attempts):
            last = attempt == self.attempts - 1
            if last:
                # Lost the race too often: mark and sweep inside one write transaction.
                with self.db.update() as tx:
                    t = time.monotonic()
                    g, live = self.graph(tx)
                    res.mark_seconds += time.monotonic() - t
                    doomed = order_for_removal(g, g.nodes - live)
                    for n in doomed:
                        self._remove_record(tx, g, n, res)
                return _surviving_digests(g, live)
            t = time.monotonic()
            with self.db.view() as tx:
                g, live = self.graph(tx)
                seen = epoch(tx)
            res.mark_seconds += time.monotonic() - t
            doomed = order_for_removal(g, g.nodes - live)
            t = time.monotonic()
            ok = True
            for i in range(0, len(doomed), self.batch):
                with self.db.update() as tx:
                    if epoch(tx) != seen:
                        ok = False
                        break
                    for n in doomed[i:i + self.batch]:
                        self._remove_record(tx, g, n, res)
                    seen = seen + 1 if tx.dirty else seen
            res.sweep_seconds += time.monotonic() - t
            if ok:
                return _surviving_digests(g, live)
            res.retries += 1
        return set()

    def _remove_record(self, tx: Tx, g: Graph, n: Node, res: Result) -> None:
        if n.type == CONTENT:
            tx.delete_tree(blob_path(n.ns, n.key))
        elif n.type == IMAGE:
            tx.delete_tree(ns_path(n.ns, "images", n.key))
        elif n.type == LEASE:
            tx.delete_tree(ns_path(n.ns, "leases", n.key))
        elif n.type == INGEST:
            tx.delete_tree(ingest_path(n.ns, n.key))
        elif n.type == SNAPSHOT:
            sn, _, key = n.key.partition("/")
            try:
                snaprec.remove(tx, n.ns, sn, key)
            except CargoholdError as exc:  # a child appeared: not ours to remove now
                res.errors.append(str(exc))
                return
        res.removed.append(Removed(_KINDS[n.type], n.ns, n.key))

    # --- after the metadata: files and backends, no metadata lock held --------------------
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

    def _backends(self, res: Result, recorded: set[str]) -> None:
        # ``recorded`` comes from the mark: a blob recorded after it is not in the set, but
        # the check under the digest lock below looks again before anything is deleted.
        with self.db.view() as tx:
            live_brefs = _ingest_brefs(tx)
            snap_names = _snapshot_names(tx)
        # Blob files no namespace records (swept now, or orphaned by a crash). Unlinks wait
        # on the disk and release the GIL, so a few run at once.
        def unrecorded(d: str) -> bool:
            with self.db.view() as tx:
                return not recorded_anywhere(tx, d)

        def drop(d: str) -> tuple[str, int, str]:
            size = self._file_size(d)
            try:
                self.store.delete(d, check=unrecorded)
            except NotFound:
                return d, 0, ""
            except CargoholdError as exc:
                return d, 0, str(exc)
            gone = not os.path.exists(self.store.blob_path(d))
            return d, size if gone else -1, ""

        doomed = [d for d in self._blob_digests() if d not in recorded]
        with ThreadPoolExecutor(max_workers=4) as pool:
            for d, size, err in pool.map(drop, doomed):
                if err:
                    res.errors.append(err)
                elif size >= 0 and (size or os.path.exists(self.store.root)):
                    res.removed.append(Removed("blob-file", "", d, size))
                    res.bytes_freed += size
        # Backend ingests nobody records (expired, aborted, or a crash before the record).
        for bref in self.store.ingest_refs():
            if bref in live_brefs:
                continue
            try:
                self.store.abort(bref)
                res.removed.append(Removed("ingest-dir", "", bref))
            except (NotFound, Unavailable):
                continue  # finished meanwhile, or a writer is still on it
        # Snapshots: remove backend snapshots no namespace records, children first. Every
        # snapshotter any namespace uses, not only those that lost a record now: a crash
        # between a backend prepare and its record leaves garbage with no record to sweep.
        # Under the snapshotter's exclusive lock no prepare/commit is between its backend call
        # and its record, and what to keep is read again under it.
        from cargohold.metadata.snapshotter import backend_lock

        swept = {r.key.split("/", 1)[0] for r in res.removed if r.kind == "snapshot"}
        for sn in sorted(swept | set(snap_names)):
            backend = self.snapshotters(sn)
            if backend is None:
                continue
            with backend_lock(self.db, sn).exclusive():
                with self.db.view() as tx:
                    keep = _snapshot_names(tx).get(sn, set())
                self._prune_backend(sn, backend, keep, res)

    def _prune_backend(self, sn: str, backend: Any, keep: set[str], res: Result) -> None:
        infos: list[Any] = []
        backend.walk(infos.append)
        parent = {i.name: i.parent for i in infos}

        def depth(name: str) -> int:
            d = 0
            while parent.get(name):
                name = parent[name]
                d += 1
            return d

        for name in sorted((i.name for i in infos if i.name not in keep), key=depth,
                           reverse=True):
            try:
                usage = backend.usage(name)
                backend.remove(name)
                res.bytes_freed += usage.size
            except CargoholdError as exc:
                res.errors.append(f"snapshot {name} on {sn}: {exc}")
        try:
            backend.cleanup()
        except CargoholdError as exc:
            res.errors.append(f"snapshotter {sn} cleanup: {exc}")


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


def _surviving_digests(g: Graph, live: set) -> set[str]:  # type: ignore[type-arg]
    """Digests that surviving blob records or live ingests name."""
    keep = {n[2] for n in g.nodes & live if n[0] == CONTENT}
    for n in g.nodes & live:
        if n[0] == INGEST:
            keep.update(c[2] for c, _ in g.edges.get(n, ()))
    return keep


def _ingest_brefs(tx: Tx) -> set[str]:
    out: set[str] = set()
    for ns in namespaces.list_all(tx):
        for ref in tx.children(ns_bucket(ns, "content", "ingests")):
            out.add(tx.get_str(ingest_path(ns, ref, "ref")))
    return out


def _snapshot_names(tx: Tx) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for ns in namespaces.list_all(tx):
        for sn in tx.children(ns_bucket(ns, "snapshots")):
            names = out.setdefault(sn, set())
            for key in snaprec.keys(tx, ns, sn):
                names.add(snaprec.get(tx, ns, sn, key).name)
    return out
