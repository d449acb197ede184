"""What an OSError means for the user: the error class, the path, the filesystem and the fix.

Every layer that calls the OS (the LMDB layer, the blob store, :mod:`cargohold._fsutil`)
translates the errors a healthy program still meets — a full or read-only filesystem, a
permission, an I/O error, too many open files — with :func:`translate`, so none of them
reaches the user as an "internal error"::

    ENOSPC, EDQUOT   NoSpace             names the mount point, the space needed and free
    EROFS            ReadOnly            "root DIR is read-only"
    EACCES, EPERM    PermissionDenied    names the path's owner
    EIO              FailedPrecondition  points at the kernel log
    EMFILE, ENFILE   Unavailable         the open-file limit (retryable)
    ENOENT           NotFound

Which roots this process must not write (``--read-only``, ``HOLD_READ_ONLY=1``, or a root on
a read-only filesystem) is recorded here too (:func:`mark_read_only`), so that every helper
that writes can refuse before it touches the disk, and so that an ``EROFS`` names the root.
"""

from __future__ import annotations

import _thread  # threading's Lock and get_ident, without importing threading (start-up)
import errno
import os

from cargohold.errors import CargoholdError, FailedPrecondition, NotFound, Unavailable
from cargohold.types import human_size

HINT_FREE = ("free space with 'hold images rm' and 'hold gc' (they work on a full disk), "
             "or grow the filesystem")


class NoSpace(FailedPrecondition):
    """The filesystem (or the quota) holding a path has no room for what is being written."""


class ReadOnly(FailedPrecondition):
    """The root must not be written: opened read-only, or on a read-only filesystem."""


class PermissionDenied(FailedPrecondition):
    """This user may not read or write a path of the root."""


# --- read-only roots ---------------------------------------------------------------------
_ro_mu = _thread.allocate_lock()
_ro_roots: dict[str, tuple[str, int, str]] = {}  # realpath -> (why, references, as given)


def mark_read_only(root: str, why: str) -> None:
    """Record that this process must not write under ``root`` (``why``: the reason, for the
    hint). Counted: each mark needs one :func:`unmark_read_only`.
    """
    path = os.path.realpath(root)
    with _ro_mu:
        old = _ro_roots.get(path)
        _ro_roots[path] = (old[0], old[1] + 1, old[2]) if old else (why, 1, root)


def unmark_read_only(root: str) -> None:
    """Drop one mark made by :func:`mark_read_only`."""
    path = os.path.realpath(root)
    with _ro_mu:
        old = _ro_roots.get(path)
        if old is None:
            return
        if old[1] <= 1:
            del _ro_roots[path]
        else:
            _ro_roots[path] = (old[0], old[1] - 1, old[2])


def read_only_root(path: str) -> tuple[str, str] | None:
    """``(root, why)`` when ``path`` lies under a root marked read-only, else None; ``root``
    is spelled as it was marked.
    """
    if not _ro_roots:
        return None
    real = os.path.realpath(path)
    with _ro_mu:
        for root, (why, _n, given) in _ro_roots.items():
            if real == root or real.startswith(root.rstrip("/") + "/"):
                return given, why
    return None


def fs_read_only(path: str) -> bool:
    """Whether the filesystem holding ``path`` (or its nearest existing parent) is mounted
    read-only.
    """
    try:
        return bool(os.statvfs(_existing(path)).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def read_only_error(path: str) -> ReadOnly:
    """The error for a write refused under ``path``: names the root and how to allow writes."""
    found = read_only_root(path)
    if found is None:
        mnt = mount_point(path)
        return ReadOnly(f"root {path} is read-only (filesystem {mnt} is mounted read-only)",
                        hint=f"remount {mnt} read-write to change it; every read works as it is")
    root, why = found
    if why == "flag":
        hint = "it was opened with --read-only (or HOLD_READ_ONLY=1): run without it to write"
    else:
        hint = (f"filesystem {mount_point(root)} is mounted read-only: remount it read-write "
                "to change it; every read works as it is")
    return ReadOnly(f"root {root} is read-only", hint=hint)


def check_writable(path: str) -> None:
    """Raise :class:`ReadOnly` when ``path`` lies under a read-only root."""
    if _ro_roots and read_only_root(path) is not None:
        raise read_only_error(path)


# --- filesystems ---------------------------------------------------------------------------
def _existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def mount_point(path: str) -> str:
    """The mount point of the filesystem holding ``path`` (from /proc/self/mountinfo, so a
    bind mount is named by where it is mounted).
    """
    from cargohold.mount.info import mountinfo  # an error's message only: not at start-up

    real = os.path.realpath(_existing(path))
    best = "/"
    try:
        entries = mountinfo()
    except OSError:
        return best
    for e in entries:
        mp = e.target
        if (real == mp or real.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
            best = mp
    return best


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``."""
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def no_space(path: str, what: str, needed: int = 0, *, free: int | None = None,
             at_least: bool = False, when: str = "") -> NoSpace:
    """``what: no space left on filesystem MNT (needs N, F free)``, with the hint that frees
    space. ``free`` overrides the free space measured now (e.g. with what was free before the
    failed write took its part; ``when`` says so: "when the layer started"); ``at_least`` marks
    ``needed`` as a lower bound.
    """
    need = f"needs {'at least ' if at_least else ''}{human_size(needed)}, " if needed else ""
    free = free_bytes(path) if free is None else free
    tail = f" {when}" if when else ""
    return NoSpace(f"{what}: no space left on filesystem {mount_point(path)} "
                   f"({need}{human_size(free)} free{tail})", hint=HINT_FREE)


# --- translation ---------------------------------------------------------------------------
def _owner(path: str) -> str:
    p = _existing(path)
    try:
        uid = os.stat(p).st_uid
    except OSError:
        return ""
    try:
        import pwd

        name = pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        name = str(uid)
    return f"{p} belongs to {name} (uid {uid})"


def translate(exc: OSError, path: str, what: str = "", *, needed: int = 0
              ) -> CargoholdError:
    """The cargohold error for ``exc``, met while working on ``path``.

    ``what`` is the subject of the message (default: the path); ``needed`` the bytes being
    written when known (named in a :class:`NoSpace`). Errnos not listed in the module
    docstring become :class:`FailedPrecondition` with the OS's own words.
    """
    what = what or path
    reason = exc.strerror or str(exc)
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        if code == errno.EDQUOT:
            return NoSpace(f"{what}: disk quota exceeded on filesystem {mount_point(path)}",
                           hint=HINT_FREE.replace("grow the filesystem", "raise the quota"))
        return no_space(path, what, needed)
    if code == errno.EROFS:
        return read_only_error(path)
    if code in (errno.EACCES, errno.EPERM):
        owner = _owner(path)
        hint = (f"{owner}: run hold as that user or as root, or give --root a directory of "
                "your own") if owner else "run hold as the owner of the root, or as root"
        return PermissionDenied(f"{what}: permission denied", hint=hint)
    if code == errno.EIO:
        return FailedPrecondition(
            f"{what}: I/O error on filesystem {mount_point(path)}",
            hint="the disk or filesystem reported an error: check 'dmesg'; once it is "
                 "healthy, 'hold fsck' checks the root")
    if code in (errno.EMFILE, errno.ENFILE):
        scope = "this process" if code == errno.EMFILE else "the system"
        return Unavailable(f"{what}: too many open files ({scope})",
                           hint="raise the open-file limit ('ulimit -n') or run fewer "
                                "commands at once")
    if code == errno.ENOENT:
        return NotFound(f"{what}: {reason}")
    return FailedPrecondition(f"{what}: {reason}")


def output_error(exc: OSError, path: str, what: str) -> CargoholdError:
    """The error for a failed write of output the user asked for (an exported archive, a blob
    sent to standard output) to ``path``, which is not under the root: the hints name that
    path's filesystem, not the root's.

    Errnos outside the module docstring's table are :class:`FailedPrecondition` with the OS's
    own words.
    """
    reason = exc.strerror or str(exc)
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        err = translate(exc, path, what)
        err.hint = (f"free space on {mount_point(path)} (with 'hold gc' when the root shares "
                    "it), or write the output to another filesystem")
        return err
    if code == errno.EROFS:
        return FailedPrecondition(f"{what}: filesystem {mount_point(path)} is read-only",
                                  hint="write the output to a writable directory")
    if code in (errno.EACCES, errno.EPERM):
        owner = _owner(path)
        return PermissionDenied(f"{what}: permission denied",
                                hint=f"{owner}: write the output somewhere you may write"
                                if owner else "write the output somewhere you may write")
    if code in (errno.EIO, errno.EMFILE, errno.ENFILE):
        return translate(exc, path, what)
    return FailedPrecondition(f"{what}: {reason}")


def stream_error(exc: OSError, fd: int | None, what: str) -> CargoholdError:
    """:func:`output_error` for a write to the open descriptor ``fd`` (standard output): a
    file is named by its path; a pipe, a terminal or a device by what it is.
    """
    import stat

    target = ""
    try:
        if fd is not None:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if stat.S_ISREG(os.fstat(fd).st_mode) and target.startswith("/"):
                return output_error(exc, target, f"{what} ({target})")
    except OSError:
        pass  # no /proc or a closed descriptor: the message names no file, nothing more
    where = f" ({target})" if target else ""
    return FailedPrecondition(f"{what}{where}: {exc.strerror or exc}",
                              hint="send the output somewhere that takes it (a file on a "
                                   "filesystem with room, a pipe)")


def is_env_errno(code: int | None) -> bool:
    """Whether ``code`` is one :func:`translate` explains (the environment, not a bug)."""
    return code in _ENV


_ENV = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
        errno.EMFILE, errno.ENFILE}
