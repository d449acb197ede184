"""A small bolt-like layer over LMDB: ordered keys as bucket paths, read and write transactions.

LMDB gives one writer at a time across every process on the machine and lock-free readers, and
survives torn writes (copy-on-write pages, two meta pages). LMDB forbids opening the same
environment twice in one process, so :func:`open_env` shares one per path with a refcount.
A key is its bucket path with the segments joined by NUL, so a bucket is a key prefix.

Two conditions a healthy program still meets are handled here, at the lowest layer:

- *A full disk.* Copy-on-write means that even a transaction that only deletes writes new
  pages, so on a 100 % full filesystem it fails (``ENOSPC``) and the user could not free space
  with hold itself. A write transaction that does not grow the database (it removed at least as
  many bytes as it added: every removal, GC's sweep, fsck's repairs) and fails to commit with
  ``ENOSPC`` releases the space reserve of its filesystem (:mod:`cargohold._reserve`) and
  replays its writes in a new transaction. The replay is exact only if nothing committed in
  between: LMDB's transaction ids say so (the new one must be the id the failed one had), and
  otherwise the caller gets ``Unavailable`` ("run it again"), never a different outcome.
- *A read-only root.* See :class:`Env`.

Every ``lmdb.Error`` leaves this module translated (:func:`lmdb_error`): naming the directory
and the fix, as a class of :mod:`cargohold.errors`.
"""

from __future__ import annotations

import _thread  # threading's Lock and get_ident, without importing threading (start-up)
import contextlib
import errno
import os
from collections.abc import Iterator

import lmdb

from cargohold import _reserve
from cargohold._fsutil import makedirs
from cargohold._oserror import (
    NoSpace,
    fs_read_only,
    read_only_error,
    read_only_root,
    translate,
)
from cargohold.errors import (
    CargoholdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from cargohold.types import human_size

SEP = b"\x00"
MAX_KEY = 511
MAP_SIZE = 1 << 36  # 64 GiB of address space; the file is sparse and grows as needed
MAX_READERS = 1024


class Tx:
    """A transaction. Reads see one snapshot; writes commit together or not at all.

    A write transaction keeps the log of its puts and deletes, and ``grown``: the bytes of the
    keys and values it put (an overwrite counted as new) minus those of the keys it deleted —
    so ``grown <= 0`` means the transaction surely did not grow the data. :meth:`Env.update`
    replays the log when such a commit met a full disk.
    """

    def __init__(self, txn: lmdb.Transaction, write: bool) -> None:
        self._txn = txn
        self.write = write
        self.dirty = False
        self.grown = 0
        self.log: list[tuple[bytes, bytes | None]] = []

    def get(self, k: bytes) -> bytes | None:
        return self._txn.get(k)

    def get_str(self, k: bytes, default: str = "") -> str:
        v = self._txn.get(k)
        return default if v is None else v.decode()

    def get_int(self, k: bytes, default: int = 0) -> int:
        v = self._txn.get(k)
        return default if v is None else int(v)

    def put(self, k: bytes, v: bytes | str | int) -> None:
        if isinstance(v, int):
            v = str(v).encode()
        elif isinstance(v, str):
            v = v.encode()
        self._txn.put(k, v)
        self.grown += len(k) + len(v)  # an overwrite counts as new: an upper bound
        self.log.append((k, v))
        self.dirty = True

    def delete(self, k: bytes) -> bool:
        if not self._txn.delete(k):
            return False
        self.grown -= len(k)  # the key alone: a lower bound of what it freed
        self.log.append((k, None))
        self.dirty = True
        return True

    def exists(self, k: bytes) -> bool:
        return self._txn.get(k) is not None

    def has_prefix(self, prefix: bytes) -> bool:
        with self._txn.cursor() as cur:
            return cur.set_range(prefix) and cur.key().startswith(prefix)

    def cursor(self) -> lmdb.Cursor:
        """A raw LMDB cursor, for hot loops that cannot afford a generator per key. Read with
        it only: a write through it would escape the log that a full-disk replay needs.
        """
        return self._txn.cursor()

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) under ``prefix``, in key order."""
        with self._txn.cursor() as cur:
            if not cur.set_range(prefix):
                return
            for k, v in cur:
                if not k.startswith(prefix):
                    return
                yield k, v

    def children(self, prefix: bytes) -> Iterator[str]:
        """The distinct next segments under bucket ``prefix`` (which ends with SEP).

        Skips each child's subtree with one seek, so listing is cheap even when children hold
        many keys.
        """
        n = len(prefix)
        with self._txn.cursor() as cur:
            ok = cur.set_range(prefix)
            while ok:
                k = cur.key()
                if not k.startswith(prefix):
                    return
                end = k.find(SEP, n)
                name = k[n:] if end < 0 else k[n:end]
                yield name.decode()
                ok = cur.set_range(prefix + name + b"\x01")

    def delete_prefix(self, prefix: bytes) -> int:
        """Delete every key under ``prefix``; return how many."""
        count = 0
        with self._txn.cursor() as cur:
            while cur.set_range(prefix) and cur.key().startswith(prefix):
                k = cur.key()
                cur.delete()
                self.grown -= len(k)
                self.log.append((k, None))
                count += 1
        self.dirty = self.dirty or count > 0
        return count

    def delete_tree(self, k: bytes) -> int:
        """Delete the key ``k`` and its whole bucket."""
        n = 1 if self.delete(k) else 0
        return n + self.delete_prefix(k + SEP)

    # --- labels ---------------------------------------------------------------------------
    def read_labels(self, owner: bytes) -> dict[str, str]:
        """The labels stored under ``owner/labels``."""
        prefix = owner + SEP + b"labels" + SEP
        n = len(prefix)
        return {k[n:].decode(): v.decode() for k, v in self.scan(prefix)}

    def write_labels(self, owner: bytes, labels: dict[str, str], *, replace: bool) -> None:
        """Set labels; an empty value deletes that label; ``replace`` drops the others."""
        prefix = owner + SEP + b"labels" + SEP
        if replace:
            self.delete_prefix(prefix)
        for k, v in labels.items():
            lk = prefix + k.encode()
            if len(lk) > MAX_KEY:
                raise InvalidArgument(f"label {k[:60]!r}: key too long to store here",
                                      hint="use a shorter label key")
            if v:
                self.put(lk, v)
            else:
                self.delete(lk)




# --- errors ------------------------------------------------------------------------------
_DAMAGED = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError,
            lmdb.VersionMismatchError, lmdb.PanicError, lmdb.BadChecksumError,
            lmdb.IncompatibleError)


def lmdb_error(exc: lmdb.Error, path: str, what: str = "metadata", *,
               read_only: bool = False) -> CargoholdError:
    """The cargohold error for ``exc``, raised by the environment in directory ``path``."""
    subject = f"{what} {path}"
    if isinstance(exc, lmdb.MapFullError):
        return NoSpace(f"{subject}: the database reached its map size "
                       f"({human_size(MAP_SIZE)})",
                       hint="remove what you no longer need ('hold images rm', then 'hold gc')")
    if isinstance(exc, lmdb.MapResizedError):
        return Unavailable(f"{subject}: another process grew the database meanwhile",
                           hint="run the command again")
    if isinstance(exc, lmdb.ReadersFullError):
        return Unavailable(f"{subject}: {MAX_READERS} readers have it open",
                           hint="wait for other hold processes to finish (readers left by "
                                "killed processes are cleared when hold next opens the root)")
    if isinstance(exc, lmdb.LockError):
        return Unavailable(f"{subject}: cannot lock it ({exc})",
                           hint="another process holds it: wait for it, or stop it")
    if isinstance(exc, lmdb.ReadonlyError):
        if read_only:
            return read_only_error(path)
        return translate(OSError(errno.EACCES, "Permission denied"), path, subject)
    if isinstance(exc, lmdb.TxnFullError):
        return FailedPrecondition(f"{subject}: one transaction changed too much at once",
                                  hint="report it (run it again with 'hold --debug' to see where)")
    if isinstance(exc, lmdb.BadValsizeError):
        return InvalidArgument(f"{subject}: a key or value is too large or empty ({exc})")
    if isinstance(exc, lmdb.MemoryError):
        return FailedPrecondition(f"{subject}: out of memory",
                                  hint="free memory, or lower the limits of this process")
    if isinstance(exc, _DAMAGED):
        return FailedPrecondition(
            f"{subject}: the database file is damaged ({exc})",
            hint=f"restore {path} from a backup; 'hold fsck' checks blobs and records, it "
                 "cannot rebuild the database file")
    code = getattr(exc, "code", 0)
    if isinstance(exc, lmdb.DiskError):
        code = errno.ENOSPC
    if code and code > 0:
        return translate(OSError(code, os.strerror(code)), path, subject)
    return FailedPrecondition(f"{subject}: {exc}")


def _enospc(exc: lmdb.Error) -> bool:
    return isinstance(exc, lmdb.DiskError) or getattr(exc, "code", 0) == errno.ENOSPC


# --- environments ------------------------------------------------------------------------
_envs: dict[str, tuple[lmdb.Environment, int, bool]] = {}
_envs_mu = _thread.allocate_lock()


def open_env(path: str, what: str = "metadata", *, read_only: bool = False
             ) -> lmdb.Environment:
    """Open the LMDB environment in directory ``path``, shared within the process.

    Read-write creates the directory when missing. ``read_only`` opens it with
    ``readonly=True, lock=False`` (see :class:`Env`) and creates nothing: a missing directory
    is NotFound. Opening one path both ways in one process is FailedPrecondition.
    """
    path = os.path.realpath(path)
    with _envs_mu:
        if path in _envs:
            env, refs, ro = _envs[path]
            if ro != read_only:
                raise FailedPrecondition(
                    f"{what} {path}: already open {'read-only' if ro else 'read-write'} in "
                    "this process", hint="close the other client first")
            _envs[path] = (env, refs + 1, ro)
            return env
        if read_only and not os.path.isdir(path):
            raise NotFound(f"{what} {path}: does not exist",
                           hint="a root opened read-only must have been written before: "
                                "check --root")
        if not read_only:
            makedirs(path, 0o700)
        try:
            env = lmdb.open(path, map_size=MAP_SIZE, max_dbs=0, max_readers=MAX_READERS,
                            subdir=True, readonly=read_only, lock=not read_only,
                            readahead=False, meminit=False, create=not read_only)
        except lmdb.Error as exc:
            raise lmdb_error(exc, path, what, read_only=read_only) from exc
        if not read_only:
            # Readers left behind by killed processes would pin old pages forever.
            env.reader_check()
        _envs[path] = (env, 1, read_only)
        return env


def release_env(path: str) -> None:
    """Drop one reference to a shared environment; close it with the last."""
    path = os.path.realpath(path)
    with _envs_mu:
        if path not in _envs:
            return
        env, refs, ro = _envs[path]
        if refs <= 1:
            del _envs[path]
            env.close()
        else:
            _envs[path] = (env, refs - 1, ro)


class Env:
    """A shared LMDB environment in directory ``path``, with its two kinds of transaction.

    :meth:`view` is a read transaction (one consistent snapshot); :meth:`update` a write
    transaction that commits when the block ends and aborts on an exception. Only one write
    transaction runs at a time across all processes: do no slow I/O inside. A subclass may add
    to every write that changed something in :meth:`_before_commit`.

    Read-only (``path`` under a root marked read-only, see :mod:`cargohold._oserror`): LMDB is
    opened with ``readonly=True, lock=False``, so nothing is written, ``lock.mdb`` included —
    which a read-only filesystem requires. What that costs: without the lock file this
    process's readers are not registered, so a writer in another process (through a writable
    mount of the same directory) does not know which pages they still read. LMDB's free-page
    rule makes the pages of a snapshot reusable only by the third transaction committed after
    it, so every view checks at its end that at most one commit happened since it began, and
    otherwise raises Unavailable ("changed while read, run it again") instead of returning what
    may be a torn read. A root that nobody writes (the usual read-only case: a mounted image of
    a store, a backup) is read exactly as usual. :meth:`update` raises ``ReadOnly``.
    """

    def __init__(self, path: str, what: str = "metadata") -> None:
        self.path = path
        self.what = what
        self.read_only = read_only_root(path) is not None or fs_read_only(path)
        self.env = open_env(path, what, read_only=self.read_only)
        self._closed = False

    def check_writable(self) -> None:
        """Raise ``ReadOnly`` now when :meth:`update` would: for a caller about to do work
        (a GC, a repair) whose first write comes late, or not at all when nothing needs it.
        """
        if self.read_only:
            raise read_only_error(self.path)

    def _error(self, exc: lmdb.Error) -> CargoholdError:
        return lmdb_error(exc, self.path, self.what, read_only=self.read_only)

    def _check_unlocked_read(self, start: int) -> None:
        if self.read_only and self.env.info()["last_txnid"] > start + 1:
            raise Unavailable(f"{self.what} {self.path}: changed by another process while "
                              "it was read without locks (read-only)",
                              hint="run the command again")

    @contextlib.contextmanager
    def view(self) -> Iterator[Tx]:
        try:
            txn = self.env.begin(write=False, buffers=False)
        except lmdb.Error as exc:
            raise self._error(exc) from exc
        start = txn.id()
        try:
            yield Tx(txn, False)
        except lmdb.Error as exc:
            self._check_unlocked_read(start)
            raise self._error(exc) from exc
        except BaseException:
            self._check_unlocked_read(start)
            raise
        finally:
            txn.abort()
        self._check_unlocked_read(start)

    @contextlib.contextmanager
    def update(self) -> Iterator[Tx]:
        self.check_writable()
        try:
            txn = self.env.begin(write=True, buffers=False)
        except lmdb.Error as exc:
            raise self._error(exc) from exc
        tx = Tx(txn, True)
        try:
            yield tx
            self._before_commit(tx)
        except BaseException as exc:
            txn.abort()
            if isinstance(exc, lmdb.Error):
                raise self._error(exc) from exc
            raise
        self._commit(txn, tx)

    def _commit(self, txn: lmdb.Transaction, tx: Tx) -> None:
        txid = txn.id()
        try:
            txn.commit()
            return
        except lmdb.Error as exc:
            if not (_enospc(exc) and tx.grown <= 0 and tx.log):
                raise self._error(exc) from exc
            last = exc
        # A removal on a full disk: give back a chunk of the reserve and write the same
        # changes again, as long as the reserve lasts.
        while _reserve.release_for(self.path):
            try:
                txn = self.env.begin(write=True, buffers=False)
            except lmdb.Error as exc:
                raise self._error(exc) from exc
            try:
                if txn.id() != txid:
                    raise Unavailable(f"{self.what} {self.path}: another process wrote while "
                                      "this removal waited for disk space",
                                      hint="run the command again")
                for k, v in tx.log:
                    if v is None:
                        txn.delete(k)
                    else:
                        txn.put(k, v)
            except BaseException as exc:
                txn.abort()
                if isinstance(exc, lmdb.Error):
                    raise self._error(exc) from exc
                raise
            try:
                txn.commit()
                return
            except lmdb.Error as exc:
                if not _enospc(exc):
                    raise self._error(exc) from exc
                last = exc
        raise self._error(last) from last

    def _before_commit(self, tx: Tx) -> None:
        """Called inside every write transaction just before it commits."""

    def close(self) -> None:
        """Release the environment; a second call does nothing."""
        if not self._closed:
            self._closed = True
            release_env(self.path)
