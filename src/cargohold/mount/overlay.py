"""Overlay mounts that survive long lower chains.

The classic ``mount(2)`` data string is limited to one page (about 4 KiB), which absolute
lowerdir paths exhaust at roughly 60 layers. This module uses the new mount API (``fsopen`` +
``fsconfig`` with one ``lowerdir+`` per layer, kernel 6.8+), which has no such limit, and falls
back to ``mount(2)`` with lowerdirs relative to their common directory (mounted from a thread
that alone changed into it) where the kernel lacks it. The Mount objects themselves always keep
absolute paths, so what a user is shown pastes into a shell.
"""

from __future__ import annotations

import ctypes
import os

from cargohold.mount.kernel import MountError, _sys_mount, libc
from cargohold.types import Mount

SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
SYS_MOVE_MOUNT = 429
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSOPEN_CLOEXEC = 1
FSMOUNT_CLOEXEC = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
AT_FDCWD = -100

_new_api: bool | None = None


def _syscall(*args: object) -> int:
    return libc().syscall(*args)


def _fsconfig(fd: int, cmd: int, key: str | None, value: str | None) -> None:
    rc = _syscall(SYS_FSCONFIG, ctypes.c_int(fd), ctypes.c_uint(cmd),
                  key.encode() if key is not None else None,
                  value.encode() if value is not None else None, ctypes.c_int(0))
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"fsconfig {key}={value}: {os.strerror(e)}")


def _new_api_mount(target: str, flags: int, options: list[str]) -> None:
    fd = _syscall(SYS_FSOPEN, b"overlay", ctypes.c_uint(FSOPEN_CLOEXEC))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"fsopen overlay: {os.strerror(e)}")
    mfd = -1
    try:
        for o in options:
            k, eq, v = o.partition("=")
            if k == "lowerdir":
                for layer in v.split(":"):
                    _fsconfig(fd, FSCONFIG_SET_STRING, "lowerdir+", layer)
            elif eq:
                _fsconfig(fd, FSCONFIG_SET_STRING, k, v)
            else:
                _fsconfig(fd, FSCONFIG_SET_FLAG, k, None)
        _fsconfig(fd, FSCONFIG_CMD_CREATE, None, None)
        attrs = MOUNT_ATTR_RDONLY if flags & 0x1 else 0
        mfd = _syscall(SYS_FSMOUNT, ctypes.c_int(fd), ctypes.c_uint(FSMOUNT_CLOEXEC),
                       ctypes.c_uint(attrs))
        if mfd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"fsmount: {os.strerror(e)}")
        rc = _syscall(SYS_MOVE_MOUNT, ctypes.c_int(mfd), b"", ctypes.c_int(AT_FDCWD),
                      target.encode(), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))
        if rc < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"move_mount to {target}: {os.strerror(e)}")
    finally:
        if mfd >= 0:
            os.close(mfd)
        os.close(fd)


def has_new_api() -> bool:
    """Whether this kernel takes ``lowerdir+`` through fsconfig (probed once)."""
    global _new_api
    if _new_api is None:
        fd = _syscall(SYS_FSOPEN, b"overlay", ctypes.c_uint(FSOPEN_CLOEXEC))
        if fd < 0:
            _new_api = False
        else:
            try:
                _fsconfig(fd, FSCONFIG_SET_STRING, "lowerdir+", "/")
                _new_api = True
            except OSError:
                _new_api = False
            finally:
                os.close(fd)
    return _new_api


PAGE_LIMIT = os.sysconf("SC_PAGESIZE") - 512  # room for what the kernel adds itself
CLONE_FS = 0x200


def mount_overlay(m: Mount, target: str, flags: int, data: str) -> None:
    """Mount an overlay; long option strings go through the new mount API when the kernel has
    it, else through relative lowerdirs mounted from a thread that changed directory alone.

    Raises MountError naming the limit when neither fits.
    """
    if len(data) < PAGE_LIMIT:
        _sys_mount(m.source or "overlay", target, "overlay", flags, data)
        return
    opts = [o for o in m.options if o not in ("ro", "rw")]
    if has_new_api():
        try:
            _new_api_mount(target, flags, opts)
        except OSError as exc:
            raise MountError(f"mount overlay on {target}: {exc.strerror}") from exc
        return
    common, short = compact_options(opts)
    if not common or len(short) >= PAGE_LIMIT:
        n = sum(o.count(":") + 1 for o in opts if o.startswith("lowerdir="))
        raise MountError(
            f"mount overlay on {target}: {n} lower directories need {len(data)} bytes of "
            f"options, more than one page ({PAGE_LIMIT})",
            hint="this kernel lacks fsconfig 'lowerdir+' (Linux 6.8+); use fewer layers, "
                 "or flatten the image into one layer")
    _mount_from(common, target, flags, short)


def compact_options(options: list[str]) -> tuple[str, str]:
    """Rewrite lowerdirs relative to their common directory: (that directory, data string).

    Gives ("", "") when the lowers share no directory below ``/``.
    """
    out, common = [], ""
    for o in options:
        if o.startswith("lowerdir="):
            lowers = o[len("lowerdir="):].split(":")
            common = os.path.commonpath(lowers)
            if common in lowers:  # a lower directory must not turn into "."
                common = os.path.dirname(common)
            if common == "/":
                return "", ""
            o = "lowerdir=" + ":".join(os.path.relpath(p, common) for p in lowers)
        out.append(o)
    return common, ",".join(out)


def _mount_from(cwd: str, target: str, flags: int, data: str) -> None:
    # The kernel resolves relative lowerdirs against the caller's working directory. A thread
    # that unshares its filesystem context (CLONE_FS) can chdir without moving the rest of the
    # process; Python never reuses the OS thread of a finished threading.Thread.
    import threading

    target = os.path.abspath(target)
    result: list[BaseException] = []

    def run() -> None:
        try:
            if libc().unshare(CLONE_FS) != 0:
                e = ctypes.get_errno()
                raise MountError(f"mount overlay on {target}: unshare: {os.strerror(e)}")
            os.chdir(cwd)
            # The source names the directory the lowers are relative to, so that a reader of
            # mountinfo (GC, mount.info.MountUsers) knows which layers this mount uses.
            _sys_mount(cwd, target, "overlay", flags, data)
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)

    t = threading.Thread(target=run, name="overlay-mount")
    t.start()
    t.join()
    if result:
        raise result[0]
