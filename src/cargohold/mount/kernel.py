"""Mounting and unmounting :class:`~cargohold.types.Mount` lists on Linux: the system calls.

``mount_all(mounts, target)`` mounts in order; ``unmount(target)`` retries on EBUSY and treats
"not mounted" as done; ``temp_mount(mounts)`` mounts into a fresh directory for the length of a
``with`` block and removes the directory only once it is really unmounted (never ``rmtree``,
so a failed unmount can never delete mounted data).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import time
from collections.abc import Iterator, Sequence

from cargohold.errors import CargoholdError, FailedPrecondition, Unsupported
from cargohold.mount.info import is_mountpoint
from cargohold.types import Mount

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MNT_DETACH = 0x2

_FLAGS = {
    "ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
    "bind": MS_BIND, "rbind": MS_BIND | MS_REC, "remount": MS_REMOUNT,
}
_CLEAR = {"rw": MS_RDONLY, "suid": MS_NOSUID, "dev": MS_NODEV, "exec": MS_NOEXEC}

_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    """The C library, loaded once, with errno kept."""
    global _libc
    if _libc is None:
        # The interpreter is linked against libc, so its own symbols are libc's: no
        # ctypes.util.find_library, which runs ldconfig in a subprocess (~10 ms a start).
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            if not hasattr(_libc, "mount"):  # a static or unusual build may lack it
                raise AttributeError("mount")
        except (OSError, AttributeError):
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    return _libc


class MountError(CargoholdError):
    """The kernel refused a mount or unmount."""


def parse_options(options: Sequence[str]) -> tuple[int, str]:
    """Split fstab-style options into mount flags and the data string."""
    flags = 0
    data = []
    for o in options:
        if o in _FLAGS:
            flags |= _FLAGS[o]
        elif o in _CLEAR:
            flags &= ~_CLEAR[o]
        else:
            data.append(o)
    return flags, ",".join(data)


def _sys_mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    rc = libc().mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                      ctypes.c_ulong(flags), data.encode() if data else None)
    if rc != 0:
        e = ctypes.get_errno()
        raise MountError(f"mount {source} on {target} ({fstype or 'bind'}): "
                         f"{os.strerror(e)}", hint=_hint(e, data))


def _hint(e: int, data: str) -> str | None:
    if e == errno.EPERM:
        return "mounting needs root (CAP_SYS_ADMIN)"
    if e == errno.EINVAL and len(data) > 4000:
        return "the mount options are longer than the kernel's one-page limit"
    if e == errno.ENODEV:
        return "the kernel lacks this filesystem type"
    return None


def mount(m: Mount, target: str) -> None:
    """Mount one :class:`Mount` on ``target``; a read-only bind is remounted read-only for real."""
    flags, data = parse_options(m.options)
    if m.type == "bind" or flags & MS_BIND:
        _sys_mount(m.source, target, "", flags & ~MS_RDONLY, "")
        if flags & MS_RDONLY:
            _sys_mount("", target, "", MS_REMOUNT | MS_BIND | MS_RDONLY
                       | (flags & (MS_NOSUID | MS_NODEV | MS_NOEXEC)), "")
        return
    if m.type == "overlay":
        from cargohold.mount import overlay

        overlay.mount_overlay(m, target, flags, data)
        return
    _sys_mount(m.source, target, m.type, flags, data)


def mount_all(mounts: Sequence[Mount], target: str) -> None:
    """Mount each in order on ``target``; on failure unmount what was mounted and re-raise."""
    done = 0
    try:
        for m in mounts:
            mount(m, target)
            done += 1
    except BaseException:
        for _ in range(done):
            with contextlib.suppress(CargoholdError):
                unmount(target)
        raise


def unmount(target: str, *, retries: int = 50, delay: float = 0.05, detach: bool = False) -> None:
    """Unmount ``target`` once; EINVAL (not mounted) and ENOENT are done; EBUSY is retried."""
    for i in range(retries):
        rc = libc().umount2(target.encode(), MNT_DETACH if detach else 0)
        if rc == 0:
            return
        e = ctypes.get_errno()
        if e in (errno.EINVAL, errno.ENOENT):
            return
        if e == errno.EBUSY and i + 1 < retries:
            time.sleep(delay)
            continue
        raise MountError(f"unmount {target}: {os.strerror(e)}",
                         hint="a process may still use it: find it with 'fuser -vm "
                              f"{target}'" if e == errno.EBUSY else None)


def unmount_all(target: str) -> None:
    """Unmount every mount stacked on ``target`` until it is no longer a mount point."""
    for _ in range(64):
        if not is_mountpoint(target):
            return
        unmount(target)
    raise FailedPrecondition(f"unmount {target}: still mounted after 64 unmounts")


@contextlib.contextmanager
def temp_mount(mounts: Sequence[Mount], *, readonly: bool = False) -> Iterator[str]:
    """Mount into a new temporary directory; yield its path; unmount and remove it after."""
    if not mounts:
        raise Unsupported("temp mount: no mounts given")
    mounts = [read_only(m) for m in mounts] if readonly else list(mounts)
    import tempfile  # lazily: only a mount that needs a scratch directory pays for it

    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    d = tempfile.mkdtemp(prefix="cargohold-mount-", dir=base)
    try:
        mount_all(mounts, d)
    except BaseException:
        os.rmdir(d)
        raise
    try:
        yield d
    finally:
        unmount_all(d)
        os.rmdir(d)  # not rmtree: if the unmount failed this fails too and nothing is lost


def read_only(m: Mount) -> Mount:
    """The read-only form of a mount: overlay upper folded into the lowers, others get ``ro``."""
    if m.type == "overlay":
        upper = next((o[9:] for o in m.options if o.startswith("upperdir=")), None)
        opts: list[str] = []
        for o in m.options:
            if o.startswith(("upperdir=", "workdir=")) or o in ("rw", "volatile"):
                continue
            if o.startswith("lowerdir=") and upper:
                o = f"lowerdir={upper}:{o[9:]}"
            opts.append(o)
        if upper and not any(o.startswith("lowerdir=") for o in opts):
            opts.append(f"lowerdir={upper}")
        return Mount(m.type, m.source, tuple(opts))
    opts = [o for o in m.options if o != "rw"]
    if "ro" not in opts:
        opts.append("ro")
    return Mount(m.type, m.source, tuple(opts))
