"""What the kernel has mounted, read from ``/proc/self/mountinfo``, and who uses a directory.

:func:`mountinfo` parses every mount this process sees; :class:`MountUsers` answers "which
mounts use this directory" (a bind source, an overlay layer) for GC and ``snapshots rm``.
"""

from __future__ import annotations

import os
import re

from cargohold._record import record


@record(frozen=True)
class MountEntry:
    """One line of ``/proc/self/mountinfo``.

    ``root`` is the path inside the mounted filesystem that appears at ``target`` (``/`` for a
    whole filesystem, a subdirectory for a bind mount); ``dev`` is its ``major:minor``.
    """

    target: str
    root: str
    dev: str
    fstype: str
    source: str
    options: tuple[str, ...]

    def overlay_dirs(self) -> list[str]:
        """The lower, upper and work directories of an overlay mount, as the kernel shows
        them (relative when they were given relative).
        """
        if self.fstype != "overlay":
            return []
        out: list[str] = []
        for o in self.options:
            k, _, v = o.partition("=")
            if k == "lowerdir":
                out += [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", v) if p]
            elif k in ("lowerdir+", "datadir+", "upperdir", "workdir") and v:
                out.append(v)
        return out


def mountinfo() -> list[MountEntry]:
    """Every mount this process sees, in mount order."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-", 6)
            except ValueError:
                continue
            if len(fields) < sep + 4:
                continue
            out.append(MountEntry(
                target=_unescape(fields[4]), root=_unescape(fields[3]), dev=fields[2],
                fstype=fields[sep + 1], source=_unescape(fields[sep + 2]),
                options=tuple(_unescape(o) for o in _split_options(fields[sep + 3]))))
    return out


def _split_options(text: str) -> list[str]:
    # Commas inside option values are escaped by the kernel only for some filesystems;
    # overlay paths with commas are rare enough that a plain split is what mount(8) does too.
    return text.split(",")


def is_mountpoint(path: str) -> bool:
    """Whether ``path`` is listed as a mount point in /proc/self/mountinfo."""
    real = os.path.realpath(path)
    return any(e.target == real for e in mountinfo())


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace(
        "\\134", "\\")


class MountUsers:
    """Which mounts use a directory: as the source of a bind mount, or as an overlay layer.

    Built once from :func:`mountinfo` (pass ``entries`` to reuse a reading). A directory is
    used when a bind mount shows it (or something inside it) as its root, or when an overlay
    names it (or something inside it) as a lower, upper or work directory. Overlay paths the
    kernel shows relative (a mount made after ``cd``) are resolved against the mount's source
    when that is an absolute directory: hold names the directory it mounts from as the
    source, in its own mounts and in the command it prints (``(cd DIR && mount -t overlay -o
    lowerdir=1/fs:... DIR TARGET)``). Any other relative path cannot be pinned down, so it
    counts for every one of ``bases`` it fits: when in doubt, a directory counts as used.

    A directory has many names: the root through a symlink, or through a bind mount of it (a
    read-only export, a second ``--root`` spelling). An overlay shows its layers as the
    mounter spelled them, so paths are compared both as written and as the filesystem sees
    them (symlinks resolved, then the device and the path inside it): a mount made through
    one name is seen through every other.
    """

    def __init__(self, entries: list[MountEntry] | None = None) -> None:
        self.entries = mountinfo() if entries is None else entries
        # (directory as shown, target, the directory relative ones are relative to or "")
        self._overlay: list[tuple[str, str, str]] = []
        for e in self.entries:
            anchor = e.source if e.source.startswith("/") else ""
            self._overlay += [(d, e.target, anchor) for d in e.overlay_dirs()]
        self._real_dirs: dict[str, str] = {}
        # bases -> (dev, path inside the filesystem, target) of every overlay layer
        self._overlay_fs: dict[tuple[str, ...], list[tuple[str, str, str]]] = {}

    def _real(self, path: str) -> str:
        """``path`` with symlinks resolved; the parent's resolution is cached, since callers
        ask about many entries of one directory (a backend's snapshot objects).
        """
        head, tail = os.path.split(os.path.normpath(path))
        if head not in self._real_dirs:
            self._real_dirs[head] = os.path.realpath(head)
        joined = os.path.join(self._real_dirs[head], tail)
        return os.path.realpath(joined) if os.path.islink(joined) else joined

    def _overlay_layers(self, bases: tuple[str, ...]) -> list[tuple[str, str, str]]:
        if bases not in self._overlay_fs:
            out = []
            for shown, target, anchor in self._overlay:
                for p in _resolved(shown, anchor, bases):
                    where = self._fs_path(self._real(p))
                    if where is not None:
                        out.append((*where, target))
            self._overlay_fs[bases] = out
        return self._overlay_fs[bases]

    def _fs_path(self, path: str) -> tuple[str, str] | None:
        """(dev, path inside its filesystem) of an absolute path, from the mount holding it."""
        best: MountEntry | None = None
        for e in self.entries:
            t = e.target.rstrip("/") or "/"
            if (path == t or path.startswith(t.rstrip("/") + "/")) and (
                    best is None or len(t) >= len(best.target)):
                best = e
        if best is None:
            return None
        rel = os.path.relpath(path, best.target)
        inner = best.root if rel == "." else os.path.join(best.root, rel)
        return best.dev, os.path.normpath(inner)

    def targets(self, directory: str, bases: tuple[str, ...] = ()) -> list[str]:
        """Mount points that use ``directory`` (an absolute path) or anything inside it."""
        directory = os.path.normpath(directory)
        real = self._real(directory)
        out: list[str] = []
        where = self._fs_path(real)
        if where is not None:
            dev, inner = where
            for e in self.entries:
                if e.dev == dev and e.fstype != "overlay" and _within(e.root, inner) \
                        and e.target not in (directory, real):
                    out.append(e.target)
            out += [t for d, shown, t in self._overlay_layers(bases)
                    if d == dev and _within(shown, inner)]
        for shown, target, anchor in self._overlay:
            if any(_within(os.path.normpath(p), directory)
                   for p in _resolved(shown, anchor, bases)):
                out.append(target)
        return sorted(set(out))


def _resolved(shown: str, anchor: str, bases: tuple[str, ...]) -> list[str]:
    """Where an overlay layer shown as ``shown`` may be: itself when absolute, else under the
    mount's directory source (``anchor``), else under each of ``bases``.
    """
    if shown.startswith("/"):
        return [shown]
    if anchor:
        return [os.path.join(anchor, shown)]
    return [os.path.join(b, shown) for b in bases]


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")
