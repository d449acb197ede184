"""The per-namespace snapshotter: one shared backend seen through one namespace's records.

A backend (overlayfs, native, ...) is shared by every namespace; it never sees a user's key.
Each record of :mod:`cargohold.metadata.snapshot_records` maps a namespace key to a backend name
``<ns>/<seq>/<key>`` (the sequence is never reused, so a key removed and prepared again gets a
fresh backend snapshot). Parents are namespace keys, mapped to their backend names. A namespace
sees, stats, commits and removes only keys it recorded itself.

The metadata database and a backend are two stores with no common transaction, so every
mutation is ordered to leave at worst a backend snapshot that no record names, which GC's
backend prune (:meth:`cargohold.gc.collector.Collector._prune_backend`) and ``hold fsck
--repair`` remove:

- ``prepare``/``view``: tx1 checks the key is free and the parent recorded, and allocates the
  backend name; the backend creates the snapshot with no metadata transaction open (it may copy
  a whole tree); tx2 writes the record, the parent's child link and the lease entry. Any failure
  after the backend call removes the backend snapshot again. *Crash between the backend call and
  tx2*: an unrecorded backend snapshot, pruned by the next GC.
- ``commit``: tx1 checks and allocates ``<ns>/<seq>/<name>``; the backend commits to it; tx2
  renames the record (:func:`~cargohold.metadata.snapshot_records.rename`) and leases the
  name. *Crash between the backend commit and tx2*: the committed backend snapshot is
  unrecorded (GC prunes it) and the record of ``key`` names a backend snapshot that no longer
  exists (``hold fsck`` reports it as "missing" and ``--repair`` drops it). The window is one
  LMDB transaction long; a tx2 that fails without a crash (disk full) leaves the same, and
  raises.
- ``remove``: synchronous. The record goes first (refused while children exist); the backend
  snapshot is removed right after the transaction commits. Backend names are never shared, so
  no other record can need it. If that removal fails (busy, crash), the backend snapshot is
  simply unrecorded and the next GC removes it, so ``remove`` still succeeds.

Labels live in the record and are what ``stat`` and ``walk`` show. The backend receives only the
labels containerd lets it inherit (``containerd.io/snapshot/*`` and ``containerd.io/snapshot.ref``),
at creation and commit.

Locking, across processes (:class:`SnapshotterLock`): every prepare/view/commit/remove holds a
shared lock on its snapshotter from tx1 until its backend work is recorded, plus an exclusive
lock on the namespace key it creates or retires; GC's backend prune and fsck take the exclusive
lock, so they never mistake a snapshot in flight for garbage and never prune one between its
backend commit and its record.
"""

from __future__ import annotations

import contextlib
import os
from collections import namedtuple
from collections.abc import Callable, Sequence

from cargohold._fsutil import RangeLocks
from cargohold.errors import (
    AlreadyExists,
    CargoholdError,
    FailedPrecondition,
    NotFound,
)
from cargohold.filters import adaptor_for
from cargohold.metadata import leases
from cargohold.metadata import snapshot_records as snapshots
from cargohold.metadata.db import DB, Tx
from cargohold.metadata.leases import Resource
from cargohold.metadata.snapshot_records import SnapshotRecord
from cargohold.snapshotters.api import Info, Kind, Usage, kind_filter
from cargohold.types import LABEL_SNAPSHOT_REF, Mount, apply_field_paths, validate_labels

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

INHERITED_PREFIX = "containerd.io/snapshot/"


def inherited(labels: dict[str, str]) -> dict[str, str]:
    """The labels a backend gets to see, as containerd filters them."""
    return {k: v for k, v in labels.items()
            if k.startswith(INHERITED_PREFIX) or k == LABEL_SNAPSHOT_REF}


class SnapshotterLock:
    """Readers-writer lock between the writers of one snapshotter and its GC prune / fsck.

    One :class:`~cargohold._fsutil.RangeLocks` file per snapshotter in the metadata directory:
    every prepare/view/commit/remove holds its namespace keys exclusive and the whole shared;
    GC and fsck hold the whole exclusive (and say who they are, for a writer kept waiting).
    """

    def __init__(self, db_path: str, snapshotter: str) -> None:
        self.snapshotter = snapshotter
        self.path = os.path.join(db_path, f"snapshotter-{snapshotter}.lock")
        self._locks = RangeLocks(self.path, f"snapshotter {snapshotter}", 0o600)

    def writer(self, ns: str, *keys: str) -> contextlib.AbstractContextManager[None]:
        """Hold ``keys`` of ``ns`` exclusively and the snapshotter shared (waits for both;
        after a second of waiting, says who holds them).
        """
        return self._locks.hold(*(f"{ns}\0{k}" for k in keys), whole="shared",
                                label=f"snapshot {keys[0]}" if keys else "")

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Hold the whole snapshotter: no prepare, view, commit or remove is in flight."""
        return self._locks.hold(whole="exclusive")


Pin = namedtuple("Pin", "ns snapshotter key reason")
Pin.__doc__ = """A snapshot a mount record names: it stays while the record does (GC and
``remove``). ``reason`` says why, for ``hold gc --why`` and refusals ("mounted at /mnt/x").
"""


def backend_lock(db: DB, snapshotter: str) -> SnapshotterLock:
    """The lock GC and fsck take (``.exclusive()``) before comparing records with a backend."""
    return SnapshotterLock(db.path, snapshotter)


def _translate(exc: CargoholdError, names: dict[str, str]) -> CargoholdError:
    """The same error with backend names replaced by the namespace keys they stand for."""
    msg = exc.message
    for bname, key in names.items():
        if bname:
            msg = msg.replace(bname, key)
    if msg == exc.message:
        return exc
    try:
        new = type(exc)(msg, hint=exc.hint)
    except TypeError:  # a subclass with its own constructor: keep the original
        return exc
    return new


class NamespacedSnapshotter:
    """A :class:`~cargohold.snapshotters.api.Snapshotter` limited to namespace ``ns``.

    ``backend`` is the shared backend registered as ``name``; ``lease`` (optional) receives
    every snapshot this wrapper creates or commits. Errors follow the contract of
    :mod:`cargohold.snapshotters.api` and name namespace keys, never backend names.
    ``close`` closes only this view; the backend and the database belong to the caller.
    """

    def __init__(self, db: DB, backend: Any, ns: str, name: str, *,
                 lease: str | None = None,
                 pins: Callable[[], list[Pin]] | None = None) -> None:
        self.db = db
        self.backend = backend
        self.ns = ns
        self.name = name
        self.lease = lease
        self.pins = pins or (lambda: [])
        self.lock = SnapshotterLock(db.path, name)
        self._closed = False

    # --- helpers -------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"snapshotter {self.name} of namespace {self.ns}: closed")

    def _get(self, tx: Tx, key: str) -> SnapshotRecord:
        return snapshots.get(tx, self.ns, self.name, key)

    def _record(self, key: str) -> SnapshotRecord:
        self._check_open()
        with self.db.view() as tx:
            return self._get(tx, key)

    def _call(self, names: dict[str, str], fn: Callable[..., Any], *args: Any,
              **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except CargoholdError as exc:
            new = _translate(exc, names)
            if new is exc:
                raise
            raise new from exc

    def _check_lease(self, tx: Tx) -> None:
        if self.lease:
            leases.get(tx, self.ns, self.lease)  # NotFound, with a hint, before any work

    def _hold(self, tx: Tx, key: str) -> None:
        # A lease deleted while we worked was deleted on purpose: what it would have held
        # becomes collectable like anything else, so its absence is not an error here.
        if self.lease and leases.exists(tx, self.ns, self.lease):
            leases.add_resource(tx, self.ns, self.lease, Resource(f"snapshots/{self.name}", key))

    def _info(self, rec: SnapshotRecord, kind: Kind) -> Info:
        return Info(rec.key, kind, rec.parent, dict(rec.labels), rec.created_at, rec.updated_at)

    def _remove_backend_quietly(self, bname: str) -> None:
        # Runs after the records have moved on; a failure leaves an unrecorded backend
        # snapshot, which is exactly what GC's prune removes.
        with contextlib.suppress(CargoholdError, OSError):
            self.backend.remove(bname)

    def backend_key(self, key: str) -> str:
        """The backend's name for ``key`` (for a differ writing into the backend directly)."""
        return self._record(key).name

    # --- reads -----------------------------------------------------------------------------------
    def stat(self, key: str) -> Info:
        """The Info of ``key`` (any kind). NotFound when this namespace has no such key."""
        rec = self._record(key)
        binfo = self._call({rec.name: key}, self.backend.stat, rec.name)
        return self._info(rec, binfo.kind)

    def usage(self, key: str) -> Usage:
        """The backend's usage of ``key``: stored at commit, measured for active snapshots."""
        rec = self._record(key)
        return self._call({rec.name: key}, self.backend.usage, rec.name)

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of active or view ``key`` as the backend gives them (FailedPrecondition
        when committed); may be called any number of times.
        """
        rec = self._record(key)
        return self._call({rec.name: key}, self.backend.mounts, rec.name)

    def mounted(self) -> dict[str, list[str]]:
        """This namespace's keys in use by a mount now -> why (``mounted at DIR``, ...).

        Kernel mounts come from the backend (:meth:`Bookkept.mounted`), mount records from
        ``pins``; either keeps a snapshot from ``remove`` without ``force`` and from GC.
        """
        self._check_open()
        out: dict[str, list[str]] = {}
        for p in self.pins():
            if p.ns == self.ns and p.snapshotter == self.name:
                out.setdefault(p.key, []).append(p.reason)
        by_name = self.backend.mounted()
        if by_name:
            with self.db.view() as tx:
                for key in snapshots.keys(tx, self.ns, self.name):
                    targets = by_name.get(self._get(tx, key).name)
                    if targets:
                        out.setdefault(key, []).extend(f"mounted at {t}" for t in targets)
        return out

    def walk(self, fn: Callable[[Info], None], filters: Sequence[str] = ()) -> None:
        """Call ``fn`` for each snapshot of this namespace matching ``filters`` (``kind``,
        ``name``, ``parent``, ``labels.<k>``, evaluated on the merged Info), outside any
        transaction, so ``fn`` may call back into this snapshotter. Records whose backend
        snapshot is missing are skipped (``hold fsck`` reports them).
        """
        self._check_open()
        flt = kind_filter(filters)
        with self.db.view() as tx:
            recs = [self._get(tx, k) for k in snapshots.keys(tx, self.ns, self.name)]
        for rec in recs:
            try:
                kind = self.backend.stat(rec.name).kind
            except NotFound:
                continue
            info = self._info(rec, kind)
            fields = {"kind": kind.name.lower(), "name": info.name, "parent": info.parent}
            if flt.match(adaptor_for(fields, info.labels)):
                fn(info)

    # --- label updates -------------------------------------------------------------------------
    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Change the labels of ``info.name``: ``labels`` (or no fieldpaths) replaces them all,
        ``labels.<k>`` sets one or, with an empty or absent value, deletes it. Any other field
        raises InvalidArgument; a missing key NotFound. Returns the new Info.
        """
        self._check_open()
        apply_field_paths({}, info.labels, fieldpaths, subject=f"snapshot {info.name}")
        with self.db.update() as tx:
            rec = self._get(tx, info.name)
            labels, _ = apply_field_paths(rec.labels, info.labels, fieldpaths,
                                          subject=f"snapshot {info.name}")
            rec = snapshots.set_labels(tx, self.ns, self.name, info.name, labels, replace=True)
        binfo = self._call({rec.name: rec.key}, self.backend.stat, rec.name)
        return self._info(rec, binfo.kind)

    # --- creating ------------------------------------------------------------------------------
    def prepare(self, key: str, parent: str = "", *,
                labels: dict[str, str] | None = None) -> list[Mount]:
        """A new active snapshot on committed ``parent``; see the module docstring for the two
        transactions. A repeat raises AlreadyExists; a missing parent NotFound; a parent that
        is not committed InvalidArgument; a missing lease NotFound (before any work).
        """
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str = "", *,
             labels: dict[str, str] | None = None) -> list[Mount]:
        """A new read-only view of ``parent``; same rules as :meth:`prepare`."""
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(self, kind: Kind, key: str, parent: str,
                labels: dict[str, str] | None) -> list[Mount]:
        self._check_open()
        labels = validate_labels(dict(labels or {}))
        with self.lock.writer(self.ns, key):
            with self.db.update() as tx:
                if snapshots.exists(tx, self.ns, self.name, key):
                    raise AlreadyExists(f"snapshot {key} on {self.name}: already exists",
                                        hint="choose another key, or remove this one first")
                bparent = self._parent_name(tx, parent)
                self._check_lease(tx)
                bname = snapshots.next_name(tx, self.ns, self.name, key)
            names = {bname: key, bparent: parent}
            create = self.backend.prepare if kind == Kind.ACTIVE else self.backend.view
            mounts = self._call(names, create, bname, bparent, labels=inherited(labels))
            # Crash window: the backend snapshot exists, no record names it (GC prunes it).
            try:
                with self.db.update() as tx:
                    if parent and self._parent_name(tx, parent) != bparent:
                        raise NotFound(f"parent snapshot {parent} on {self.name}: removed "
                                       "while preparing on it", hint="prepare again")
                    snapshots.create(tx, self.ns, SnapshotRecord(self.name, key, bname, parent,
                                                                 labels))
                    self._hold(tx, key)
            except BaseException:
                self._remove_backend_quietly(bname)
                raise
        return mounts

    def _parent_name(self, tx: Tx, parent: str) -> str:
        if not parent:
            return ""
        try:
            return self._get(tx, parent).name
        except NotFound:
            raise NotFound(f"parent snapshot {parent} on {self.name}: not found",
                           hint="commit the parent first ('hold snapshots commit NAME KEY'), "
                                "or list what exists with 'hold snapshots ls'") from None

    # --- commit and remove ---------------------------------------------------------------------
    def commit(self, name: str, key: str, *, labels: dict[str, str] | None = None) -> None:
        """Turn active ``key`` into committed ``name``; ``key`` stops existing and ``name``
        gets ``labels`` (not ``key``'s). Raises NotFound (no key), AlreadyExists (name taken),
        FailedPrecondition (``key`` is a view or committed). See the module docstring for the
        crash window between the backend commit and the record.
        """
        self._check_open()
        labels = validate_labels(dict(labels or {}))
        with self.lock.writer(self.ns, key, name):
            with self.db.update() as tx:
                rec = self._get(tx, key)
                if snapshots.exists(tx, self.ns, self.name, name):
                    raise AlreadyExists(f"snapshot {name} on {self.name}: already exists",
                                        hint="commit under another name")
                self._check_lease(tx)
                bname = snapshots.next_name(tx, self.ns, self.name, name)
            self._call({bname: name, rec.name: key}, self.backend.commit, bname, rec.name,
                       labels=inherited(labels))
            # Crash window: ``bname`` is committed but unrecorded (GC prunes it) and the record
            # of ``key`` names a backend snapshot that is gone (fsck drops it).
            with self.db.update() as tx:
                snapshots.rename(tx, self.ns, self.name, key, name, bname, labels)
                self._hold(tx, name)

    def remove(self, key: str, *, force: bool = False) -> None:
        """Remove ``key`` (any kind) from this namespace and then from the backend.

        Raises NotFound when missing (so a repeat raises NotFound) and FailedPrecondition when
        other snapshots build on it, or when it is mounted (:meth:`mounted`) and ``force`` is
        not given; with ``force``, kernel mounts using it are detached first. A backend
        removal that fails after the record is gone is left to GC, and is not an error.
        """
        self._check_open()
        self._record(key)  # NotFound before anything else
        used = self.mounted().get(key, [])
        if used and not force:
            raise FailedPrecondition(
                f"snapshot {key} on {self.name}: in use ({'; '.join(used)})",
                hint="unmount it first, or remove it anyway with "
                     f"'hold snapshots rm --force {key}'")
        if used:
            from cargohold.mount import unmount

            for why in used:
                if why.startswith("mounted at "):
                    unmount(why[len("mounted at "):], detach=True)
        with self.lock.writer(self.ns, key):
            with self.db.update() as tx:
                rec = snapshots.remove(tx, self.ns, self.name, key)
            self._remove_backend_quietly(rec.name)

    # --- lifecycle -------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Let the backend reclaim disk left by removals (what GC calls after pruning)."""
        self._check_open()
        self.backend.cleanup()

    def close(self) -> None:
        """Stop using this view; a second call does nothing. The backend stays open."""
        self._closed = True

    def __enter__(self) -> NamespacedSnapshotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
