"""Durable writes and cross-process locks.

Every durable write goes through :func:`atomic_write`: a temp file in the same directory, fsync,
``os.replace``, fsync of the directory. Locks are Linux open-file-description (OFD) locks, which
exclude other processes *and* other threads of this one (classic POSIX record locks do not), and
which the kernel drops when the holder dies, so a ``kill -9`` never leaves a lock behind.

Under a root marked read-only (:func:`cargohold._oserror.mark_read_only`) nothing here creates
or changes a file: :func:`makedirs` and :func:`atomic_write` raise ``ReadOnly``, and lock files
are opened without being created (:func:`open_lock`). Errors of the environment (full, read-only,
permission, I/O, open-file limit) leave as the classes of :mod:`cargohold._oserror`, naming the
path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator

from cargohold import _reserve
from cargohold._oserror import check_writable, is_env_errno, read_only_root, translate
from cargohold.errors import Unavailable

_FLOCK = "hhqqi4x"  # struct flock on Linux x86_64/aarch64: type, whence, start, len, pid


def fsync_dir(path: str) -> None:
    """fsync a directory so that renames and creations inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644, *, sync: bool = True,
                 reserve_ok: bool = False) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file whole.

    Temp file in the same directory → fsync → ``os.replace`` → fsync the directory. The temp
    file is removed on error. Raises ``ReadOnly`` under a read-only root (before touching the
    disk) and the classes of :mod:`cargohold._oserror` for a full disk, a permission or an I/O
    error (the old file, if any, is then unchanged).

    ``reserve_ok``: for bookkeeping on the way to freeing space (a mount record marked
    unmounted). When the disk is full and ``data`` fits in the blocks of the file it replaces
    (so the write leaves the disk no fuller), a chunk of the space reserve is given back
    (:mod:`cargohold._reserve`) and the write tried once more.
    """
    check_writable(path)
    try:
        _replace(path, data, mode, sync)
    except OSError as exc:
        if (reserve_ok and exc.errno == errno.ENOSPC and _fits_in_place(path, len(data))
                and _reserve.release_for(path)):
            try:
                _replace(path, data, mode, sync)
                return
            except OSError as again:
                exc = again
        if is_env_errno(exc.errno):
            raise translate(exc, path, f"file {path}", needed=len(data)) from exc
        raise


def _replace(path: str, data: bytes, mode: int, sync: bool) -> None:
    d = os.path.dirname(path) or "."
    tmp = os.path.join(d, f".tmp-{os.path.basename(path)}-{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb", closefd=True) as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        fsync_dir(d)


def _fits_in_place(path: str, n: int) -> bool:
    """Whether ``n`` bytes take no more blocks than the existing file at ``path`` holds."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    bs = st.st_blksize or 4096
    return -(-n // bs) * bs <= st.st_blocks * 512


def makedirs(path: str, mode: int = 0o755) -> str:
    """``os.makedirs(exist_ok=True)`` that returns the path.

    An existing directory is returned without any write, so opening a read-only root works;
    a missing one under a read-only root raises ``ReadOnly``.
    """
    if os.path.isdir(path):
        return path
    check_writable(path)
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
    except OSError as exc:
        if is_env_errno(exc.errno):
            raise translate(exc, path, f"directory {path}") from exc
        raise
    return path


def open_lock(path: str, mode: int = 0o644) -> int:
    """Open a lock file for OFD locks, creating it when missing.

    Under a read-only root nothing is created or changed: an existing file is opened
    read-write when its filesystem allows (``--read-only`` on a writable root: the locks then
    exclude exactly as usual), else read-only, and then :func:`_ofd` can place only shared
    locks (a process that writes nothing needs no more; it cannot keep a writer of another
    mount out, see :class:`cargohold._lmdb.Env`). A lock file that does not exist there is
    replaced by a private ``memfd``: nobody has locked it through this root.
    """
    if read_only_root(path) is None:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        except OSError as exc:
            if is_env_errno(exc.errno):
                raise translate(exc, path, f"lock file {path}") from exc
            raise
    for flags in (os.O_RDWR, os.O_RDONLY):
        try:
            return os.open(path, flags | os.O_CLOEXEC)
        except FileNotFoundError:
            return os.memfd_create("cargohold-lock", os.MFD_CLOEXEC)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES):
                raise translate(exc, path, f"lock file {path}") from exc
    raise translate(OSError(errno.EACCES, "Permission denied"), path, f"lock file {path}")


def holder_text() -> str:
    """Who holds a lock: ``pid N on HOST since RFC3339``."""
    import socket

    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"pid {os.getpid()} on {socket.gethostname()} since {since}"


def _ofd(fd: int, kind: int, start: int, length: int, wait: bool) -> bool:
    if kind == fcntl.F_WRLCK and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
        kind = fcntl.F_RDLCK  # a lock file of a read-only root (see open_lock)
    cmd = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
    arg = struct.pack(_FLOCK, kind, os.SEEK_SET, start, length, 0)
    try:
        fcntl.fcntl(fd, cmd, arg)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


class FileLock:
    """An exclusive whole-file lock that records its holder inside the file.

    ``acquire(wait=False)`` raises :class:`Unavailable` saying who holds it and since when.
    The holder text is advisory (for messages); the kernel lock is what excludes, so a holder
    text that cannot be written (a full disk, a read-only root) is skipped and never fails the
    lock: GC and removals must work on a full disk.
    """

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what
        self.fd: int | None = None

    def acquire(self, *, wait: bool = False, timeout: float | None = None) -> FileLock:
        fd = open_lock(self.path)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if _ofd(fd, fcntl.F_WRLCK, 0, 0, wait and deadline is None):
                break
            if deadline is not None and time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            try:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            finally:
                os.close(fd)
            raise Unavailable(f"{self.what}: locked by {holder}",
                              hint="wait for that process to finish, or stop it")
        if read_only_root(self.path) is None:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder_text().encode(), 0)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    os.close(fd)
                    raise translate(exc, self.path, f"lock file {self.path}") from exc
                # A full disk has no page for the text: the lock holds without it.
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            if read_only_root(self.path) is None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the description drops the OFD lock
            self.fd = None

    def __enter__(self) -> FileLock:
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


class KeyedLocks:
    """Cross-process exclusive locks keyed by string, as byte ranges of one lock file.

    A key maps to one byte (a hash into a 2**31 range), so unrelated keys almost never contend
    and no per-key files accumulate. Used to keep a blob commit and a blob deletion of the same
    digest from interleaving across processes.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._mu = threading.Lock()

    def _file(self) -> int:
        with self._mu:
            if self._fd is None:
                self._fd = open_lock(self.path)
            return self._fd

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        # Each holder opens its own description: OFD locks then exclude threads too.
        fd = open_lock(self.path)
        start = zlib.crc32(key.encode()) & 0x7FFFFFFF
        try:
            _ofd(fd, fcntl.F_WRLCK, start, 1, True)
            yield
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._mu:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def dir_size(path: str) -> tuple[int, int]:
    """(bytes allocated, inodes) under ``path``, counting each hardlinked inode once."""
    seen: set[tuple[int, int]] = set()
    size = inodes = 0
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if is_env_errno(exc.errno):
                raise translate(exc, d, f"directory {d}") from exc
            raise
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
                inodes += 1
                size += st.st_blocks * 512
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return size, inodes
