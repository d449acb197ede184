"""The frame shared by backends whose objects live outside the filesystem tree (zfs, devmapper).

Their snapshots are datasets or thin devices reached through a command-line tool (behind
:class:`~cargohold.snapshotters.runner.Runner`), not directories under the root, so they do not
fit :class:`~cargohold.snapshotters._common.DirSnapshotter`. What they share is here: the
bookkeeping (:class:`~cargohold.snapshotters.storage.MetaStore` in ``<root>/metadata/``), the
read-only half of the contract (stat, update, walk), close, and a few keys of their own that
live in the same LMDB environment under a prefix per backend, outside ``v1/``::

    <backend>/v1/...    backend-specific records (see each backend's module docstring)

Because those keys share the environment, a backend writes them in the same write transaction
as the snapshot record they belong to: both commit together or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from cargohold._fsutil import makedirs
from cargohold._lmdb import SEP, Tx
from cargohold.errors import FailedPrecondition
from cargohold.snapshotters.api import Info
from cargohold.snapshotters.runner import Runner
from cargohold.snapshotters.storage import MetaStore


class ToolSnapshotter:
    """Bookkeeping, stat/update/walk/close for a backend driven by an external tool.

    Subclasses set :attr:`name` and implement prepare, view, commit, remove, usage, mounts,
    cleanup and fsck.
    """

    name = "tool"

    def __init__(self, root: str, runner: Runner | None = None) -> None:
        self.root = os.path.abspath(root)
        makedirs(self.root, 0o700)
        self.ms = MetaStore(os.path.join(self.root, "metadata"))
        self.runner = runner or Runner()
        self._closed = False

    # --- keys of this backend --------------------------------------------------------------------
    def key(self, *parts: str) -> bytes:
        """The LMDB key ``<name>/v1/<parts...>``."""
        return SEP.join([self.name.encode(), b"v1", *(p.encode() for p in parts)])

    def bind(self, setting: str, value: str) -> None:
        """Record ``setting`` (e.g. the pool or parent dataset) on first open; refuse later
        opens with another value, since every object name was derived from the first one.
        """
        with self.ms.update() as tx:
            k = self.key(setting)
            old = tx.get_str(k)
            if not old:
                tx.put(k, value)
            elif old != value:
                raise FailedPrecondition(
                    f"snapshotter {self.name} at {self.root}: made for {setting} {old!r}, "
                    f"configured with {value!r}",
                    hint=f"set {setting} back to {old!r}, or use another root for {value!r}")

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"snapshotter {self.name} at {self.root}: closed")

    # --- the read side of the contract -----------------------------------------------------------
    def stat(self, key: str) -> Info:
        """The Info of ``key`` (any kind); NotFound when missing."""
        self._check_open()
        with self.ms.view() as tx:
            return self.ms.get_info(tx, key)[1]

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Change labels (see :meth:`MetaStore.update_info`); return the new Info."""
        self._check_open()
        with self.ms.update() as tx:
            return self.ms.update_info(tx, info, fieldpaths)

    def walk(self, fn: Callable[[Info], None], filters: Sequence[str] = ()) -> None:
        """Call ``fn`` for every matching snapshot, outside any transaction."""
        self._check_open()
        found: list[Info] = []
        with self.ms.view() as tx:
            self.ms.walk_info(tx, found.append, filters)
        for info in found:
            fn(info)

    def drop_if_childless(self, tx: Tx, sid: str, key: str) -> bool:
        """For fsck repairs: forget ``key`` (id ``sid``) unless something builds on it."""
        if self.ms.id_map(tx).get(sid) != key or self.ms.has_children(tx, sid):
            return False
        self.ms.remove(tx, key)
        return True

    def close(self) -> None:
        """Release the bookkeeping; a second call does nothing."""
        if not self._closed:
            self._closed = True
            self.ms.close()

    def __enter__(self) -> ToolSnapshotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
