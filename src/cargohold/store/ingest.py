"""Ingests of the local store: one directory per ref, resumable, locked across processes.

::

    ingest/<sha256(ref) hex>/
      ref         the ref itself (checked on resume: the directory name is only its hash)
      data        the bytes written so far; its size is the resume offset
      startedat   ns since the epoch, as decimal text
      updatedat   ns since the epoch, rewritten on close (the data's mtime covers writes)
      total       the expected total size, when the caller gave one
      expected    the expected digest, when the caller gave one
      lock        OFD lock held by the open writer; its text says who holds it

The small files go through ``atomic_write`` without fsync: a crash that loses one makes the
ingest unreadable, and an unreadable ingest is recreated empty (with ``O_TRUNC``, so no stale
tail survives). ``data`` is fsynced only at commit; what survives a crash is whatever the kernel
had written, and a resume re-hashes it, so a torn tail can never pass a digest check.

:class:`IngestWriter` is the store's :class:`~cargohold.store.api.Writer`.
"""

from __future__ import annotations

import contextlib
import errno
import os

from cargohold import _fsutil
from cargohold._oserror import free_bytes, no_space, translate
from cargohold._sha import sha256_hex
from cargohold.errors import (
    AlreadyExists,
    CargoholdError,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
)
from cargohold.store.api import CommitHook, Status
from cargohold.types import Digest, now_ns, validate_labels

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cargohold.store.local import LocalStore

REHASH_CHUNK = 4 << 20


def ingest_key(ref: str) -> str:
    """The directory name of an ingest: the ref's sha256, so every path has the same length."""
    return sha256_hex(ref.encode())


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_int(path: str) -> int:
    """A decimal file's value; 0 when it is missing or unreadable."""
    text = read_text(path)
    try:
        return int(text) if text else 0
    except ValueError:
        return 0


def remove_ingest_dir(path: str) -> None:
    """Remove an ingest directory, ``ref`` first.

    A crash part-way leaves a directory without ``ref``, which the next writer treats as
    unreadable and recreates empty; nobody can mistake it for a resumable ingest.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(path, "ref"))
    _fsutil.remove_tree(path, ignore_errors=True)


def rehash(fd: int, algorithm: str, size: int) -> Any:
    """Hash the first ``size`` bytes of ``fd`` with large preads; return the hash object."""
    import hashlib  # here: loading OpenSSL is for those who hash data

    h = hashlib.new(algorithm)
    buf = bytearray(min(REHASH_CHUNK, max(size, 1)))
    view = memoryview(buf)
    off = 0
    while off < size:
        n = os.preadv(fd, [view[:min(len(buf), size - off)]], off)
        if n <= 0:
            break
        h.update(view[:n])
        off += n
    return h


class IngestWriter:
    """An open ingest of a :class:`~cargohold.store.local.LocalStore` (see ``Writer``).

    Created by ``LocalStore.writer`` with the ingest lock already held. ``write`` after
    ``close``/``commit`` raises FailedPrecondition.
    """

    def __init__(self, store: LocalStore, ref: str, path: str, lock: _fsutil.FileLock,
                 *, total: int, expected: str, started_at: int, resume: bool) -> None:
        self._store = store
        self.ref = ref
        self.path = path
        self._lock = lock
        self._total = total
        self._expected = expected
        self._started_at = started_at
        self._algorithm = Digest(expected).algorithm if expected else "sha256"
        data = os.path.join(path, "data")
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (0 if resume else os.O_TRUNC)
        self._fd: int | None = os.open(data, flags, 0o644)
        try:
            offset = os.fstat(self._fd).st_size if resume else 0
            import hashlib

            hasher = hashlib.new(self._algorithm)
            if offset:
                rfd = os.open(data, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    hasher = rehash(rfd, self._algorithm, offset)
                finally:
                    os.close(rfd)
            os.lseek(self._fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(self._fd)
            raise
        from cargohold.store._pipe import HashingAppender  # threads: only when writing

        self._out = HashingAppender(self._fd, hasher, offset)
        self._offset = offset

    # --- Writer protocol -----------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; it may be reused by the caller as soon as this returns."""
        self._check_open()
        try:
            n = self._out.write(data)
        except OSError as exc:
            raise self._io_error("cannot write", exc) from exc
        self._offset += n
        return n

    def status(self) -> Status:
        """Progress as this writer sees it (``offset`` includes bytes still buffered)."""
        holder = ""
        if self._lock.fd is not None:
            holder = os.pread(self._lock.fd, 512, 0).decode(errors="replace").strip()
        return Status(ref=self.ref, offset=self._offset, total=self._total,
                      expected=self._expected, started_at=self._started_at,
                      updated_at=now_ns(), holder=holder)

    def digest(self) -> str:
        """The digest of everything written so far (flushes the buffer to the file)."""
        self._check_open()
        try:
            h = self._out.digest_object()
        except OSError as exc:
            raise self._io_error("cannot write", exc) from exc
        return f"{self._algorithm}:{h.copy().hexdigest()}"

    def truncate(self, size: int) -> None:
        """Restart the ingest from zero; any other size raises InvalidArgument."""
        self._check_open()
        if size != 0:
            raise InvalidArgument(f"ingest {self.ref}: cannot truncate to {size} bytes",
                                  hint="only truncate(0) is supported")
        assert self._fd is not None
        self._out.discard()
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._out.close()
        import hashlib

        from cargohold.store._pipe import HashingAppender

        self._out = HashingAppender(self._fd, hashlib.new(self._algorithm), 0)
        self._offset = 0

    def close(self) -> None:
        """Flush, record ``updatedat``, release the lock; the ingest stays for a resume."""
        if self._fd is None:
            return
        try:
            if not self._out.broken:
                with contextlib.suppress(OSError):
                    self._out.flush()
            # Advisory (the data's mtime says as much): a full disk must not fail the close.
            with contextlib.suppress(OSError, CargoholdError):
                _fsutil.atomic_write(os.path.join(self.path, "updatedat"),
                                     str(now_ns()).encode(), sync=False)
        finally:
            self._release()

    def __enter__(self) -> IngestWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def commit(self, size: int = 0, expected: str = "", labels: dict[str, str] | None = None,
               *, then: CommitHook | None = None) -> str:
        """Verify, then move the data into ``blobs/`` (see the ``Writer`` contract).

        Raises IntegrityError on a size or digest mismatch (the ingest stays), AlreadyExists
        when the blob exists and ``then`` is None (the ingest is removed). Always closes.
        """
        self._check_open()
        try:
            digest = self._verify(size, expected)
            if labels:
                validate_labels(labels)
            with self._store.locks.hold(digest):
                existed = self._install(digest, labels)
                if existed and then is None:
                    raise AlreadyExists(f"content digest {digest}: already exists")
                if then is not None:
                    # Still under the digest lock: a delete of this digest waits until the
                    # caller's record exists, so GC never removes a blob between the two.
                    then(digest, existed)
            return digest
        finally:
            self._release()

    # --- internals ---------------------------------------------------------------------

    def _verify(self, size: int, expected: str) -> str:
        """fsync the data and check it; return its digest (in ``expected``'s algorithm)."""
        if expected:
            expected = Digest(expected)
        assert self._fd is not None
        try:
            h = self._out.digest_object()
            os.fsync(self._fd)
        except OSError as exc:
            raise self._io_error("cannot write", exc) from exc
        got = self._offset
        if size and size != got:
            raise IntegrityError(
                f"ingest {self.ref}: size mismatch: expected {size} bytes, got {got}",
                hint="truncate(0) and write it again, or abort the ingest")
        algorithm = Digest(expected).algorithm if expected else self._algorithm
        if algorithm != self._algorithm:
            # The data fd is write-only; a second description reads it back.
            rfd = os.open(os.path.join(self.path, "data"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                h = rehash(rfd, algorithm, got)
            finally:
                os.close(rfd)
        digest = f"{algorithm}:{h.copy().hexdigest()}"
        if expected and digest != expected:
            raise IntegrityError(
                f"ingest {self.ref}: digest mismatch: expected {expected}, got {digest}",
                hint="truncate(0) and write it again, or abort the ingest")
        return digest

    def _install(self, digest: str, labels: dict[str, str] | None) -> bool:
        """Under the digest lock: make the verified data the blob; return whether it existed.

        Crash windows (each leaves no blob under a digest it does not hash to):
        1. before the rename: the ingest is whole and resumable (its data may be 0444; the
           next writer makes it writable again);
        2. after the rename, before the directory fsync: on power loss either the blob or
           the ingest data survives, never a partial file (the data was fsynced first);
        3. after the rename, before the ingest is removed: a blob plus an ingest directory
           without data, which the next writer recreates empty and GC aborts;
        4. before the labels are written: a blob without its labels (the metadata layer keeps
           its own; standalone labels are advisory).
        A failure of ``then`` leaves the blob committed without the caller's record: an
        orphan that GC/fsck removes.
        """
        store = self._store
        target = store.blob_path(digest)
        if os.path.lexists(target):
            # Dedup: no second copy, ever. Window: a crash here leaves the ingest, harmless.
            remove_ingest_dir(self.path)
            return True
        assert self._fd is not None
        blob_dir = os.path.dirname(target)
        _fsutil.makedirs(blob_dir, sync=True)  # durable before the record names the blob
        # Read-only before it becomes visible, so no reader ever sees a writable blob.
        os.fchmod(self._fd, 0o444)
        try:
            os.rename(os.path.join(self.path, "data"), target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.fchmod(self._fd, 0o644)
            raise self._io_error(f"cannot move data to {target}", exc) from exc
        os.utime(target)  # created_at = commit time
        try:
            _fsutil.fsync_dir(blob_dir)
        except OSError as exc:
            # The blob is visible and verified but maybe not durable; the caller sees an
            # error and no ``then`` record, so at worst GC removes an orphan.
            raise self._io_error(f"cannot sync {blob_dir}", exc) from exc
        remove_ingest_dir(self.path)
        store._write_labels(digest, labels or {})
        return False

    def _check_open(self) -> None:
        if self._fd is None:
            raise FailedPrecondition(f"ingest {self.ref}: writer is closed",
                                     hint="open the ref again with writer() to resume")
        if self._out.broken:
            raise FailedPrecondition(f"ingest {self.ref}: an earlier write failed",
                                     hint="close and open the ref again to resume from disk")

    def _io_error(self, what: str, exc: OSError) -> CargoholdError:
        """The error for ``exc``; a full disk names the filesystem, the blob's size and the
        space there was for it (free now plus what this ingest already holds).
        """
        subject = f"ingest {self.ref}" + (f" (blob {self._expected})" if self._expected else "")
        if exc.errno == errno.ENOSPC:
            held = 0
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    held = os.fstat(self._fd).st_blocks * 512
            return no_space(self.path, f"{subject}: {what}", self._total,
                            free=free_bytes(self.path) + held)
        if exc.errno is not None and exc.errno != errno.ENOENT:
            return translate(exc, self.path, f"{subject}: {what}")
        return FailedPrecondition(f"{subject}: {what}: {exc.strerror or exc}")

    def _release(self) -> None:
        if self._fd is None:
            return
        self._out.close()
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.close(fd)
        self._lock.release()
