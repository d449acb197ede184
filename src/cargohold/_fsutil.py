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

import _thread  # threading's Lock and get_ident, without importing threading (start-up)
import contextlib
import errno
import fcntl
import os
import struct
import time
import zlib
from collections.abc import Iterator

from cargohold import _reserve
from cargohold._oserror import check_writable, is_env_errno, read_only_root, translate
from cargohold.errors import CargoholdError, FailedPrecondition, Unavailable
from cargohold.notices import notice

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
    tmp = os.path.join(d, f".tmp-{os.path.basename(path)}-{os.getpid()}-{_thread.get_ident()}")
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


def makedirs(path: str, mode: int = 0o755, *, sync: bool = False) -> str:
    """``os.makedirs(exist_ok=True)`` that returns the path.

    An existing directory is returned without any write, so opening a read-only root works;
    a missing one under a read-only root raises ``ReadOnly``. With ``sync``, each directory
    made is made durable (its parent fsynced) before this returns: for directories on the way
    to a durable file, which a record will point at once the file is in place.
    """
    if os.path.isdir(path):
        return path
    check_writable(path)
    try:
        if not sync:
            os.makedirs(path, mode=mode, exist_ok=True)
            return path
        missing = []
        p = os.path.abspath(path)
        while not os.path.isdir(p):
            missing.append(p)
            p = os.path.dirname(p)
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(d, mode)
            fsync_dir(os.path.dirname(d))
    except (FileExistsError, NotADirectoryError) as exc:
        # ``path`` or a parent on the way is a file (a --root given a file's name).
        blocker = os.path.abspath(path)
        while not os.path.lexists(blocker) and os.path.dirname(blocker) != blocker:
            blocker = os.path.dirname(blocker)
        raise FailedPrecondition(f"directory {path}: {blocker} exists and is not a directory",
                                 hint=f"move {blocker} out of the way, or choose another "
                                      "directory (--root, --state)") from exc
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
    """Who holds a lock: ``pid N (COMMAND) on HOST since RFC3339``."""
    import socket

    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"pid {os.getpid()} ({command_of(os.getpid())}) on {socket.gethostname()} since {since}"


def command_of(pid: int) -> str:
    """A short form of a process's command line (``hold gc``, ``python3 x.py``), or ``?``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    # `python -m cargohold ...` and pip's launcher (`python .../bin/hold ...`) both read as hold.
    words = [os.path.basename(argv[0]), *argv[1:3]]
    for i, a in enumerate(argv[:-1]):
        if (a == "-m" and argv[i + 1] == "cargohold") or os.path.basename(a) == "hold":
            words = ["hold", *(argv[i + 2:] if a == "-m" else argv[i + 1:])[:3]]
            break
    # One short line whatever the arguments hold (`python -c '<a whole script>'`).
    return " ".join(w if len(w) <= 40 else w[:39] + "…" for w in " ".join(words).split())


# --- waiting for locks, and saying who holds them ----------------------------------------------
WAIT_NOTICE = 1.0  # seconds a lock wait may take before the user is told who holds it
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


def lock_range(fd: int, kind: int, start: int, length: int, what: str) -> None:
    """Take an OFD lock on ``fd`` (waiting as long as it takes).

    Once the wait passes :data:`WAIT_NOTICE` seconds, :func:`notice` says once who holds it
    (pid, command, since when), read from the kernel's lock table, so a user never stares at a
    silent terminal. Polls (1 ms doubling to 50 ms) instead of blocking, so it can speak.
    """
    if _ofd(fd, kind, start, length, False):
        return
    t0 = time.monotonic()
    told = False
    delay = 0.001
    while not _ofd(fd, kind, start, length, False):
        if not told and time.monotonic() - t0 >= WAIT_NOTICE:
            told = True
            notice(f"{what}: waiting for {describe_holders(fd, kind, start, length)}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def describe_holders(fd: int, kind: int, start: int, length: int) -> str:
    """Who holds locks conflicting with ``kind`` on ``[start, start+length)`` of ``fd``'s file.

    OFD locks carry no pid (the kernel reports -1), so this scans ``/proc/*/fdinfo``, whose
    ``lock:`` lines name the file and range of each description's locks. "since" is the
    holder's own record when it wrote one (:func:`write_holder`), else its process start time.
    """
    st = os.fstat(fd)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    end = start + length - 1 if length else 1 << 63
    pids: set[int] = set()
    for pid_s in os.listdir("/proc"):
        if not pid_s.isdigit():
            continue
        d = f"/proc/{pid_s}/fdinfo"
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            try:
                with open(f"{d}/{n}", encoding="ascii", errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            for line in text.splitlines():
                if not line.startswith("lock:") or dev not in line:
                    continue
                parts = line.split()
                try:
                    lo = int(parts[-2])
                    hi = (1 << 63) if parts[-1] == "EOF" else int(parts[-1])
                except (ValueError, IndexError):
                    continue
                conflicting = "WRITE" in parts or kind == fcntl.F_WRLCK
                if conflicting and lo <= end and hi >= start:
                    pids.add(int(pid_s))
    if not pids:
        return "another process (it let go just now)"
    recorded = read_holder(fd)
    out = []
    for pid in sorted(pids):
        if recorded and recorded.startswith(f"pid {pid} "):
            out.append(recorded)
        else:
            out.append(f"pid {pid} ({command_of(pid)}) running since {_started(pid)}")
    return "; ".join(out)


def _started(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return "?"
    t = btime + ticks / os.sysconf("SC_CLK_TCK")
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _holder_path(fd: int) -> str:
    path = os.readlink(f"/proc/self/fd/{fd}")
    if not path.startswith("/") or path.endswith(" (deleted)"):
        raise FileNotFoundError(path)  # a memfd stand-in (read-only root): nowhere to write
    return path + ".holder"


def write_holder(fd: int) -> None:
    """Record who holds the exclusive lock on ``fd``'s file, beside it (advisory text).

    Only for rare, long holds (GC, fsck): a failure (full or read-only disk) only makes a
    waiter's message vaguer, so it is ignored; under a read-only root nothing is written.
    """
    with contextlib.suppress(OSError, CargoholdError):
        path = _holder_path(fd)
        if read_only_root(path) is None:
            atomic_write(path, holder_text().encode(), sync=False)


def clear_holder(fd: int) -> None:
    """Drop what :func:`write_holder` wrote (before the lock is let go)."""
    with contextlib.suppress(OSError):
        path = _holder_path(fd)
        if read_only_root(path) is None:
            os.unlink(path)


def read_holder(fd: int) -> str:
    try:
        with open(_holder_path(fd), encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


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


class RangeLocks:
    """Cross-process locks as byte ranges of one lock file: one file, any number of keys.

    Byte 0 stands for the whole: held shared (beside keys: "I work on some keys") or exclusive
    (alone: "no one works on any key now"). Every key is one byte at ``1 + crc32(key) mod
    2**31``, held exclusive, so unrelated keys almost never contend (two that hash alike merely
    wait for each other) and no per-key files accumulate. Keys are locked in byte order, so two
    holders of several keys each cannot deadlock. Each hold opens its own description: OFD
    locks then exclude threads of one process as well as processes, and die with the holder.
    A wait longer than a second says who holds the lock (:func:`lock_range`); an exclusive
    holder of the whole records itself beside the file (:func:`write_holder`) for that message.

    Used for blob digests (a commit and a deletion of one digest never interleave), unpack
    chain IDs, and each snapshotter (writers shared, GC and fsck exclusive).
    """

    def __init__(self, path: str, what: str, mode: int = 0o644) -> None:
        self.path = path
        self.what = what
        self.mode = mode

    @contextlib.contextmanager
    def hold(self, *keys: str, whole: str = "", label: str = "") -> Iterator[None]:
        """Hold ``keys`` exclusive and, with ``whole`` (``"shared"`` or ``"exclusive"``),
        byte 0 so; waits as long as it takes. ``label`` names what the keys stand for in a
        wait notice (default: the first key).
        """
        fd = open_lock(self.path, self.mode)  # creates nothing under a read-only root
        try:
            for off in sorted({1 + (zlib.crc32(k.encode()) & 0x7FFFFFFF) for k in keys}):
                lock_range(fd, fcntl.F_WRLCK, off, 1, f"{self.what} {label or keys[0]}")
            if whole:
                lock_range(fd, fcntl.F_RDLCK if whole == "shared" else fcntl.F_WRLCK, 0, 1,
                           self.what)
            if whole == "exclusive":
                write_holder(fd)
            try:
                yield
            finally:
                if whole == "exclusive":
                    clear_holder(fd)
        finally:
            os.close(fd)  # drops every lock taken through this description


def lock_holder(path: str) -> str:
    """Who holds the OFD lock on ``path`` now ("" when nobody), without taking it.

    ``F_OFD_GETLK`` asks the kernel whether a write lock could be placed; unlike a trial
    acquire it can never make a concurrent writer fail with Unavailable.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    try:
        arg = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_OFD_GETLK, arg))[0]
        if kind == fcntl.F_UNLCK:
            return ""
        return os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)




def remove_tree(path: str, *, ignore_errors: bool = False) -> None:
    """Remove the directory tree ``path``, never following a symlink inside it (a link is
    removed, not its target), as ``shutil.rmtree`` does: ``import shutil`` loads bz2 and lzma,
    which ``hold images unmount`` would pay for at every removal of its snapshot.

    ``ignore_errors``: go on past what cannot be removed (an ingest's cleanup); otherwise the
    first OSError propagates and what is left stays for a later removal.
    """
    try:
        for _, dirs, files, dfd in os.fwalk(path, topdown=False):
            for name in files:
                _remove_at(name, dfd, ignore_errors)
            for name in dirs:  # a symlink to a directory is listed here, and not entered
                try:
                    os.rmdir(name, dir_fd=dfd)
                except FileNotFoundError:
                    pass  # gone meanwhile (another remover): what was asked for
                except NotADirectoryError:
                    _remove_at(name, dfd, ignore_errors)
                except OSError:
                    if not ignore_errors:
                        raise
        os.rmdir(path)  # FileNotFoundError here: ``path`` itself was not there
    except OSError:
        if not ignore_errors:
            raise


def _remove_at(name: str, dfd: int, ignore_errors: bool) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass  # gone meanwhile: what was asked for
    except OSError:
        if not ignore_errors:
            raise


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
