"""The local blob store: committed blobs and resumable ingests under one directory.

::

    <hold root>/content/               the store's root
      blobs/<alg>/<hex>                committed blob (sha256 or sha512), mode 0444, never
                                       rewritten; mtime = commit time
      labels/<alg>/<hex>               standalone labels as JSON (absent = no labels)
      ingest/<sha256(ref)>/...         one resumable ingest per ref (see ``store.ingest``)
      locks                            byte-range lock file: one lock per digest

Safe for many processes on one root: an ingest is owned by whoever holds its ``lock`` file
(others get :class:`Unavailable` naming the holder), and a commit and a delete of the same
digest exclude each other through ``locks``. A crash anywhere leaves no blob under a digest it
does not hash to; at worst an ingest or an unreferenced blob, which GC/fsck removes.

Labels kept here serve the store used on its own; the metadata layer keeps its own per
namespace and ignores these.

Under a read-only root (:func:`cargohold._oserror.mark_read_only`) the store creates nothing
when opened and every write (``writer``, ``update``, ``delete``, ``abort``) raises ``ReadOnly``
before touching the disk. Errors of the environment (full disk, permission, I/O, open-file
limit) leave translated by :func:`cargohold._oserror.translate`, naming the path.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence

from cargohold import _fsutil
from cargohold._oserror import check_writable, read_only_root, translate
from cargohold.errors import (
    AlreadyExists,
    CargoholdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from cargohold.filters import Filter, adaptor_for
from cargohold.store.api import Info, Status
from cargohold.store.ingest import (
    IngestWriter,
    ingest_key,
    read_int,
    read_text,
    remove_ingest_dir,
)
from cargohold.types import Digest, apply_field_paths, now_ns

ALGORITHMS = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[a-f0-9]+")  # fullmatch: "$" would accept a trailing "\n"


class BlobReader(io.FileIO):
    """A committed blob opened for reading: a binary file plus ``size`` and ``read_at``.

    It holds an open descriptor, so a blob deleted meanwhile stays readable until closed.
    A read that fails (an I/O error) raises the error of :func:`cargohold._oserror.translate`
    naming the blob's path.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, "rb")
        self.path = path
        self.size = os.fstat(self.fileno()).st_size

    def _error(self, exc: OSError) -> CargoholdError:
        return translate(exc, self.path, f"blob file {self.path}")

    def read_at(self, n: int, offset: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (fewer only at the end); the position is unchanged."""
        try:
            return os.pread(self.fileno(), n, offset)
        except OSError as exc:
            raise self._error(exc) from exc

    def readinto(self, buffer) -> int | None:  # noqa: ANN001 - any writable buffer
        """Read into ``buffer`` (see ``io.FileIO.readinto``)."""
        try:
            return super().readinto(buffer)
        except OSError as exc:
            raise self._error(exc) from exc

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (all when negative)."""
        try:
            return super().read(size)
        except OSError as exc:
            raise self._error(exc) from exc

    def readall(self) -> bytes:
        """Read to the end."""
        try:
            return super().readall()
        except OSError as exc:
            raise self._error(exc) from exc


class LocalStore:
    """A :class:`~cargohold.store.api.Store` on a local directory (see the module docstring).

    Extras over the protocol: :meth:`blob_path`, :meth:`ingest_refs` (for GC),
    :meth:`ingest_reader` (an ingest read while it is written), ``locks`` (the per-digest
    cross-process locks) and ``delete(digest, check=...)``.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        if read_only_root(self.root) is None:
            _fsutil.makedirs(self.root)
        self.locks = _fsutil.RangeLocks(os.path.join(self.root, "locks"), "blob")
        self._ingest_root = os.path.join(self.root, "ingest")

    # --- paths ---------------------------------------------------------------------------

    def blob_path(self, digest: str) -> str:
        """Where the blob of ``digest`` lives (whether or not it exists)."""
        d = Digest(digest)
        return os.path.join(self.root, "blobs", d.algorithm, d.hex)

    def _labels_path(self, digest: str) -> str:
        d = Digest(digest)
        return os.path.join(self.root, "labels", d.algorithm, d.hex)

    def _ingest_dir(self, ref: str) -> str:
        return os.path.join(self._ingest_root, ingest_key(ref))

    # --- provider / manager --------------------------------------------------------------

    def info(self, digest: str) -> Info:
        """The blob's size, times and labels; NotFound when it is not committed."""
        path = self.blob_path(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError as exc:
            raise _not_found(digest) from exc
        except OSError as exc:
            raise translate(exc, path, f"content digest {digest}") from exc
        labels, labels_mtime = self._read_labels(digest)
        return Info(digest=str(digest), size=st.st_size, created_at=st.st_mtime_ns,
                    updated_at=max(st.st_mtime_ns, labels_mtime), labels=labels)

    def reader(self, digest: str) -> BlobReader:
        """Open the blob for reading; NotFound when it is not committed."""
        path = self.blob_path(digest)
        try:
            return BlobReader(path)
        except FileNotFoundError as exc:
            raise _not_found(digest) from exc
        except OSError as exc:
            raise translate(exc, path, f"content digest {digest}") from exc

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Change labels: ``labels`` replaces all, ``labels.<k>`` one key (empty = delete).

        No field paths means ``labels``. Other paths raise InvalidArgument; a missing blob
        NotFound. Runs under the digest lock so it cannot race a delete or another update.
        """
        digest = Digest(info.digest)
        new = dict(info.labels or {})
        apply_field_paths({}, new, fieldpaths, subject=f"content {digest}")  # refuse early
        check_writable(self.root)
        with self.locks.hold(digest):
            if not os.path.exists(self.blob_path(digest)):
                raise _not_found(digest)
            labels, _ = apply_field_paths(self._read_labels(digest)[0], new, fieldpaths,
                                          subject=f"content {digest}")
            self._write_labels(digest, labels)
        return self.info(digest)

    def walk(self, fn: Callable[[Info], None], filters: Sequence[str] = ()) -> None:
        """Call ``fn`` for every committed blob matching ``filters`` (fields ``digest``,
        ``size``, ``labels.<k>``). Names that are not a digest are skipped; blobs that vanish
        during the walk are skipped.
        """
        flt = Filter(filters)
        for info in self._iter_blobs():
            adaptor = adaptor_for({"digest": info.digest, "size": str(info.size)}, info.labels)
            if flt.match(adaptor):
                fn(info)

    def _iter_blobs(self) -> Iterator[Info]:
        for alg, hexlen in ALGORITHMS.items():
            d = os.path.join(self.root, "blobs", alg)
            try:
                entries = sorted(os.listdir(d))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise translate(exc, d, f"blob directory {d}") from exc
            for name in entries:
                if len(name) != hexlen or not _HEX.fullmatch(name):
                    continue
                try:
                    yield self.info(f"{alg}:{name}")
                except NotFound:
                    continue

    def delete(self, digest: str, *, check: Callable[[str], bool] | None = None) -> None:
        """Remove the blob and its labels; NotFound when it is not committed.

        Under the digest lock, so it cannot interleave with a commit of the same digest (and
        its ``then`` hook). ``check(digest)``, when given, runs under that lock: if it returns
        False nothing is removed (GC asks "is it still unreferenced?" there).
        """
        digest = Digest(digest)
        check_writable(self.root)
        with self.locks.hold(digest):
            if check is not None and not check(digest):
                return
            path = self.blob_path(digest)
            if not os.path.exists(path):
                raise _not_found(digest)
            try:
                # Labels first: a crash in between leaves a blob without labels, never labels
                # waiting to attach themselves to a later blob of the same digest.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._labels_path(digest))
                os.unlink(path)
            except FileNotFoundError as exc:
                raise _not_found(digest) from exc
            except OSError as exc:
                raise translate(exc, path, f"content digest {digest}") from exc

    # --- labels sidecars -----------------------------------------------------------------

    def _read_labels(self, digest: str) -> tuple[dict[str, str], int]:
        path = self._labels_path(digest)
        try:
            with open(path, "rb") as f:
                mtime = os.fstat(f.fileno()).st_mtime_ns
                labels = json.loads(f.read())
        except FileNotFoundError:
            return {}, 0
        except (OSError, ValueError):
            return {}, 0  # an unreadable sidecar means no labels; update() rewrites it
        if not isinstance(labels, dict):
            return {}, mtime
        return {str(k): str(v) for k, v in labels.items()}, mtime

    def _write_labels(self, digest: str, labels: dict[str, str]) -> None:
        """Replace the sidecar (remove it for no labels). Callers hold the digest lock."""
        labels = {k: v for k, v in labels.items() if v}
        path = self._labels_path(digest)
        if not labels:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        _fsutil.makedirs(os.path.dirname(path), sync=True)
        _fsutil.atomic_write(path, json.dumps(labels, sort_keys=True).encode())

    # --- ingester / ingest manager -------------------------------------------------------

    def writer(self, ref: str, *, total: int = 0, expected: str = "") -> IngestWriter:
        """Open or resume the ingest ``ref``.

        Raises InvalidArgument for an empty ref or a malformed ``expected``; AlreadyExists
        when ``expected`` is committed already (before any data moves); Unavailable when
        another writer (any process) holds the ref; FailedPrecondition when ``total``
        contradicts the ingest being resumed.
        """
        if not ref:
            raise InvalidArgument("ingest '': empty ref", hint="give every ingest a name")
        check_writable(self.root)
        if expected:
            expected = Digest(expected)
            if os.path.exists(self.blob_path(expected)):
                raise AlreadyExists(f"content digest {expected}: already exists")
        path = self._ingest_dir(ref)
        try:
            lock = self._lock_ingest(ref, path)
        except OSError as exc:
            raise translate(exc, path, f"ingest {ref}", needed=total) from exc
        try:
            return self._open_locked(ref, path, lock, total, expected)
        except OSError as exc:
            lock.release()
            raise translate(exc, path, f"ingest {ref}", needed=total) from exc
        except BaseException:
            lock.release()
            raise

    def _lock_ingest(self, ref: str, path: str) -> _fsutil.FileLock:
        """Create the ingest directory if needed and take its lock (non-blocking)."""
        while True:
            _fsutil.makedirs(self._ingest_root)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path)
            lock = _fsutil.FileLock(os.path.join(path, "lock"), f"ingest {ref}")
            try:
                lock.acquire()
            except FileNotFoundError:
                continue  # removed (commit/abort) between mkdir and open: start again
            assert lock.fd is not None
            try:
                same = os.stat(lock.path).st_ino == os.fstat(lock.fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return lock
            lock.release()  # we locked a file that was unlinked meanwhile; start again

    def _open_locked(self, ref: str, path: str, lock: _fsutil.FileLock, total: int,
                     expected: str) -> IngestWriter:
        data = os.path.join(path, "data")
        resume = read_text(os.path.join(path, "ref")) == ref and os.path.exists(data)
        started = read_int(os.path.join(path, "startedat")) if resume else 0
        if resume and not started:
            resume = False  # unreadable: recreate it (with O_TRUNC)
        if resume:
            old_total = read_int(os.path.join(path, "total"))
            if total and old_total and total != old_total:
                raise FailedPrecondition(
                    f"ingest {ref}: total {total} differs from the resumed ingest's "
                    f"{old_total}", hint="abort the ingest to start over")
            total = total or old_total
            expected = expected or (read_text(os.path.join(path, "expected")) or "")
            if expected:
                expected = Digest(expected.strip())
            # A crash just before a commit's rename can leave the data read-only.
            with contextlib.suppress(OSError):
                os.chmod(data, 0o644)
        else:
            started = now_ns()
            # ``ref`` last: until it is written the directory is not a resumable ingest.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(path, "ref"))
            put = _put_small(path)
            put("startedat", str(started))
            put("updatedat", str(started))
        put = _put_small(path)
        put("total", str(total) if total else None)
        put("expected", expected or None)
        writer = IngestWriter(self, ref, path, lock, total=total, expected=expected,
                              started_at=started, resume=resume)
        if not resume:
            put("ref", ref)
        return writer

    def status(self, ref: str) -> Status:
        """The ingest's progress from disk; NotFound when there is no such ingest.

        ``offset`` is the size of the data file: while a writer is open it may trail that
        writer's own ``status().offset`` by the bytes it still buffers (at most 4 MiB).
        """
        st = self._status_at(self._ingest_dir(ref))
        if st is None or st.ref != ref:
            raise NotFound(f"ingest {ref}: not found")
        return st

    def ingest_reader(self, ref: str) -> BlobReader:
        """The bytes ingest ``ref`` holds so far, opened for reading; NotFound when absent.

        The reader follows the file: bytes written later become readable through it, and
        after a commit the same descriptor reads the committed blob (the file is renamed, not
        copied). Its ``size`` is the size at opening. What is read before the commit is
        unverified: the caller checks the commit's outcome before trusting it.
        """
        path = self._ingest_dir(ref)
        if read_text(os.path.join(path, "ref")) != ref:
            raise NotFound(f"ingest {ref}: not found")
        try:
            return BlobReader(os.path.join(path, "data"))
        except FileNotFoundError as exc:
            raise NotFound(f"ingest {ref}: not found") from exc

    def _status_at(self, path: str) -> Status | None:
        ref = read_text(os.path.join(path, "ref"))
        if ref is None:
            return None
        try:
            st = os.stat(os.path.join(path, "data"))
            size, mtime = st.st_size, st.st_mtime_ns
        except FileNotFoundError:
            size = mtime = 0  # left by a crash mid-commit: the next writer starts empty
        expected = (read_text(os.path.join(path, "expected")) or "").strip()
        return Status(ref=ref, offset=size, total=read_int(os.path.join(path, "total")),
                      expected=expected,
                      started_at=read_int(os.path.join(path, "startedat")),
                      updated_at=max(read_int(os.path.join(path, "updatedat")), mtime),
                      holder=_fsutil.lock_holder(os.path.join(path, "lock")))

    def list_statuses(self, filters: Sequence[str] = ()) -> list[Status]:
        """Every readable ingest matching ``filters`` (field ``ref``), sorted by ref.

        Ingests committed or aborted during the listing are left out.
        """
        flt = Filter(filters)
        out = []
        for path in self._ingest_dirs():
            try:
                st = self._status_at(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise translate(exc, path, f"ingest directory {path}") from exc
            if st is not None and flt.match(adaptor_for({"ref": st.ref}, {})):
                out.append(st)
        return sorted(out, key=lambda s: s.ref)

    def _ingest_dirs(self) -> list[str]:
        try:
            names = os.listdir(self._ingest_root)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise translate(exc, self._ingest_root, f"ingest directory {self._ingest_root}") \
                from exc
        return [os.path.join(self._ingest_root, n) for n in sorted(names)]

    def ingest_refs(self) -> list[str]:
        """The refs of every ingest on disk, held or not (for GC and fsck)."""
        refs = []
        for path in self._ingest_dirs():
            with contextlib.suppress(OSError):
                ref = read_text(os.path.join(path, "ref"))
                if ref is not None:
                    refs.append(ref)
        return sorted(refs)

    def abort(self, ref: str) -> None:
        """Remove the ingest. NotFound when absent; Unavailable while a writer holds it."""
        check_writable(self.root)
        path = self._ingest_dir(ref)
        lock = _fsutil.FileLock(os.path.join(path, "lock"), f"ingest {ref}")
        try:
            lock.acquire()  # O_CREAT fails in a missing directory: no ingest
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NotFound(f"ingest {ref}: not found") from exc
        try:
            assert lock.fd is not None
            try:
                current = os.stat(lock.path).st_ino == os.fstat(lock.fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:  # committed or aborted while we waited for the lock
                raise NotFound(f"ingest {ref}: not found")
            remove_ingest_dir(path)
        finally:
            lock.release()


def _put_small(path: str) -> Callable[[str, str | None], None]:
    """A writer of one small ingest file (None removes it); no fsync, see store.ingest."""

    def put(name: str, text: str | None) -> None:
        p = os.path.join(path, name)
        if text is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        else:
            _fsutil.atomic_write(p, text.encode(), sync=False)

    return put


def _not_found(digest: str) -> NotFound:
    return NotFound(f"content digest {digest}: not found")
