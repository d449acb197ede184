"""The native snapshotter: every active snapshot is a full copy of its parent.

Layout: ``<root>/snapshots/<id>/`` is the snapshot's whole tree (see ``dirtree.py``). Copies
clone file data where the filesystem can (``FICLONE`` on btrfs/xfs, ``copy_file_range`` which
lets NFS and others copy server-side) and fall back to reading and writing. Modes, owners,
xattrs, symlinks, hardlinks, device nodes, fifos, sockets and times are kept. Nothing needs root
except copying device nodes and foreign owners, which only root can create anyway.

Mounts are bind mounts: an active snapshot binds its own directory read-write; a view with a
parent binds the parent's directory read-only (no copy is made for it); a view with no parent
binds its own empty directory read-only.

Usage, as the contract asks, excludes the parent: it counts what differs from the parent's
tree (:func:`~cargohold.snapshotters.dirtree.diff_usage`), not the bytes the copy duplicates.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
from typing import Any

from cargohold._fsutil import dir_size
from cargohold.snapshotters.api import Kind, Usage
from cargohold.snapshotters.dirtree import DirSnapshotter, diff_usage
from cargohold.snapshotters.storage import Snapshot
from cargohold.types import Mount

FICLONE = 0x40049409
_NO_CLONE = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
             errno.EBADF, errno.ETXTBSY, errno.EPERM)


class Native(DirSnapshotter):
    """Full-copy snapshots under ``root``; works unprivileged (mounting them needs root)."""

    name = "native"

    @classmethod
    def from_config(cls, root: str, section: dict[str, Any] | None = None) -> Native:
        """Build from a ``[snapshotters.native]`` config section (no keys yet)."""
        return cls(root)

    def _create(self, path: str, kind: Kind, parent_ids: tuple[str, ...]) -> None:
        if parent_ids and kind == Kind.ACTIVE:
            copy_tree(self.path(parent_ids[0]), path)
        else:
            os.mkdir(path, 0o755)
            os.chmod(path, 0o755)

    def _source(self, sn: Snapshot) -> str:
        if sn.kind == Kind.VIEW and sn.parent_ids:
            return self.path(sn.parent_ids[0])
        return self.path(sn.id)

    def _mounts(self, sn: Snapshot) -> list[Mount]:
        ro = "ro" if sn.kind == Kind.VIEW else "rw"
        return [Mount("bind", self._source(sn), ("rbind", ro))]

    def _active_usage(self, sn: Snapshot) -> Usage:
        if sn.parent_ids and sn.kind == Kind.ACTIVE:
            return diff_usage(self.path(sn.parent_ids[0]), self.path(sn.id))
        if sn.parent_ids:  # a view has no tree of its own
            return Usage()
        return Usage(*dir_size(self.path(sn.id)))

    def root_dir(self, key: str) -> str:
        """The directory holding ``key``'s tree, for writing a layer without mounting.

        Active snapshots only: that directory is the snapshot's own copy.
        """
        with self.ms.view() as tx:
            sn = self.ms.get_snapshot(tx, key)
        return self._source(sn)


# --- copying a tree ----------------------------------------------------------------------------
def copy_tree(src: str, dst: str) -> None:
    """Copy the tree ``src`` to the new directory ``dst`` with everything a layer can carry.

    Hardlinks inside ``src`` stay hardlinks; xattrs that cannot be set here (``security.*``
    unprivileged, ``trusted.*``) are skipped, as containerd does.
    """
    links: dict[tuple[int, int], str] = {}
    st = os.lstat(src)
    os.mkdir(dst, 0o700)
    _copy_dir(src, dst, links)
    _copy_meta(src, dst, st)


def _copy_dir(src: str, dst: str, links: dict[tuple[int, int], str]) -> None:
    with os.scandir(src) as it:
        entries = list(it)
    for e in entries:
        s, d = e.path, os.path.join(dst, e.name)
        st = e.stat(follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(d, 0o700)
            _copy_dir(s, d, links)
        elif st.st_nlink > 1 and not stat.S_ISDIR(mode) and (st.st_dev, st.st_ino) in links:
            os.link(links[(st.st_dev, st.st_ino)], d)
            continue
        elif stat.S_ISREG(mode):
            copy_file(s, d)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) \
                or stat.S_ISSOCK(mode):
            os.mknod(d, mode, st.st_rdev)
        else:  # pragma: no cover - no other file types exist on Linux
            continue
        if st.st_nlink > 1:
            links[(st.st_dev, st.st_ino)] = d
        _copy_meta(s, d, st)


def _copy_meta(src: str, dst: str, st: os.stat_result) -> None:
    link = stat.S_ISLNK(st.st_mode)
    try:
        os.lchown(dst, st.st_uid, st.st_gid)
    except PermissionError:
        pass  # unprivileged: the copy belongs to us, which is all we can do
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        names = []  # the source filesystem has no xattrs at all: nothing to copy
    for n in names:
        try:
            os.setxattr(dst, n, os.getxattr(src, n, follow_symlinks=False),
                        follow_symlinks=False)
        except OSError as exc:
            # Only what cannot exist on a copy may be dropped: an xattr namespace this
            # filesystem lacks, or trusted.* / security.* as an unprivileged user. Anything
            # else would silently lose data from the parent, so it fails the snapshot.
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP) or (
                    exc.errno == errno.EPERM and os.geteuid() != 0):
                continue
            raise
    if not link:
        # after chown, which clears setuid/setgid bits
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_file(src: str, dst: str) -> None:
    """Copy one regular file's data: clone, else ``copy_file_range``, else read and write."""
    with open(src, "rb") as fs, open(dst, "xb") as fd:
        try:
            fcntl.ioctl(fd.fileno(), FICLONE, fs.fileno())
            return
        except OSError as exc:
            if exc.errno not in _NO_CLONE:
                raise
        size = os.fstat(fs.fileno()).st_size
        off = 0
        try:
            while off < size:
                n = os.copy_file_range(fs.fileno(), fd.fileno(), size - off)
                if n == 0:
                    break
                off += n
            return
        except OSError as exc:
            if exc.errno not in _NO_CLONE:
                raise
        fs.seek(off)
        fd.seek(off)
        shutil.copyfileobj(fs, fd, 1 << 20)
