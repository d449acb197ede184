"""Writing tar entries into a directory: the per-entry half of layer application.

:class:`Extractor` takes entries from a :class:`~cargohold.differ.tarread.TarReader` and
creates them under a root through a :class:`~cargohold.differ.resolve.Resolver` (which keeps
every path inside the root). Order of operations per file, and why:

1. create with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (an existing entry is removed first — never
   written through, since it may be a hardlink or a symlink);
2. write the data (straight from the decompressed chunks, no copies);
3. ``fchown`` — before ``fchmod`` because chown clears setuid/setgid;
4. ``fchmod`` with all 12 mode bits;
5. xattrs — after the data and the chown, both of which drop ``security.capability``;
6. times; directories' times are set at the very end, since adding children changes them.

An existing path is replaced unless both it and the entry are directories (then only the
metadata is applied: a merge). Whiteouts are handled by :mod:`cargohold.differ.whiteout`.

Policies:

- xattrs named ``trusted.*`` or ``user.overlay.*`` are never written (they steer overlayfs:
  a layer could fake whiteouts, opaque dirs or redirects); each is reported as a warning.
  ``ENOTSUP``, and ``EPERM`` for ``user.*`` on symlinks and devices, are warnings too.
- Device nodes are created only when ``devices`` is true (default: running as root);
  otherwise they are skipped with a warning, as containerd does in a user namespace.
- Owners are applied only as root (``same_owner``); otherwise files belong to the caller.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat

from cargohold._oserror import NoSpace, free_bytes, no_space
from cargohold.differ import whiteout
from cargohold.differ.api import (
    FORBIDDEN_XATTR_PREFIXES,
    WHITEOUT_PREFIX,
    ApplyError,
    LayerError,
)
from cargohold.differ.resolve import Resolver, clean
from cargohold.differ.tarheader import BLK, CHR, DIR, FIFO, LNK, REG, SYM, Entry
from cargohold.differ.tarread import TarReader

log = logging.getLogger("cargohold.differ")

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM}


class LayerNoSpace(ApplyError, NoSpace):
    """The target filesystem filled up while a layer was applied."""


class Extractor:
    """Applies entries under ``root``; ``overlay`` selects overlay whiteouts (else real ones)."""

    def __init__(self, root: str, layer: str, *, overlay: bool = False,
                 userxattr: bool = False, lowerdirs: list[str] | None = None,
                 same_owner: bool | None = None, devices: bool | None = None,
                 warnings: list[str] | None = None, layer_size: int = 0) -> None:
        is_root = os.geteuid() == 0
        self.layer = layer
        self.root = root
        # For a full disk's message: the layer's (compressed) size, a lower bound of what it
        # needs, and what was free before it took its part.
        self.layer_size = layer_size
        self.free_at_start = free_bytes(root)
        self.overlay = overlay
        self.xattr_ns = "user" if userxattr else "trusted"
        self.same_owner = is_root if same_owner is None else same_owner
        self.devices = is_root if devices is None else devices
        self.res = Resolver(root, layer, lowerdirs if overlay else None, self.same_owner,
                            overlay=overlay, xattr_ns=self.xattr_ns)
        self.warnings = warnings if warnings is not None else []
        self.dir_times: list[tuple[str, int, int]] = []
        self.unpacked: set[str] = set()  # real paths made by this layer (real-mode opaque)

    # -- driver ------------------------------------------------------------------------------
    def run(self, tar: TarReader) -> None:
        """Apply every entry of ``tar``; then set directory times."""
        while True:
            e = tar.next()
            if e is None:
                break
            try:
                self.entry(e, tar)
            except OSError as exc:
                raise self._oserror(exc, e.name) from exc
        for path, atime, mtime in self.dir_times:
            try:
                os.utime(path, ns=(atime, mtime), follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed later in the same layer

    def _oserror(self, exc: OSError, entry: str) -> Exception:
        what = f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            err = no_space(self.root, f"layer {self.layer}: entry {entry!r}", self.layer_size,
                           free=self.free_at_start, at_least=True,
                           when="when the layer started")
            return LayerNoSpace(err.message, hint=err.hint)
        if exc.errno in _ENV_ERRNOS:
            return ApplyError(f"layer {self.layer}: entry {entry!r}: {what}",
                              hint="free space or fix the target filesystem, then retry")
        return LayerError(self.layer, what, entry=entry)

    def warn(self, entry: str, text: str) -> None:
        msg = f"layer {self.layer}: entry {entry!r}: {text}"
        self.warnings.append(msg)
        log.warning("%s", msg)

    # -- entries -----------------------------------------------------------------------------
    def entry(self, e: Entry, tar: TarReader) -> None:
        """Apply one entry (its data, if any, is read from ``tar``)."""
        rel = clean(e.name, self.layer)
        if not rel:
            if e.type == DIR:
                return  # the root's own metadata belongs to the snapshotter, not the layer
            raise LayerError(self.layer, "entry would replace the root itself", entry=e.name)
        parent, _, base = rel.rpartition("/")
        if base.startswith(WHITEOUT_PREFIX):
            whiteout.handle(self, e, parent, base)
            return
        path = self.res.dir(parent, create=True, entry=e.name) + "/" + base  # type: ignore
        t = e.type
        if t == REG:
            self._file(e, path, tar)
        elif t == DIR:
            self._dir(e, path)
        elif t == SYM:
            self._make(path, lambda: os.symlink(e.linkname, path))
            self._meta(e, path, symlink=True)
        elif t == LNK:
            self._hardlink(e, path)
        elif t in (CHR, BLK):
            if not self.devices:
                self.warn(e.name, "device node skipped (creating devices needs root)")
                return
            kind = stat.S_IFCHR if t == CHR else stat.S_IFBLK
            dev = os.makedev(e.devmajor, e.devminor)  # the reader bounds both to 32 bits
            self._make(path, lambda: os.mknod(path, kind | 0o600, dev))
            self._meta(e, path)
        elif t == FIFO:
            self._make(path, lambda: os.mkfifo(path, 0o600))
            self._meta(e, path)
        else:
            raise LayerError(self.layer, f"unsupported tar entry type {t!r}", entry=e.name)
        if self.overlay:
            self.res.created(path)  # it may shadow a lower dir or symlink names went through
        else:
            self.unpacked.add(path)

    def remove(self, path: str) -> bool:
        """Remove whatever is at ``path`` (never following it); False when nothing was there."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)  # fd-based, never follows symlinks inside
            self.res.invalidate()
        else:
            os.unlink(path)
            if stat.S_ISLNK(st.st_mode):
                self.res.invalidate()
        return True

    def _make(self, path: str, create: object) -> None:
        try:
            create()  # type: ignore[operator]
        except FileExistsError:
            self.remove(path)
            create()  # type: ignore[operator]

    def _file(self, e: Entry, path: str, tar: TarReader) -> None:
        try:
            fd = os.open(path, _CREATE, 0o600)
        except FileExistsError:
            self.remove(path)
            fd = os.open(path, _CREATE, 0o600)
        try:
            tar.copy_data(fd)
            if self.same_owner:
                os.fchown(fd, e.uid, e.gid)
            os.fchmod(fd, e.mode & 0o7777)
            if e.xattrs:
                self._xattrs(e, fd)
            os.utime(fd, ns=(e.atime_ns or e.mtime_ns, e.mtime_ns))
        finally:
            os.close(fd)

    def _dir(self, e: Entry, path: str) -> None:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                self.remove(path)
                os.mkdir(path, 0o700)
                if self.overlay:  # it replaces a whiteout or a file: lower dirs stay hidden
                    os.setxattr(path, f"{self.xattr_ns}.overlay.opaque", b"y")
                    self.res.invalidate()
        if self.same_owner:
            os.lchown(path, e.uid, e.gid)
        os.chmod(path, e.mode & 0o7777)
        if e.xattrs:
            self._xattrs(e, path)
        self.dir_times.append((path, e.atime_ns or e.mtime_ns, e.mtime_ns))

    def _meta(self, e: Entry, path: str, symlink: bool = False) -> None:
        if self.same_owner:
            os.lchown(path, e.uid, e.gid)
        if not symlink:
            os.chmod(path, e.mode & 0o7777)
        if e.xattrs:
            self._xattrs(e, path)
        os.utime(path, ns=(e.atime_ns or e.mtime_ns, e.mtime_ns), follow_symlinks=False)

    def _hardlink(self, e: Entry, path: str) -> None:
        target = clean(e.linkname, self.layer)
        found = self.res.find(target, e.name)
        if found is None:
            raise LayerError(self.layer, f"hardlink target {e.linkname!r} is not in the root",
                             entry=e.name, hint="a hardlink may only point at a file of this "
                             "layer or of the layers below it")
        tpath, st, in_upper = found
        if stat.S_ISDIR(st.st_mode):
            raise LayerError(self.layer, f"hardlink target {e.linkname!r} is a directory",
                             entry=e.name)
        if not in_upper:
            # Only a lower has it (OCI image-spec #1204): copy it up and link to the copy,
            # as overlayfs itself would on a link(2) through the merged view.
            tpath = self.res.copy_up(target, tpath, st, e.name, devices=self.devices)
        if tpath == path:
            return
        self._make(path, lambda: os.link(tpath, path, follow_symlinks=False))

    def _xattrs(self, e: Entry, target: str | int) -> None:
        for k, v in e.xattrs.items():
            if k.startswith(FORBIDDEN_XATTR_PREFIXES):
                self.warn(e.name, f"xattr {k} not applied (layers may not set overlay or "
                                  "trusted xattrs)")
                continue
            try:
                os.setxattr(target, k, v, follow_symlinks=isinstance(target, int))
            except OSError as exc:
                if exc.errno in (errno.ENOTSUP, errno.EPERM):
                    self.warn(e.name, f"xattr {k} not applied: {exc.strerror}")
                    continue
                raise LayerError(self.layer, f"xattr {k}: {exc.strerror}",
                                 entry=e.name) from exc
