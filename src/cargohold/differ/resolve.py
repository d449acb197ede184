"""Path safety for layer application: every name is resolved inside the target root.

Rules (DESIGN.md §7):

- Names are cleaned lexically. A leading ``/`` is dropped (absolute names are *confined*, as
  every tar tool does); a ``..`` that would climb above the root is *rejected* with a
  :class:`~cargohold.differ.api.LayerError` — a real layer never has one.
- The parent directories of an entry are resolved one component at a time with ``lstat``.
  A symlink among them is followed *inside* the root: an absolute target restarts at the root
  and ``..`` stops at it (the semantics of containerd's ``fs.RootPath`` and of
  ``openat2(RESOLVE_IN_ROOT)``), so no parent can ever lead outside.
- The entry's own last component is never followed: callers use ``O_NOFOLLOW``, ``lstat``,
  ``lchown``, ``linkat`` without ``AT_SYMLINK_FOLLOW``, and replace whatever is there.

Applying straight into an overlay upper dir (``overlay=True``), "the root" is the *merged*
view of the upper over the lowerdirs, resolved as overlayfs resolves it, so that the result is
what applying the layer onto the merged tree gives (and what containerd, which applies through
a mounted overlay, gives):

- each component is looked up in the upper first, then in each lowerdir that still
  contributes to the directory; the first hit decides. A 0/0 character device is a whiteout
  (the name is absent); an opaque directory (``<ns>.overlay.opaque=y``) hides the lowers below
  it; a lower contributes to a directory only while every component of it is a directory;
- a symlink met in *any* layer is followed inside the merged root, like one in the upper;
- every path into a lowerdir is built from components each verified by ``lstat`` to be a
  real directory of that lowerdir, so no lookup ever passes through a symlink in a lower (a
  lower's ``etc -> /`` is read with ``readlink``, never traversed by the kernel);
- a parent that exists only in the lowers is copied up: created in the upper with the owner,
  mode, times and xattrs of the topmost lower copy, as an overlay copy-up would (``trusted.*``
  is not copied). A parent created where the upper holds a whiteout is made opaque, so the
  lower directory it replaces stays deleted. :meth:`Resolver.copy_up` copies a lower file up
  the same way (for a hardlink whose target only a lower has).

Resolved directories are cached; the cache is dropped whenever the applier removes or
replaces a directory or a symlink, writes a whiteout, marks a directory opaque, or makes an
upper entry that shadows a lower directory or symlink some name was resolved through — the
only ways a cached answer can go stale (nothing else writes into a snapshot being unpacked,
and lowerdirs are committed, so immutable).
"""

from __future__ import annotations

import errno
import os
import stat

from cargohold._record import record
from cargohold.differ.api import LayerError

MAX_LINKS = 255  # symlinks followed while resolving one name (Linux's own limit is 40 per path)
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def clean(name: str, layer: str) -> str:
    """The name relative to the root, without ``.`` and empty parts; ``""`` is the root."""
    if "\0" in name:
        raise LayerError(layer, "name contains a NUL byte", entry=name)
    parts: list[str] = []
    for c in name.split("/"):
        if c == "" or c == ".":
            continue
        if c == "..":
            if not parts:
                raise LayerError(layer, "path climbs out of the root with '..'", entry=name,
                                 hint="the layer is malformed or hostile")
            parts.pop()
            continue
        parts.append(c)
    return "/".join(parts)


def is_whiteout(st: os.stat_result) -> bool:
    """Whether ``st`` is an overlay whiteout (a 0/0 character device)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


@record(eq=False)
class _Dir:
    """One directory of the merged view: its upper path (None until copied up) and the real
    paths of the lower directories that contribute to it (computed on first need).
    """

    rel: str
    upper: str | None
    parent: _Dir | None
    lowers: list[str] | None = None


class Resolver:
    """Maps cleaned layer names to real paths under ``root`` without ever leaving it.

    ``overlay``: ``root`` is an overlay upper dir over ``lowerdirs`` (top first), whiteouts
    and opaque markers use the ``xattr_ns`` namespace (``trusted`` or ``user``).
    """

    def __init__(self, root: str, layer: str, lowerdirs: list[str] | None = None,
                 same_owner: bool = True, *, overlay: bool | None = None,
                 xattr_ns: str = "trusted") -> None:
        self.root = os.path.abspath(root).rstrip("/") or "/"
        self.layer = layer
        self.overlay = lowerdirs is not None if overlay is None else overlay
        self.lowerdirs = [os.path.abspath(d) for d in lowerdirs or []] if self.overlay else []
        self.same_owner = same_owner
        self.opaque_xattr = f"{xattr_ns}.overlay.opaque"
        self.invalidate()

    def invalidate(self) -> None:
        """Forget resolved directories (the merged view changed)."""
        top = _Dir("", self.root, None, list(self.lowerdirs))
        self._dirs: dict[str, _Dir] = {"": top}
        self._rels: dict[str, _Dir] = {"": top}
        # names resolved through a lower's dir or symlink: an upper entry made at one of them
        # shadows it, and changes how names through it resolve (see created)
        self._via_lower: set[str] = set()

    def created(self, path: str) -> None:
        """The applier made ``path`` in the upper: forget what resolved through the lower
        entry it shadows, if any (cheap: a set lookup).
        """
        if self._via_lower and path[len(self.root) + 1:] in self._via_lower:
            self.invalidate()

    # -- the merged view ---------------------------------------------------------------------
    def _lowers(self, d: _Dir) -> list[str]:
        """The lower directories contributing to ``d`` (top first)."""
        if d.lowers is None:
            out: list[str] = []
            if d.upper is None or not self._opaque(d.upper):
                name = d.rel.rpartition("/")[2]
                for low in self._lowers(d.parent):  # type: ignore[arg-type]
                    st = _lstat(f"{low}/{name}")
                    if st is None:
                        continue
                    if not stat.S_ISDIR(st.st_mode):
                        break  # a whiteout or a non-directory hides everything below
                    out.append(f"{low}/{name}")
                    if self._opaque(out[-1]):
                        break
            d.lowers = out
        return d.lowers

    def _opaque(self, path: str) -> bool:
        if not self.overlay:
            return False
        try:
            return os.getxattr(path, self.opaque_xattr, follow_symlinks=False) == b"y"
        except OSError:
            return False

    def _lookup(self, d: _Dir, c: str) -> tuple[str, os.stat_result, bool] | None:
        """The merged entry ``c`` of ``d``, unfollowed: (real path, lstat, in the upper)."""
        if d.upper is not None:
            path = f"{d.upper}/{c}"
            st = _lstat(path)
            if st is not None:
                if self.overlay and is_whiteout(st):
                    return None
                return path, st, True
        if not self.overlay:
            return None
        for low in self._lowers(d):
            path = f"{low}/{c}"
            st = _lstat(path)
            if st is not None:
                return (None if is_whiteout(st) else (path, st, False))
        return None

    def _walk(self, rel: str, create: bool, entry: str) -> _Dir | None:
        d = self._dirs[""]
        todo = rel.split("/")[::-1]
        links = 0
        while todo:
            c = todo.pop()
            if c == "" or c == ".":
                continue
            if c == "..":
                d = d.parent or d
                continue
            key = f"{d.rel}/{c}" if d.rel else c
            hit = self._dirs.get(key)
            if hit is not None:
                if create and hit.upper is None:
                    self._copy_up_dir(hit, entry)
                d = hit
                continue
            found = self._lookup(d, c)
            if found is None:
                if not create:
                    return None
                d = self._mkdir(d, key, c, entry)
                continue
            path, st, in_upper = found
            mode = st.st_mode
            if not in_upper:
                self._via_lower.add(key)
            if stat.S_ISDIR(mode):
                # its lowers are computed from the parent's when needed (path among them
                # when it is a lower's)
                d = self._dirs[key] = _Dir(key, path if in_upper else None, d)
                if create and not in_upper:
                    self._copy_up_dir(d, entry)
            elif stat.S_ISLNK(mode):
                links += 1
                if links > MAX_LINKS:
                    raise LayerError(self.layer, "too many levels of symlinks in a parent",
                                     entry=entry)
                target = os.readlink(path)
                if target.startswith("/"):
                    d = self._dirs[""]
                todo.extend(target.split("/")[::-1])
            else:
                raise LayerError(self.layer, f"parent {key!r} is not a directory", entry=entry)
        return d

    def dir(self, rel: str, *, create: bool, entry: str) -> str | None:
        """The upper (real) path of directory ``rel`` (cleaned), created — copied up — when
        ``create``; None when it is missing, or only in the lowers, and not ``create``.
        """
        hit = self._rels.get(rel)
        if hit is None or (create and hit.upper is None):
            hit = self._walk(rel, create, entry)
            if hit is None:
                return None
            self._rels[rel] = hit
        return hit.upper

    def find(self, rel: str, entry: str) -> tuple[str, os.stat_result, bool] | None:
        """The merged entry at ``rel`` (its parents resolved, itself not followed): its real
        path, lstat and whether it is in the upper; None when absent (or whited out).
        """
        parent, _, base = rel.rpartition("/")
        if not base:
            return None
        d = self._walk(parent, False, entry)
        return self._lookup(d, base) if d is not None else None

    # -- writing into the upper --------------------------------------------------------------
    def _mkdir(self, d: _Dir, key: str, c: str, entry: str) -> _Dir:
        """A new directory ``c`` in ``d``'s upper copy (absent from the merged view)."""
        if d.upper is None:
            self._copy_up_dir(d, entry)
        path = f"{d.upper}/{c}"
        try:
            st = _lstat(path)
            if st is not None:  # a whiteout in the upper: replace it, keep the lowers hidden
                os.unlink(path)
            os.mkdir(path, 0o755)
            os.chmod(path, 0o755)  # defeat the umask
            if st is not None:
                os.setxattr(path, self.opaque_xattr, b"y")
        except OSError as exc:
            raise self._write_error(exc, key, entry) from exc
        new = self._dirs[key] = _Dir(key, path, d, [])
        return new

    def _copy_up_dir(self, d: _Dir, entry: str) -> None:
        """Create ``d`` in the upper like its topmost lower copy (parents first)."""
        assert d.parent is not None
        if d.parent.upper is None:
            self._copy_up_dir(d.parent, entry)
        src = self._lowers(d)[0]  # a directory only the lowers have: at least one has it
        path = f"{d.parent.upper}/{d.rel.rpartition('/')[2]}"
        try:
            os.mkdir(path, 0o755)
            st = os.lstat(src)
            if self.same_owner:
                os.lchown(path, st.st_uid, st.st_gid)
            os.chmod(path, stat.S_IMODE(st.st_mode))
            copy_xattrs(src, path)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        except OSError as exc:
            raise self._write_error(exc, d.rel, entry) from exc
        d.upper = path

    def copy_up(self, rel: str, src: str, st: os.stat_result, entry: str,
                *, devices: bool = False) -> str:
        """Copy the lower entry at ``src`` (found by :meth:`find` for ``rel``) into the upper
        at ``rel``, with its data, owner, mode, xattrs and times; return the upper path.

        Regular files, symlinks and fifos (device nodes too with ``devices``); anything else
        raises LayerError. ``src`` is opened with ``O_NOFOLLOW``.
        """
        parent, _, base = rel.rpartition("/")
        dst = f"{self.dir(parent, create=True, entry=entry)}/{base}"
        mode = st.st_mode
        if stat.S_ISREG(mode):
            sfd = os.open(src, _READ)
            try:
                dfd = os.open(dst, _CREATE, 0o600)
                try:
                    _copy_data(sfd, dfd, st.st_size)
                    if self.same_owner:
                        os.fchown(dfd, st.st_uid, st.st_gid)
                    os.fchmod(dfd, stat.S_IMODE(mode))  # after chown, which drops setuid
                    copy_xattrs(src, dst)
                    os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)
            return dst
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(dst, 0o600)
        elif (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and devices:
            os.mknod(dst, stat.S_IFMT(mode) | 0o600, st.st_rdev)
        else:
            raise LayerError(self.layer, f"{rel!r} in a lower layer is a "
                             f"{_kind(mode)}: it cannot be copied up", entry=entry)
        if self.same_owner:
            os.lchown(dst, st.st_uid, st.st_gid)
        if not stat.S_ISLNK(mode):
            os.chmod(dst, stat.S_IMODE(mode))
        copy_xattrs(src, dst)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        return dst

    def _write_error(self, exc: OSError, rel: str, entry: str) -> Exception:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
            return exc  # the Extractor names the filesystem problem
        return LayerError(self.layer, f"cannot create parent {rel!r}: {exc.strerror}",
                          entry=entry)


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    return "socket" if stat.S_ISSOCK(mode) else "special file"


def _copy_data(sfd: int, dfd: int, size: int) -> None:
    left = size
    while left > 0:
        try:
            n = os.copy_file_range(sfd, dfd, min(left, 1 << 30))
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            n = os.sendfile(dfd, sfd, None, min(left, 1 << 30))
        if n == 0:
            break  # the lower file shrank: a committed layer never does
        left -= n


def copy_xattrs(src: str, dst: str) -> None:
    """Copy every xattr except ``trusted.*`` (overlay's private ones) from ``src`` to ``dst``."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for k in names:
        if k.startswith("trusted."):
            continue
        try:
            os.setxattr(dst, k, os.getxattr(src, k, follow_symlinks=False),
                        follow_symlinks=False)
        except OSError:
            continue  # e.g. ENOTSUP on the target fs: copy-up is best effort, like overlay's
