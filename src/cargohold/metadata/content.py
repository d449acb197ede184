"""The namespaced content store: the shared blob store seen through one namespace's records.

A namespace sees a blob only once it committed or imported it (``v1/<ns>/content/blob/<d>``).
Blobs are shared underneath: committing a digest another namespace already has costs no second
copy, and a writer opened with an ``expected`` digest the store already holds needs no data at
all (containerd's shared policy). Deleting removes the record only; the file goes when GC finds
no namespace that still records it.

Records are written inside the blob store's digest lock (the commit hook), so GC, which deletes
a file only under the same lock after checking that no record exists, can never remove a blob
between its commit and its record. Every ingest record expires (24 h after its writer was
last opened, by default) so an abandoned upload becomes garbage; a lease keeps it longer, never
shorter. That is what lets an interrupted import resume: the lease of a killed process frees
its snapshots at once, but its partial ingests stay until their own expiry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from cargohold._record import record
from cargohold.errors import AlreadyExists, CargoholdError, InvalidArgument, NotFound
from cargohold.filters import Filter, adaptor_for
from cargohold.metadata import namespaces
from cargohold.metadata.db import DB, Tx
from cargohold.metadata.schema import QUARANTINE, bucket, key, ns_bucket, ns_path
from cargohold.store.api import CommitHook, Info, Status
from cargohold.types import Digest, apply_field_paths, now_ns, validate_labels

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cargohold.store.protocols import ReaderAt, Store, Writer

DEFAULT_INGEST_EXPIRY = 24 * 3600 * 10**9


def blob_path(ns: str, digest: str, *rest: str) -> bytes:
    return ns_path(ns, "content", "blob", digest, *rest)


def ingest_path(ns: str, ref: str, *rest: str) -> bytes:
    return ns_path(ns, "content", "ingests", ref, *rest)


def read_info(tx: Tx, ns: str, digest: str) -> Info | None:
    size = tx.get(blob_path(ns, digest, "size"))
    if size is None:
        return None
    return Info(digest, int(size), tx.get_int(blob_path(ns, digest, "createdat")),
                tx.get_int(blob_path(ns, digest, "updatedat")),
                tx.read_labels(blob_path(ns, digest)))


@record(frozen=True)
class IngestRecord:
    """A namespace's record of an ingest: its ``ref``, the backend's ref, what it expects
    and when it expires (ns since the epoch; 0: never).
    """

    ns: str
    ref: str
    bref: str
    expected: str
    expire_at: int


def digests(tx: Tx, ns: str) -> list[str]:
    """Every digest namespace ``ns`` records, in key order."""
    return list(tx.children(ns_bucket(ns, "content", "blob")))


def has_record(tx: Tx, ns: str, digest: str) -> bool:
    return tx.exists(blob_path(ns, digest, "size"))


def record_labels(tx: Tx, ns: str, digest: str) -> dict[str, str]:
    """The labels of ``ns``'s record of ``digest`` ({} when there is none)."""
    return tx.read_labels(blob_path(ns, digest))


def set_size(tx: Tx, ns: str, digest: str, size: int) -> None:
    """Correct a record's size (fsck, to what the verified blob has)."""
    tx.put(blob_path(ns, digest, "size"), size)


def delete_record(tx: Tx, ns: str, digest: str) -> None:
    """Drop ``ns``'s record of ``digest`` (the file stays until no namespace records it)."""
    tx.delete_tree(blob_path(ns, digest))


def ingest_records(tx: Tx, ns: str) -> list[IngestRecord]:
    """Every ingest namespace ``ns`` records."""
    return [IngestRecord(ns, ref, tx.get_str(ingest_path(ns, ref, "ref")),
                         tx.get_str(ingest_path(ns, ref, "expected")),
                         tx.get_int(ingest_path(ns, ref, "expireat")))
            for ref in tx.children(ns_bucket(ns, "content", "ingests"))]


def delete_ingest_record(tx: Tx, ns: str, ref: str) -> None:
    tx.delete_tree(ingest_path(ns, ref))


def write_record(tx: Tx, ns: str, digest: str, size: int, labels: dict[str, str]) -> None:
    """Create the namespace's record of a blob (the caller holds the digest lock)."""
    namespaces.ensure(tx, ns)
    now = now_ns()
    tx.put(blob_path(ns, digest, "size"), size)
    tx.put(blob_path(ns, digest, "createdat"), now)
    tx.put(blob_path(ns, digest, "updatedat"), now)
    tx.write_labels(blob_path(ns, digest), {k: v for k, v in labels.items() if v}, replace=True)


# --- blobs fsck moved aside --------------------------------------------------------------
def _quarantine_key(digest: str, *rest: str) -> bytes:
    return key(QUARANTINE, digest, *rest)


def quarantine_records(tx: Tx, digest: str) -> list[str]:
    """Move every namespace's record of ``digest`` aside (``fsck --repair`` found the blob
    corrupt and moved its file away). Returns the namespaces that had one.

    Each record goes to ``quarantine/<digest>/<ns>`` (size and labels), so that the blob's
    next commit in *any* namespace restores it in every one (:func:`restore_quarantined`):
    one re-import heals all.
    """
    out = []
    for ns in namespaces.list_all(tx):
        info = read_info(tx, ns, digest)
        if info is None:
            continue
        tx.put(_quarantine_key(digest, ns),
               json.dumps({"size": info.size, "labels": info.labels}, sort_keys=True))
        delete_record(tx, ns, digest)
        out.append(ns)
    return out


def quarantined(tx: Tx) -> dict[str, list[str]]:
    """Every digest whose records are moved aside -> the namespaces that lost it."""
    out: dict[str, list[str]] = {}
    prefix = bucket(QUARANTINE)
    for k, _v in tx.scan(prefix):
        digest, _, ns = k[len(prefix):].decode().partition("\x00")
        out.setdefault(digest, []).append(ns)
    return out


def restore_quarantined(tx: Tx, digest: str) -> list[str]:
    """Put back the records :func:`quarantine_records` moved aside (the blob is whole again);
    returns the namespaces healed. Costs one probe when nothing is quarantined.
    """
    prefix = bucket(QUARANTINE, digest)
    if not tx.has_prefix(prefix):
        return []
    healed = []
    for k, v in list(tx.scan(prefix)):
        ns = k[len(prefix):].decode()
        rec = json.loads(v)
        if not has_record(tx, ns, digest):
            write_record(tx, ns, digest, int(rec["size"]), dict(rec.get("labels") or {}))
            healed.append(ns)
    tx.delete_prefix(prefix)
    return healed


def forget_quarantined(tx: Tx, digest: str) -> None:
    """Drop the moved-aside records of ``digest`` (nothing needs them any more)."""
    tx.delete_prefix(bucket(QUARANTINE, digest))


def recorded_anywhere(tx: Tx, digest: str) -> bool:
    """Whether any namespace records ``digest`` or any live ingest expects it."""
    for ns in namespaces.list_all(tx):
        if tx.exists(blob_path(ns, digest, "size")):
            return True
        for ref in tx.children(ns_bucket(ns, "content", "ingests")):
            if tx.get_str(ingest_path(ns, ref, "expected")) == digest:
                return True
    return False


class NamespacedStore:
    """A :class:`~cargohold.store.api.Store` limited to one namespace, optionally leased."""

    def __init__(self, db: DB, backend: Store, ns: str, *, lease: str | None = None,
                 ingest_expiry: int = DEFAULT_INGEST_EXPIRY) -> None:
        self.db = db
        self.backend = backend
        self.ns = ns
        self.lease = lease
        self.ingest_expiry = ingest_expiry

    # --- manager -------------------------------------------------------------------------
    def info(self, digest: str) -> Info:
        digest = Digest(digest)
        with self.db.view() as tx:
            info = read_info(tx, self.ns, digest)
        if info is None:
            raise NotFound(f"content digest {digest}: not found",
                           hint=f"namespace {self.ns!r} has no such blob; 'hold content ls' "
                                "lists what it has")
        return info

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        with self.db.update() as tx:
            cur = read_info(tx, self.ns, info.digest)
            if cur is None:
                raise NotFound(f"content digest {info.digest}: not found")
            labels, _ = apply_field_paths(cur.labels, info.labels, fieldpaths,
                                          subject=f"content {info.digest}")
            tx.write_labels(blob_path(self.ns, info.digest), labels, replace=True)
            tx.put(blob_path(self.ns, info.digest, "updatedat"), now_ns())
            return read_info(tx, self.ns, info.digest)  # type: ignore[return-value]

    def walk(self, fn: Callable[[Info], None], filters: Sequence[str] = ()) -> None:
        flt = Filter(filters)
        batch: list[Info] = []
        with self.db.view() as tx:
            for d in tx.children(ns_bucket(self.ns, "content", "blob")):
                info = read_info(tx, self.ns, d)
                if info is None:
                    continue
                if flt and not flt.match(adaptor_for(
                        {"digest": info.digest, "size": str(info.size)}, info.labels)):
                    continue
                batch.append(info)
        # Called outside the transaction: fn may write.
        for info in batch:
            fn(info)

    def delete(self, digest: str) -> None:
        digest = Digest(digest)
        with self.db.update() as tx:
            if not tx.exists(blob_path(self.ns, digest, "size")):
                raise NotFound(f"content digest {digest}: not found")
            tx.delete_tree(blob_path(self.ns, digest))

    # --- provider ------------------------------------------------------------------------
    def reader(self, digest: str) -> ReaderAt:
        self.info(digest)
        return self.backend.reader(digest)

    # --- ingester ------------------------------------------------------------------------
    def _bref(self, ref: str) -> str:
        return f"{self.ns}/{ref}"

    def writer(self, ref: str, *, total: int = 0, expected: str = "") -> Writer:
        if not ref:
            raise InvalidArgument("ingest ref '': empty", hint="give the ingest a name")
        if expected:
            expected = Digest(expected)
        with self.db.update() as tx:
            if expected and tx.exists(blob_path(self.ns, expected, "size")):
                self._lease_add(tx, "content", expected)
                raise AlreadyExists(f"content {expected}: already exists")
            namespaces.ensure(tx, self.ns)
            tx.put(ingest_path(self.ns, ref, "ref"), self._bref(ref))
            tx.put(ingest_path(self.ns, ref, "expected"), expected)
            if self.lease:
                self._lease_add(tx, "ingests", ref)
            tx.put(ingest_path(self.ns, ref, "expireat"), now_ns() + self.ingest_expiry)
        try:
            inner = self.backend.writer(self._bref(ref), total=total, expected=expected)
        except AlreadyExists:
            # Another namespace has it: this one may claim it without sending the bytes.
            return _SharedWriter(self, ref, expected, total)
        return _NamespacedWriter(self, ref, inner)

    def _lease_add(self, tx: Tx, rtype: str, rid: str) -> None:
        if self.lease:
            from cargohold.metadata import leases as lease_records

            lease_records.add_resource(tx, self.ns, self.lease,
                                       lease_records.Resource(rtype, rid))

    def _commit_hook(self, ref: str, size_hint: int,
                     labels: dict[str, str] | None) -> CommitHook:
        def hook(digest: str, existed: bool) -> None:
            size = size_hint
            if not size:
                with self.backend.reader(digest) as r:
                    size = r.size
            with self.db.update() as tx:
                tx.delete_tree(ingest_path(self.ns, ref))
                if self.lease:
                    tx.delete(ns_path(self.ns, "leases", self.lease, "ingests", ref))
                    self._lease_add(tx, "content", digest)
                already = tx.exists(blob_path(self.ns, digest, "size"))
                if not already:
                    write_record(tx, self.ns, digest, size,
                                 validate_labels(dict(labels or {})))
                # A blob fsck had moved aside as corrupt is whole again: every namespace
                # that lost its record gets it back.
                restore_quarantined(tx, digest)
            if already:
                raise AlreadyExists(f"content {digest}: already exists")

        return hook

    def ingest_reader(self, ref: str) -> ReaderAt:
        """The bytes of this namespace's ingest ``ref`` so far (see the backend's
        ``ingest_reader``); NotFound when there is no such ingest.
        """
        with self.db.view() as tx:
            if not tx.exists(ingest_path(self.ns, ref, "ref")):
                raise NotFound(f"ingest {ref}: not found")
        return self.backend.ingest_reader(self._bref(ref))  # type: ignore[attr-defined]

    # --- ingest manager ------------------------------------------------------------------
    def _ingest_refs(self, tx: Tx) -> list[str]:
        return list(tx.children(ns_bucket(self.ns, "content", "ingests")))

    def status(self, ref: str) -> Status:
        with self.db.view() as tx:
            if not tx.exists(ingest_path(self.ns, ref, "ref")):
                raise NotFound(f"ingest {ref}: not found",
                               hint="'hold content active' lists the ingests in progress")
            expected = tx.get_str(ingest_path(self.ns, ref, "expected"))
        try:
            st = self.backend.status(self._bref(ref))
        except NotFound:
            return Status(ref, 0, expected=expected)
        return Status(ref, st.offset, st.total, expected or st.expected, st.started_at,
                      st.updated_at, st.holder)

    def list_statuses(self, filters: Sequence[str] = ()) -> list[Status]:
        flt = Filter(filters)
        with self.db.view() as tx:
            refs = self._ingest_refs(tx)
        out = []
        for ref in refs:
            if flt and not flt.match(adaptor_for({"ref": ref}, {})):
                continue
            try:
                out.append(self.status(ref))
            except NotFound:
                continue  # finished while we listed
        return out

    def abort(self, ref: str) -> None:
        with self.db.update() as tx:
            if not tx.exists(ingest_path(self.ns, ref, "ref")):
                raise NotFound(f"ingest {ref}: not found")
            tx.delete_tree(ingest_path(self.ns, ref))
            if self.lease:
                tx.delete(ns_path(self.ns, "leases", self.lease, "ingests", ref))
        try:
            self.backend.abort(self._bref(ref))
        except NotFound:
            pass


class _NamespacedWriter:
    """A backend writer whose commit also writes the namespace's record."""

    def __init__(self, store: NamespacedStore, ref: str, inner: Writer) -> None:
        self.store = store
        self.ref = ref
        self.inner = inner

    def write(self, data: bytes | memoryview) -> int:
        return self.inner.write(data)

    def status(self) -> Status:
        st = self.inner.status()
        return Status(self.ref, st.offset, st.total, st.expected, st.started_at, st.updated_at,
                      st.holder)

    def digest(self) -> str:
        return self.inner.digest()

    def truncate(self, size: int) -> None:
        self.inner.truncate(size)

    def commit(self, size: int = 0, expected: str = "", labels: dict[str, str] | None = None,
               *, then: CommitHook | None = None) -> str:
        hook = self.store._commit_hook(self.ref, size, labels)
        self._expect(expected)

        def both(digest: str, existed: bool) -> None:
            # As the contract says: with a ``then`` the caller decides about an existing
            # digest; without one, AlreadyExists stands.
            try:
                hook(digest, existed)
            except AlreadyExists:
                if then is None:
                    raise
                existed = True
            if then is not None:
                then(digest, existed)

        try:
            return self.inner.commit(size, expected, labels, then=both)
        except CargoholdError as exc:
            # Speak of the caller's ref, not the backend's namespaced one.
            exc.message = exc.message.replace(self.store._bref(self.ref), self.ref)
            exc.args = (exc.message,)
            raise

    def _expect(self, expected: str) -> None:
        """Before the backend moves the data into ``blobs/``, make the ingest record expect
        its digest (when it was opened without one): a crash between that rename and the
        record leaves a blob the ingest still claims, so fsck reports an interrupted commit
        (not garbage), GC keeps it while the ingest lives, and the next commit of the same
        ref records it.
        """
        digest = self.inner.digest()
        if expected and expected != digest:
            return  # the commit fails the check; nothing will be renamed
        path = ingest_path(self.store.ns, self.ref, "expected")
        with self.store.db.view() as tx:
            if tx.get_str(path):
                return
        with self.store.db.update() as tx:
            if tx.exists(ingest_path(self.store.ns, self.ref, "ref")):
                tx.put(path, digest)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> _NamespacedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SharedWriter:
    """A writer for a digest the blob store already has (from another namespace, or from a
    concurrent writer that committed it a moment ago).

    Committing needs no bytes. Its status reports the blob's bytes as written already
    (``offset`` = the blob's size, ``digest()`` = the digest), so :func:`copy_into` sends none:
    it skips the source, or with ``verify_resumed`` hashes it against the digest first. The
    first write turns it into a normal writer (the caller chose to send data after all), whose
    commit then finds the blob present and adds the record.
    """

    def __init__(self, store: NamespacedStore, ref: str, expected: str, total: int) -> None:
        self.store = store
        self.ref = ref
        self.expected = expected
        self.total = total
        self._inner: _NamespacedWriter | None = None
        self._written = 0

    def _unshare(self) -> _NamespacedWriter:
        if self._inner is None:
            inner = self.store.backend.writer(self.store._bref(self.ref), total=self.total)
            self._inner = _NamespacedWriter(self.store, self.ref, inner)
        return self._inner

    def write(self, data: bytes | memoryview) -> int:
        return self._unshare().write(data)

    def status(self) -> Status:
        if self._inner is not None:
            return self._inner.status()
        try:
            size = self.store.backend.info(self.expected).size
        except NotFound:
            size = 0  # gone meanwhile (GC): the caller sends the bytes after all
        return Status(self.ref, size, self.total or size, self.expected)

    def digest(self) -> str:
        return self._inner.digest() if self._inner is not None else self.expected

    def truncate(self, size: int) -> None:
        if self._inner is not None:
            self._inner.truncate(size)

    def commit(self, size: int = 0, expected: str = "", labels: dict[str, str] | None = None,
               *, then: CommitHook | None = None) -> str:
        if self._inner is not None:
            return self._inner.commit(size, expected, labels, then=then)
        if expected and expected != self.expected:
            from cargohold.errors import IntegrityError

            raise IntegrityError(f"ingest {self.ref}: digest mismatch: expected {expected}, "
                                 f"got {self.expected}")
        backend = self.store.backend
        locks = getattr(backend, "locks", None)
        hook = self.store._commit_hook(self.ref, 0, labels)
        with (locks.hold(self.expected) if locks is not None else _null()):
            info = backend.info(self.expected)  # still there? (NotFound if GC won the race)
            if size and info.size != size:
                from cargohold.errors import IntegrityError

                raise IntegrityError(f"ingest {self.ref}: size mismatch: expected {size} "
                                     f"bytes, got {info.size}")
            try:
                hook(self.expected, True)
            except AlreadyExists:
                # Recorded meanwhile (a concurrent writer of the same digest): as the writer
                # contract says, with a ``then`` the caller decides; without one it stands.
                if then is None:
                    raise
            if then is not None:
                then(self.expected, True)
        return self.expected

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()

    def __enter__(self) -> _SharedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
