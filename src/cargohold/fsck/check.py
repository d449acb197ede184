"""Check the blob store and the metadata against each other; repair what is safe to repair.

Checks, each named in the report with its subject:

- every blob file hashes to its name (``corrupt``), is read-only (``writable``), and has a
  well-formed name (``stray``);
- every namespace's content record has its blob (``missing``) with the recorded size (``size``);
- every blob is recorded by some namespace or expected by a live ingest (``unreferenced``);
- every backend ingest is readable and recorded (``ingest``), every ingest record unexpired,
  held by a live lease, or backed by data (``expired-ingest``);
- every image's target is recorded in its namespace (``image``); every snapshot record's
  parent and child links agree (``snapshot``);
- given a snapshotter lookup, every snapshot record against its backend and every backend
  against itself (``missing``, ``unreferenced``, ``backend``; see :mod:`.snapshots`);
- what interrupted work left: a dead owner's half-extracted snapshots (``interrupted
  unpack``), its lease and resumable partial ingests (notes; see :mod:`.leftovers`).

Repairs never lose data that could still be good: a corrupt blob is moved aside to
``content/corrupt/`` and its records dropped (so a re-import writes it again and heals every
image that needs it); records pointing at nothing are dropped; unreferenced blobs and orphan
ingests are removed (they are what GC would remove anyway). An image whose target is missing
is reported, not removed: re-importing or pulling it repairs it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cargohold._fsutil import fsync_dir, makedirs
from cargohold._record import field, record
from cargohold.errors import CargoholdError, NotFound, Unavailable
from cargohold.metadata import content, images, namespaces
from cargohold.metadata import snapshot_records as snaprec
from cargohold.metadata.content import (
    quarantine_records,
    read_info,
    recorded_anywhere,
)
from cargohold.metadata.db import DB
from cargohold.types import is_digest, now_ns

CHUNK = 1 << 20


@record
class Problem:
    """One thing fsck found."""

    kind: str
    subject: str
    message: str
    repair: str = ""  # what --repair does (empty: nothing safe to do)
    repaired: bool = False

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}: {self.message}"


@record
class Report:
    """What a check found and did."""

    problems: list[Problem] = field(default_factory=list)
    blobs_checked: int = 0
    bytes_checked: int = 0
    records_checked: int = 0
    ingests_checked: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # worth knowing, but not problems

    @property
    def clean(self) -> bool:
        return all(p.repaired for p in self.problems)


def hash_file(path: str, algorithm: str) -> tuple[str, int]:
    h = hashlib.new(algorithm)
    size = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            n = f.readinto(view)
            if not n:
                break
            h.update(view[:n])
            size += n
    return f"{algorithm}:{h.hexdigest()}", size


class Fsck:
    """One check of a root (all namespaces)."""

    def __init__(self, db: DB, store: Any, *, repair: bool = False, workers: int = 2,
                 progress: Callable[[str], None] | None = None,
                 snapshotters: Callable[[str], Any] | None = None) -> None:
        self.db = db
        self.store = store
        self.repair = repair
        self.workers = workers
        self.progress = progress or (lambda msg: None)
        # name -> open backend (or None): when given, snapshot records are also reconciled
        # with each backend (see fsck/snapshots.py).
        self.snapshotters = snapshotters

    def run(self) -> Report:
        if self.repair:
            self.db.check_writable()  # a read-only root: say so before checking anything
        t = time.monotonic()
        rep = Report()
        self._corrupt: set[str] = set()
        files = self._check_blob_files(rep)
        from cargohold.fsck.needed import check_needed

        found, notes = check_needed(self.db, set() if self.repair else self._corrupt,
                                    set(files), repair=self.repair)
        rep.problems += found
        rep.notes += notes
        self._check_records(rep, files)
        self._check_unreferenced(rep, files)
        self._check_ingests(rep)
        self._check_images_and_snapshots(rep)
        if self.snapshotters is not None:
            from cargohold.fsck.snapshots import check_snapshots

            found, n = check_snapshots(self.db, self.snapshotters, repair=self.repair)
            rep.problems += found
            rep.records_checked += n
        from cargohold.fsck.leftovers import check_leftovers

        found, notes = check_leftovers(self.db, self.store, self.snapshotters,
                                       repair=self.repair)
        rep.problems += found
        rep.notes += notes
        rep.seconds = time.monotonic() - t
        return rep

    # --- blob files ----------------------------------------------------------------------
    def _check_blob_files(self, rep: Report) -> dict[str, int]:
        """Hash every blob; return the good ones as digest -> size."""
        root = os.path.join(self.store.root, "blobs")
        todo: list[tuple[str, str]] = []
        for alg in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            d = os.path.join(root, alg)
            for name in sorted(os.listdir(d)):
                digest = f"{alg}:{name}"
                if not is_digest(digest) or not os.path.isfile(os.path.join(d, name)):
                    p = Problem("stray", os.path.join(d, name),
                                "not a blob (bad name or not a regular file)", "remove it")
                    if self.repair:
                        _remove(os.path.join(d, name))
                        p.repaired = True
                    rep.problems.append(p)
                    continue
                todo.append((digest, os.path.join(d, name)))
        good: dict[str, int] = {}

        def one(item: tuple[str, str]) -> tuple[str, str, str, int, int]:
            digest, path = item
            st = os.stat(path)
            got, size = hash_file(path, digest.split(":")[0])
            return digest, path, got, size, st.st_mode

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for digest, path, got, size, mode in pool.map(one, todo):
                rep.blobs_checked += 1
                rep.bytes_checked += size
                if got != digest:
                    self._corrupt.add(digest)
                    p = Problem("corrupt", digest, f"content hashes to {got}",
                                "move it aside to content/corrupt/ (its records wait for the "
                                "blob's next import, which restores them in every namespace)")
                    if self.repair:
                        self._quarantine(digest, path)
                        p.repaired = True
                    rep.problems.append(p)
                    continue
                if mode & 0o222:
                    p = Problem("writable", digest, "blob file is writable", "make it read-only")
                    if self.repair:
                        os.chmod(path, 0o444)
                        p.repaired = True
                    rep.problems.append(p)
                good[digest] = size
        return good

    def _quarantine(self, digest: str, path: str) -> None:
        aside = os.path.join(self.store.root, "corrupt")
        makedirs(aside, sync=True)
        with self.store.locks.hold(digest):
            dest = os.path.join(aside, f"{digest.replace(':', '-')}-{time.time_ns()}")
            os.replace(path, dest)
            fsync_dir(aside)
            with self.db.update() as tx:
                quarantine_records(tx, digest)

    # --- records -> store ----------------------------------------------------------------
    def _check_records(self, rep: Report, files: dict[str, int]) -> None:
        with self.db.view() as tx:
            recs = [(ns, d, read_info(tx, ns, d)) for ns in namespaces.list_all(tx)
                    for d in content.digests(tx, ns)]
        for ns, d, info in recs:
            rep.records_checked += 1
            if d in files and info is not None and info.size == files[d]:
                continue
            if d not in files:
                if os.path.exists(self.store.blob_path(d)):
                    continue  # corrupt: already reported and handled above
                p = Problem("missing", f"namespace {ns} content {d}",
                            "record has no blob file", "drop the record")
                if self.repair:
                    self._drop_record_if_still_missing(ns, d)
                    p.repaired = True
            else:
                got = info.size if info else -1
                p = Problem("size", f"namespace {ns} content {d}",
                            f"record says {got} bytes, blob has {files[d]}",
                            "set the record to the verified size")
                if self.repair:
                    with self.db.update() as tx:
                        content.set_size(tx, ns, d, files[d])
                    p.repaired = True
            rep.problems.append(p)

    def _drop_record_if_still_missing(self, ns: str, d: str) -> None:
        with self.store.locks.hold(d):
            if not os.path.exists(self.store.blob_path(d)):
                with self.db.update() as tx:
                    content.delete_record(tx, ns, d)

    # --- store -> records ----------------------------------------------------------------
    def _check_unreferenced(self, rep: Report, files: dict[str, int]) -> None:
        for d in files:
            with self.db.view() as tx:
                if recorded_anywhere(tx, d):
                    continue
            p = Problem("unreferenced", d, "no namespace records this blob (garbage)",
                        "remove it (as 'hold gc' would)")
            if self.repair:

                def still(dd: str) -> bool:
                    with self.db.view() as tx:
                        return not recorded_anywhere(tx, dd)

                try:
                    self.store.delete(d, check=still)
                except NotFound:
                    pass
                p.repaired = not os.path.exists(self.store.blob_path(d))
            rep.problems.append(p)

    # --- ingests -------------------------------------------------------------------------
    def _check_ingests(self, rep: Report) -> None:
        with self.db.view() as tx:
            recs: dict[str, tuple[str, str, int]] = {}
            for ns in namespaces.list_all(tx):
                for r in content.ingest_records(tx, ns):
                    recs[r.bref] = (ns, r.ref, r.expire_at)
        backend = set()
        for st in self.store.list_statuses():
            rep.ingests_checked += 1
            backend.add(st.ref)
            if st.total and st.offset > st.total:
                rep.problems.append(Problem("ingest", st.ref,
                                            f"has {st.offset} bytes, more than its total "
                                            f"{st.total}", "abort it"))
                if self.repair:
                    self._abort(st.ref, rep)
                continue
            if st.ref not in recs:
                p = Problem("ingest", st.ref, "no namespace records this ingest (orphan)",
                            "abort it")
                if self.repair:
                    p.repaired = self._abort(st.ref, rep)
                rep.problems.append(p)
        from cargohold.fsck.leftovers import held_ingests

        now = now_ns()
        expired = {bref: v for bref, v in recs.items() if v[2] and v[2] < now}
        # A live lease keeps an ingest past its own expiry; the leases are read only when
        # some ingest expired (fsck's leftovers check reads them again for its own report).
        held = held_ingests(self.db) if expired else set()
        for bref, (ns, ref, _exp) in expired.items():
            if (ns, ref) not in held:
                p = Problem("expired-ingest", f"namespace {ns} ingest {ref}",
                            "expired; nothing protects it", "drop the record and its data")
                if self.repair:
                    with self.db.update() as tx:
                        content.delete_ingest_record(tx, ns, ref)
                    p.repaired = bref not in backend or self._abort(bref, rep)
                rep.problems.append(p)

    def _abort(self, bref: str, rep: Report) -> bool:
        try:
            self.store.abort(bref)
            return True
        except NotFound:
            return True
        except Unavailable:
            return False  # a writer is on it right now: not an orphan after all

    # --- images and the snapshot index ---------------------------------------------------
    def _check_images_and_snapshots(self, rep: Report) -> None:
        with self.db.view() as tx:
            for ns in namespaces.list_all(tx):
                for img in images.list_images(tx, ns):
                    if not content.has_record(tx, ns, img.target.digest):
                        rep.problems.append(Problem(
                            "image", f"namespace {ns} image {img.name}",
                            f"target {img.target.digest} is not in the store",
                            ""))
                for sn in snaprec.snapshotters(tx, ns):
                    for key in snaprec.keys(tx, ns, sn):
                        try:
                            rec = snaprec.get(tx, ns, sn, key)
                        except CargoholdError:
                            continue
                        if rec.parent and not snaprec.exists(tx, ns, sn, rec.parent):
                            rep.problems.append(Problem(
                                "snapshot", f"namespace {ns} snapshot {key} on {sn}",
                                f"parent {rec.parent} has no record", ""))
                        for child in snaprec.children(tx, ns, sn, key):
                            if not snaprec.exists(tx, ns, sn, child):
                                rep.problems.append(Problem(
                                    "snapshot", f"namespace {ns} snapshot {key} on {sn}",
                                    f"child link to missing {child}", ""))


def _remove(path: str) -> None:
    import shutil

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.unlink(path)
