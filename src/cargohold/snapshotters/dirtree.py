"""The frame every directory-per-snapshot backend shares (overlayfs, native, btrfs).

:class:`DirSnapshotter` implements the whole snapshotter contract of
:mod:`cargohold.snapshotters.api` on top of :class:`~cargohold.snapshotters.storage.MetaStore`
and leaves five hooks to a backend: ``_create`` (make the object for a new snapshot at a path),
``_mounts``, ``_active_usage``, ``_freeze``/``_thaw`` (commit-time read-only switch) and
``_delete``. On disk::

    <root>/metadata/            the backend's own LMDB bookkeeping (storage.py)
    <root>/snapshots/<id>       one object per snapshot, named by its internal id
    <root>/snapshots/new-<rnd>  being created (inside the write transaction; crash leftover)
    <root>/snapshots/rm-<name>  being removed (deleted after the transaction commits)

Crash windows and what they leave:

- during prepare/view: a ``new-*`` or an ``<id>`` directory whose id never reached the database;
  :meth:`DirSnapshotter.cleanup` removes both, and a prepare that is handed the same id again
  removes the stale ``<id>`` before it renames its own into place.
- during remove, after the rename and before the commit: ``rm-<id>`` while the record still
  exists; ``cleanup`` renames it back, so the snapshot stays whole.
- after a remove commits and before the delete finishes: ``rm-<id>``, not in the id map;
  ``cleanup`` deletes it.
"""

from __future__ import annotations

import errno
import os
import stat

from cargohold._fsutil import makedirs, remove_tree
from cargohold._oserror import is_env_errno, translate
from cargohold.errors import (
    AlreadyExists,
    CargoholdError,
    FailedPrecondition,
    NotFound,
    Unavailable,
)
from cargohold.mount import MountUsers
from cargohold.snapshotters.api import Kind, Usage
from cargohold.snapshotters.bookkeeping import Bookkept
from cargohold.snapshotters.storage import Snapshot
from cargohold.types import Mount


def os_error(subject: str, exc: OSError) -> CargoholdError:
    """Translate an OSError into the cargohold class a caller can branch on."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOENT:
        return NotFound(f"{subject}: {reason}")
    if exc.errno == errno.EEXIST:
        return AlreadyExists(f"{subject}: {reason}")
    if exc.errno in (errno.EBUSY, errno.EAGAIN):
        return Unavailable(f"{subject}: {reason}", hint="something still uses it; retry later")
    if exc.errno in (errno.EPERM, errno.EACCES):
        return FailedPrecondition(f"{subject}: {reason}",
                                  hint="this needs more privileges (run as root?)")
    if is_env_errno(exc.errno) and exc.filename:
        return translate(exc, os.fsdecode(exc.filename), subject)  # full, read-only, I/O
    return FailedPrecondition(f"{subject}: {reason}")


def diff_usage(parent: str, child: str) -> Usage:
    """What ``child`` (a full tree made from ``parent``) uses beyond ``parent``.

    An entry counts when ``parent`` has nothing at its path or something that differs in type,
    mode, owner, size or mtime (copies and snapshots keep all of these, so untouched files
    match). Each hardlinked inode counts once. For backends whose snapshots are whole trees
    (native, btrfs without quotas), so that usage excludes parents as the contract says.
    """
    seen: set[tuple[int, int]] = set()
    size = inodes = 0
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(child, rel)) as it:
            entries = list(it)
        for e in entries:
            st = e.stat(follow_symlinks=False)
            sub = os.path.join(rel, e.name)
            if stat.S_ISDIR(st.st_mode):
                stack.append(sub)
            try:
                pst = os.lstat(os.path.join(parent, sub))
                same = (pst.st_mode == st.st_mode and pst.st_uid == st.st_uid
                        and pst.st_gid == st.st_gid and pst.st_size == st.st_size
                        and pst.st_mtime_ns == st.st_mtime_ns)
            except (FileNotFoundError, NotADirectoryError):
                same = False
            if same or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            size += st.st_blocks * 512
            inodes += 1
    return Usage(size, inodes)


class DirSnapshotter(Bookkept):
    """A snapshotter whose snapshots are objects under ``<root>/snapshots/<id>``.

    Every mutation runs inside one bookkeeping write transaction, which also excludes other
    processes working on the same root; the filesystem work of prepare/view happens inside
    it, in a temporary name that is renamed into place last (so a snapshot directory exists
    under its id only once it is whole).
    """

    name = "dir"

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.snapshots_dir = makedirs(os.path.join(self.root, "snapshots"), 0o700)

    # --- hooks for backends ------------------------------------------------------------------
    def _create(self, path: str, kind: Kind, parent_ids: tuple[str, ...]) -> None:
        """Make the object of a new snapshot at ``path`` (which does not exist yet)."""
        raise NotImplementedError

    def _mounts(self, sn: Snapshot) -> list[Mount]:
        raise NotImplementedError

    def _active_usage(self, sn: Snapshot) -> Usage:
        """What an active snapshot uses on its own; called by usage() and once at commit."""
        raise NotImplementedError

    def _freeze(self, id: str) -> None:
        """Make a just-committed snapshot's object read-only where the backend can."""

    def _thaw(self, id: str) -> None:
        """Undo :meth:`_freeze` when the commit transaction fails."""

    def _delete(self, path: str) -> None:
        """Delete one object (a snapshot, a ``new-*`` or an ``rm-*``) entirely."""
        remove_tree(path)

    # --- helpers -------------------------------------------------------------------------------
    def path(self, id: str) -> str:
        """The directory (or subvolume) of the snapshot with internal id ``id``."""
        return os.path.join(self.snapshots_dir, id)

    def _new(self, kind: Kind, key: str, parent: str,
             labels: dict[str, str] | None) -> list[Mount]:
        self._check_open()
        placed = ""
        try:
            with self.ms.update() as tx:
                sn = self.ms.create(tx, kind, key, parent, labels)
                target = self.path(sn.id)
                if os.path.lexists(target):
                    # An earlier process crashed after renaming into place but before its
                    # transaction committed, so the id came round again: the leftover is junk.
                    self._delete(target)
                tmp = os.path.join(self.snapshots_dir, "new-" + os.urandom(4).hex())
                try:
                    self._create(tmp, kind, sn.parent_ids)
                    os.rename(tmp, target)
                except BaseException:
                    if os.path.lexists(tmp):
                        self._delete_quietly(tmp)
                    raise
                placed = target
        except OSError as exc:
            if placed:
                self._delete_quietly(placed)
            raise os_error(f"snapshot {key}", exc) from exc
        except BaseException:
            if placed:  # the commit itself failed: the directory must not outlive the record
                self._delete_quietly(placed)
            raise
        return self._mounts(sn)

    def commit(self, name: str, key: str, *, labels: dict[str, str] | None = None) -> None:
        """Turn active ``key`` into committed ``name``; usage is measured here, once."""
        self._check_open()
        frozen = ""
        try:
            with self.ms.update() as tx:
                sn = self.ms.get_active(tx, key)
                usage = self._active_usage(sn)
                self.ms.commit_active(tx, key, name, usage, labels)
                self._freeze(sn.id)
                frozen = sn.id
        except BaseException as exc:
            if frozen:
                self._thaw(frozen)
            if isinstance(exc, OSError):
                raise os_error(f"snapshot {key}", exc) from exc
            raise

    def remove(self, key: str, *, defer: bool = False) -> None:
        """Forget ``key`` and delete its object once the forgetting has committed.

        The object is renamed to ``rm-<id>`` inside the transaction (quick, whatever its size)
        and deleted after it; with ``defer`` the deletion is left to :meth:`cleanup`, so a
        caller holding a lock (GC) can let go of it before the slow part. A failure to delete
        after the commit is not an error: ``cleanup`` retries it.
        """
        self._check_open()
        moved: tuple[str, str] | None = None
        try:
            with self.ms.update() as tx:
                sid, _ = self.ms.remove(tx, key)
                src, dst = self.path(sid), os.path.join(self.snapshots_dir, f"rm-{sid}")
                if os.path.lexists(src):
                    os.rename(src, dst)
                    moved = (src, dst)
        except BaseException as exc:
            if moved:
                os.rename(moved[1], moved[0])
            if isinstance(exc, OSError):
                raise os_error(f"snapshot {key}", exc) from exc
            raise
        if moved and not defer:
            self._delete_quietly(moved[1])

    def _in_use(self, ids: dict[str, str], users: MountUsers) -> dict[str, list[str]]:
        # Overlay layers may be shown relative to the snapshots directory (a mount made after
        # ``cd`` into it, as 'hold snapshots mounts' prints) or to the backend root.
        bases = (self.snapshots_dir, self.root)
        return {sid: users.targets(self.path(sid), bases) for sid in ids}

    def cleanup(self) -> None:
        """Delete every object under ``snapshots/`` that no snapshot record owns.

        Leftovers are renamed to ``rm-*`` under the write lock (so no prepare can be handed
        the same name meanwhile) and deleted after it. An ``rm-<id>`` whose record still exists
        comes from a remove that crashed before its commit, and is put back.
        """
        self._check_open()
        doomed: list[str] = []
        with self.ms.update() as tx:
            ids = self.ms.id_map(tx)
            for entry in sorted(os.listdir(self.snapshots_dir)):
                p = os.path.join(self.snapshots_dir, entry)
                if entry in ids:
                    continue
                if entry.startswith("rm-"):
                    sid = entry[3:]
                    if sid in ids and not os.path.lexists(self.path(sid)):
                        os.rename(p, self.path(sid))
                    else:
                        doomed.append(p)
                    continue
                dst = os.path.join(self.snapshots_dir, f"rm-{entry}")
                os.rename(p, dst)
                doomed.append(dst)
        for p in doomed:
            self._delete_quietly(p)

    def fsck(self, *, repair: bool = False) -> list[str]:
        """Where the bookkeeping and the objects under ``snapshots/`` disagree, one message each.

        Finds objects no record owns (leftovers), ``rm-<id>`` objects whose record still exists
        (a remove that crashed before its commit) and records whose object is gone. With
        ``repair``: leftovers are deleted and interrupted removes put back (what
        :meth:`cleanup` does), and a record whose object is gone is dropped when no snapshot
        builds on it (otherwise it is only reported: its children need it).
        """
        self._check_open()
        problems: list[str] = []
        with self.ms.view() as tx:
            ids = self.ms.id_map(tx)
        entries = set(os.listdir(self.snapshots_dir))
        for entry in sorted(entries - set(ids)):
            if entry.startswith("rm-") and entry[3:] in ids and entry[3:] not in entries:
                problems.append(f"snapshot {ids[entry[3:]]}: object parked as {entry} by an "
                                "interrupted remove")
            else:
                problems.append(f"object snapshots/{entry}: no snapshot record owns it")
        missing = {sid: key for sid, key in ids.items()
                   if sid not in entries and f"rm-{sid}" not in entries}
        for sid, key in sorted(missing.items()):
            problems.append(f"snapshot {key}: its object snapshots/{sid} is missing")
        if repair:
            self.cleanup()
            for sid, key in missing.items():
                with self.ms.update() as tx:
                    if self.ms.id_map(tx).get(sid) == key and not self.ms.has_children(tx, sid):
                        self.ms.remove(tx, key)
        return problems

    def _delete_quietly(self, path: str) -> None:
        # Deletion runs after the bookkeeping has moved on; if it fails, cleanup() retries.
        try:
            self._delete(path)
        except (OSError, CargoholdError):
            pass
