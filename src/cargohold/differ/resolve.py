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
- Missing parents are created (0755, root-owned), or — applying into an overlay upper dir —
  with the owner, mode, times and xattrs of the same directory in the first lowerdir that has
  one, as an overlay copy-up would (``trusted.*`` is not copied).

Resolved directories are cached by layer name; the cache is dropped whenever the applier
removes or replaces a directory or a symlink, which is the only way a cached answer can go
stale (nothing else writes into a snapshot being unpacked).
"""

from __future__ import annotations

import errno
import os
import stat

from cargohold.differ.api import LayerError

MAX_LINKS = 255  # symlinks followed while resolving one name (Linux's own limit is 40 per path)


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


class Resolver:
    """Maps cleaned layer names to real paths under ``root`` without ever leaving it."""

    def __init__(self, root: str, layer: str, lowerdirs: list[str] | None = None,
                 same_owner: bool = True) -> None:
        self.root = os.path.abspath(root).rstrip("/") or "/"
        self.layer = layer
        self.lowerdirs = lowerdirs or []
        self.same_owner = same_owner
        self._cache: dict[str, str] = {"": self.root}

    def invalidate(self) -> None:
        """Forget resolved directories (a directory or symlink was removed or replaced)."""
        self._cache = {"": self.root}

    def dir(self, rel: str, *, create: bool, entry: str) -> str | None:
        """The real path of directory ``rel`` (cleaned); None if missing and not ``create``."""
        hit = self._cache.get(rel)
        if hit is not None:
            return hit
        root = self.root
        cur: list[str] = []
        todo = rel.split("/")[::-1]
        links = 0
        while todo:
            c = todo.pop()
            if c == "" or c == ".":
                continue
            if c == "..":
                if cur:
                    cur.pop()
                continue
            path = root + "/" + "/".join(cur + [c]) if cur else root + "/" + c
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    return None
                self._mkparent(path, "/".join(cur + [c]), entry)
                cur.append(c)
                continue
            except OSError as exc:
                raise LayerError(self.layer, f"cannot resolve {path}: {exc.strerror}",
                                 entry=entry) from exc
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                cur.append(c)
            elif stat.S_ISLNK(mode):
                links += 1
                if links > MAX_LINKS:
                    raise LayerError(self.layer, "too many levels of symlinks in a parent",
                                     entry=entry)
                target = os.readlink(path)
                if target.startswith("/"):
                    cur = []
                todo.extend(target.split("/")[::-1])
            else:
                raise LayerError(self.layer, f"parent {'/'.join(cur + [c])!r} is not a "
                                 "directory", entry=entry)
        real = root + "/" + "/".join(cur) if cur else root
        self._cache[rel] = real
        return real

    def _mkparent(self, path: str, rel: str, entry: str) -> None:
        src = None
        for lower in self.lowerdirs:
            try:
                st = os.lstat(os.path.join(lower, rel))
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                src = (os.path.join(lower, rel), st)
            break  # the first lower that has the name decides, as overlay's lookup does
        try:
            os.mkdir(path, 0o755)
            if src is None:
                os.chmod(path, 0o755)  # defeat the umask
                return
            lpath, st = src
            if self.same_owner:
                os.lchown(path, st.st_uid, st.st_gid)
            os.chmod(path, stat.S_IMODE(st.st_mode))
            copy_xattrs(lpath, path)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
            raise LayerError(self.layer, f"cannot create parent {rel!r}: {exc.strerror}",
                             entry=entry) from exc


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
