"""A small bolt-like layer over LMDB: ordered keys as bucket paths, read and write transactions.

LMDB gives one writer at a time across every process on the machine and lock-free readers, and
survives torn writes (copy-on-write pages, two meta pages). LMDB forbids opening the same
environment twice in one process, so :func:`open_env` shares one per path with a refcount.
A key is its bucket path with the segments joined by NUL, so a bucket is a key prefix.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import lmdb

from cargohold._fsutil import makedirs
from cargohold.errors import FailedPrecondition, InvalidArgument, Unavailable

SEP = b"\x00"
MAX_KEY = 511
MAP_SIZE = 1 << 36  # 64 GiB of address space; the file is sparse and grows as needed


class Tx:
    """A transaction. Reads see one snapshot; writes commit together or not at all."""

    def __init__(self, txn: lmdb.Transaction, write: bool) -> None:
        self._txn = txn
        self.write = write
        self.dirty = False

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
        self.dirty = True

    def delete(self, k: bytes) -> bool:
        done = self._txn.delete(k)
        self.dirty = self.dirty or done
        return done

    def exists(self, k: bytes) -> bool:
        return self._txn.get(k) is not None

    def has_prefix(self, prefix: bytes) -> bool:
        with self._txn.cursor() as cur:
            return cur.set_range(prefix) and cur.key().startswith(prefix)

    def cursor(self) -> lmdb.Cursor:
        """A raw LMDB cursor, for hot loops that cannot afford a generator per key."""
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
                cur.delete()
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




_envs: dict[str, tuple[lmdb.Environment, int]] = {}
_envs_mu = threading.Lock()


def open_env(path: str, what: str = "metadata") -> lmdb.Environment:
    """Open (creating) the LMDB environment in directory ``path``, shared within the process."""
    path = os.path.realpath(path)
    with _envs_mu:
        if path in _envs:
            env, refs = _envs[path]
            _envs[path] = (env, refs + 1)
            return env
        makedirs(path, 0o700)
        try:
            env = lmdb.open(path, map_size=MAP_SIZE, max_dbs=0, max_readers=1024,
                            subdir=True, lock=True, readahead=False, meminit=False)
        except lmdb.LockError as exc:
            raise Unavailable(f"{what} {path}: cannot lock ({exc})") from exc
        except lmdb.Error as exc:
            raise FailedPrecondition(
                f"{what} {path}: cannot open ({exc})",
                hint="run 'hold fsck' or restore the directory from a backup") from exc
        # Readers left behind by killed processes would pin old pages forever.
        env.reader_check()
        _envs[path] = (env, 1)
        return env


def release_env(path: str) -> None:
    """Drop one reference to a shared environment; close it with the last."""
    path = os.path.realpath(path)
    with _envs_mu:
        if path not in _envs:
            return
        env, refs = _envs[path]
        if refs <= 1:
            del _envs[path]
            env.close()
        else:
            _envs[path] = (env, refs - 1)


class Env:
    """A shared LMDB environment in directory ``path``, with its two kinds of transaction.

    :meth:`view` is a read transaction (one consistent snapshot); :meth:`update` a write
    transaction that commits when the block ends and aborts on an exception. Only one write
    transaction runs at a time across all processes: do no slow I/O inside. A subclass may add
    to every write that changed something in :meth:`_before_commit`.
    """

    def __init__(self, path: str, what: str = "metadata") -> None:
        self.path = path
        self.env = open_env(path, what)
        self._closed = False

    @contextlib.contextmanager
    def view(self) -> Iterator[Tx]:
        with self.env.begin(write=False, buffers=False) as txn:
            yield Tx(txn, False)

    @contextlib.contextmanager
    def update(self) -> Iterator[Tx]:
        txn = self.env.begin(write=True, buffers=False)
        tx = Tx(txn, True)
        try:
            yield tx
            self._before_commit(tx)
            txn.commit()
        except BaseException:
            txn.abort()
            raise

    def _before_commit(self, tx: Tx) -> None:
        """Called inside every write transaction just before it commits."""

    def close(self) -> None:
        """Release the environment; a second call does nothing."""
        if not self._closed:
            self._closed = True
            release_env(self.path)
