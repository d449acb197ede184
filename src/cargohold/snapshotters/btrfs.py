"""The btrfs snapshotter: one subvolume per snapshot, children as btrfs snapshots.

The root must be on btrfs. Layout (temp and removal names as in ``_common.py``)::

    <root>/snapshots/<id>    a subvolume: empty for a prepare/view without parent, else a
                             snapshot of the parent's subvolume (read-only for views);
                             set read-only when committed

Mounts are ``btrfs`` mounts of the filesystem's device with ``subvolid=<n>`` (plus ``ro`` for
views), so they paste into a shell. Subvolumes are made and deleted with ioctls
(``BTRFS_IOC_SUBVOL_CREATE``, ``SNAP_CREATE_V2``, ``SNAP_DESTROY``, ``SUBVOL_SETFLAGS``,
``INO_LOOKUP``); only quota queries run the ``btrfs`` command, through the
:class:`~cargohold.snapshotters.runner.Runner` seam every backend shares, so
tests can assert its argv. Usage at commit is the subvolume's exclusive bytes from qgroups when
quotas are enabled (inodes then read -1: qgroups do not count them), else a walk that counts
what differs from the parent.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import struct
from typing import Any

from cargohold._fsutil import dir_size
from cargohold.errors import FailedPrecondition, Unsupported
from cargohold.mount import libc
from cargohold.snapshotters._common import DirSnapshotter, diff_usage, os_error
from cargohold.snapshotters.api import Kind, Usage
from cargohold.snapshotters.runner import Runner
from cargohold.snapshotters.storage import Snapshot
from cargohold.types import Mount

BTRFS_SUPER_MAGIC = 0x9123683E
FIRST_FREE_OBJECTID = 256  # the inode number of every subvolume's root directory


def _iow(nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (0x94 << 8) | nr


SUBVOL_CREATE = _iow(14, 4096)
SNAP_DESTROY = _iow(15, 4096)
SNAP_CREATE_V2 = _iow(23, 4096)
SUBVOL_GETFLAGS = (2 << 30) | (8 << 16) | (0x94 << 8) | 25
SUBVOL_SETFLAGS = _iow(26, 8)
INO_LOOKUP = (3 << 30) | (4096 << 16) | (0x94 << 8) | 18
SUBVOL_RDONLY = 1 << 1


class Btrfs(DirSnapshotter):
    """Subvolume snapshots under ``root`` (which must be on btrfs)."""

    name = "btrfs"

    def __init__(self, root: str, *, runner: Runner | None = None) -> None:
        self.check_support(root)
        super().__init__(root)
        self.runner = runner or Runner()
        self.device = device_of(self.root)
        self._quotas: bool | None = None

    @staticmethod
    def check_support(root: str, section: dict[str, Any] | None = None) -> None:
        """Raise Unsupported unless ``root`` (or its nearest existing parent) is on btrfs."""
        path = os.path.abspath(root)
        while not os.path.exists(path):
            path = os.path.dirname(path)
        if fs_magic(path) != BTRFS_SUPER_MAGIC:
            raise Unsupported(f"btrfs root {root}: not on a btrfs filesystem",
                              hint="set [snapshotters.btrfs] root_path to a directory on "
                                   "btrfs, or use another snapshotter")

    @classmethod
    def from_config(cls, root: str, section: dict[str, Any] | None = None) -> Btrfs:
        """Build from ``[snapshotters.btrfs]``: ``root_path`` (when set) replaces ``root``."""
        return cls((section or {}).get("root_path") or root)

    # --- hooks -------------------------------------------------------------------------------
    def _create(self, path: str, kind: Kind, parent_ids: tuple[str, ...]) -> None:
        if parent_ids:
            snapshot(self.path(parent_ids[0]), path, readonly=kind == Kind.VIEW)
        else:
            subvol_create(path)
            if kind == Kind.VIEW:
                set_readonly(path, True)

    def _mounts(self, sn: Snapshot) -> list[Mount]:
        opts = [f"subvolid={subvol_id(self.path(sn.id))}"]
        if sn.kind == Kind.VIEW:
            opts.append("ro")
        return [Mount("btrfs", self.device, tuple(opts))]

    def _active_usage(self, sn: Snapshot) -> Usage:
        if self.quotas_enabled():
            return Usage(self._qgroup_exclusive(self.path(sn.id)), -1)
        if sn.parent_ids:
            return diff_usage(self.path(sn.parent_ids[0]), self.path(sn.id))
        return Usage(*dir_size(self.path(sn.id)))

    def _freeze(self, id: str) -> None:
        set_readonly(self.path(id), True)

    def _thaw(self, id: str) -> None:
        set_readonly(self.path(id), False)

    def _delete(self, path: str) -> None:
        delete_subvolume_tree(path)

    # --- quotas ------------------------------------------------------------------------------
    def quotas_enabled(self) -> bool:
        """Whether qgroups are on for this filesystem (asked once per handle)."""
        if self._quotas is None:
            try:
                self.runner.run(["btrfs", "qgroup", "show", "--raw", self.snapshots_dir])
                self._quotas = True
            except FailedPrecondition:
                self._quotas = False
        return self._quotas

    def _qgroup_exclusive(self, path: str) -> int:
        out = self.runner.run(["btrfs", "qgroup", "show", "--raw", "--sync", "-f", path]).stdout
        return parse_qgroup_exclusive(out, subvol_id(path))

    def subvolume(self, key: str) -> str:
        """The subvolume directory of an active snapshot, for writing a layer without mounting."""
        with self.ms.view() as tx:
            sn = self.ms.get_snapshot(tx, key)
        return self.path(sn.id)


def parse_qgroup_exclusive(out: str, subvolid: int) -> int:
    """The exclusive bytes of qgroup ``0/<subvolid>`` in ``btrfs qgroup show --raw`` output."""
    want = f"0/{subvolid}"
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0] == want:
            return int(f[2])
    raise FailedPrecondition(f"btrfs qgroup {want}: not listed",
                             hint="run 'btrfs quota rescan' on the filesystem")


# --- ioctls --------------------------------------------------------------------------------------
def fs_magic(path: str) -> int:
    """The ``f_type`` of ``statfs(path)``."""
    buf = ctypes.create_string_buffer(256)
    if libc().statfs(path.encode(), buf) != 0:
        e = ctypes.get_errno()
        raise os_error(f"statfs {path}", OSError(e, os.strerror(e)))
    return struct.unpack_from("l", buf.raw)[0] & 0xFFFFFFFF


def device_of(path: str) -> str:
    """The source device of the mount holding ``path`` (from /proc/self/mountinfo)."""
    real = os.path.realpath(path)
    best, dev = "", ""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mp = left.split()[4].replace("\\040", " ")
            fstype, source = right.split()[:2]
            if fstype == "btrfs" and (real == mp or real.startswith(mp.rstrip("/") + "/")) \
                    and len(mp) > len(best):
                best, dev = mp, source
    if not dev:
        raise Unsupported(f"btrfs root {path}: no btrfs mount holds it")
    return dev


def _vol_args(name: str, fd: int = 0) -> bytes:
    return struct.pack("q4088s", fd, os.fsencode(name))


def _ioctl_at(parent: str, req: int, arg: bytes, what: str) -> None:
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # a mutable buffer: fcntl.ioctl copies immutable arguments into a 1 KiB buffer only
        fcntl.ioctl(fd, req, bytearray(arg), True)
    except OSError as exc:
        raise os_error(what, exc) from exc
    finally:
        os.close(fd)


def subvol_create(path: str) -> None:
    """Create an empty subvolume at ``path``."""
    parent, name = os.path.split(path)
    _ioctl_at(parent, SUBVOL_CREATE, _vol_args(name), f"btrfs subvolume {path}")


def snapshot(src: str, dst: str, *, readonly: bool = False) -> None:
    """Snapshot subvolume ``src`` as ``dst`` (read-only when asked)."""
    parent, name = os.path.split(dst)
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        arg = struct.pack("qQQ32s4040s", sfd, 0, SUBVOL_RDONLY if readonly else 0, b"",
                          os.fsencode(name))
        _ioctl_at(parent, SNAP_CREATE_V2, arg, f"btrfs snapshot {src} as {dst}")
    finally:
        os.close(sfd)


def subvol_id(path: str) -> int:
    """The subvolume id (tree id) of the subvolume holding ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(struct.pack("QQ4080s", 0, FIRST_FREE_OBJECTID, b""))
        fcntl.ioctl(fd, INO_LOOKUP, buf, True)
    except OSError as exc:
        raise os_error(f"btrfs subvolume {path}", exc) from exc
    finally:
        os.close(fd)
    return struct.unpack_from("Q", buf)[0]


def set_readonly(path: str, ro: bool) -> None:
    """Set or clear the read-only flag of subvolume ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, SUBVOL_GETFLAGS, buf, True)
        flags = struct.unpack("Q", buf)[0]
        flags = flags | SUBVOL_RDONLY if ro else flags & ~SUBVOL_RDONLY
        fcntl.ioctl(fd, SUBVOL_SETFLAGS, struct.pack("Q", flags))
    except OSError as exc:
        raise os_error(f"btrfs subvolume {path}", exc) from exc
    finally:
        os.close(fd)


def is_subvolume(path: str) -> bool:
    """Whether ``path`` is the root of a subvolume."""
    st = os.lstat(path)
    return st.st_ino == FIRST_FREE_OBJECTID and os.path.isdir(path) \
        and not os.path.islink(path)


def delete_subvolume_tree(path: str) -> None:
    """Delete ``path``: a subvolume (and any subvolumes nested in it) or a plain directory."""
    if not os.path.lexists(path):
        return
    if not is_subvolume(path):
        shutil.rmtree(path)
        return
    parent, name = os.path.split(path)
    try:
        _ioctl_at(parent, SNAP_DESTROY, _vol_args(name), f"btrfs subvolume {path}")
        return
    except FailedPrecondition as exc:
        if not isinstance(exc.__cause__, OSError) or exc.__cause__.errno != errno.ENOTEMPTY:
            raise
    # Something created subvolumes inside this one (a container running btrfs tools):
    # delete those first, deepest first, then this one.
    set_readonly(path, False)
    nested = []
    for d, dirs, _ in os.walk(path):
        for n in dirs:
            p = os.path.join(d, n)
            if is_subvolume(p):
                nested.append(p)
    for p in sorted(nested, key=len, reverse=True):
        delete_subvolume_tree(p)
    _ioctl_at(parent, SNAP_DESTROY, _vol_args(name), f"btrfs subvolume {path}")
