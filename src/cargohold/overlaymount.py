"""Overlay mounts that survive long lower chains.

The classic ``mount(2)`` data string is limited to one page (about 4 KiB), which absolute
lowerdir paths exhaust at roughly 60 layers. This module uses the new mount API (``fsopen`` +
``fsconfig`` with one ``lowerdir+`` per layer, kernel 6.8+), which has no such limit, and falls
back to ``mount(2)`` where the kernel lacks it.
"""

from __future__ import annotations

import ctypes
import os

from cargohold.mount import MountError, _sys_mount, libc
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


def mount_overlay(m: Mount, target: str, flags: int, data: str) -> None:
    """Mount an overlay, through the new mount API when the data string is too long for
    ``mount(2)`` and the kernel has it.
    """
    if len(data) < 3500 or not has_new_api():
        _sys_mount(m.source or "overlay", target, "overlay", flags, data)
        return
    opts = [o for o in m.options if o not in ("ro", "rw")]
    try:
        _new_api_mount(target, flags, opts)
    except OSError as exc:
        raise MountError(f"mount overlay on {target}: {exc.strerror}") from exc
