"""What every backend shares: its bookkeeping and the parts of the contract built on it.

Each backend keeps its records in a :class:`~cargohold.snapshotters.storage.MetaStore` under
``<root>/metadata/``. Stat, update and walk only read or change those records; usage and mounts
need one hook each (``_active_usage``, ``_mounts``); prepare and view differ only in the kind
they ask for. So they live here once, and the backends
(:class:`~cargohold.snapshotters.dirtree.DirSnapshotter` for directory trees,
:class:`~cargohold.snapshotters.tooldriven.ToolSnapshotter` for zfs and devmapper) supply ``_new``,
the hooks and the rest of the contract.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from cargohold._fsutil import makedirs
from cargohold.errors import FailedPrecondition
from cargohold.mount import MountUsers
from cargohold.snapshotters.api import Info, Kind, Usage
from cargohold.snapshotters.storage import MetaStore, Snapshot
from cargohold.types import Mount


class Bookkept:
    """A snapshotter rooted at ``root`` with its records in ``<root>/metadata``."""

    name = "snapshotter"

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        makedirs(self.root, 0o700)
        self.ms = MetaStore(os.path.join(self.root, "metadata"))
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"snapshotter {self.name} at {self.root}: closed")

    def _new(self, kind: Kind, key: str, parent: str,
             labels: dict[str, str] | None) -> list[Mount]:
        raise NotImplementedError

    def _mounts(self, sn: Snapshot) -> list[Mount]:
        raise NotImplementedError

    def _active_usage(self, sn: Snapshot) -> Usage:
        """The usage of an active or view snapshot, measured now."""
        raise NotImplementedError

    def _in_use(self, ids: dict[str, str], users: MountUsers) -> dict[str, list[str]]:
        """Internal id -> the mount points that use its object, for the ids in ``ids``."""
        raise NotImplementedError

    def mounted(self, users: MountUsers | None = None) -> dict[str, list[str]]:
        """Every snapshot (by key) whose object a kernel mount uses now -> those mount points.

        Read from ``/proc/self/mountinfo`` (or ``users``, one reading shared by callers):
        bind mounts of a snapshot's directory, overlays naming it as a layer, devices and
        datasets mounted by name. GC and ``remove`` callers keep what is listed here.
        """
        self._check_open()
        with self.ms.view() as tx:
            ids = self.ms.id_map(tx)
        found = self._in_use(ids, users or MountUsers())
        return {ids[sid]: targets for sid, targets in found.items() if targets}

    # --- the contract: the bookkeeping side ----------------------------------------------------
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
        """Call ``fn`` for every matching snapshot, outside any transaction (so ``fn`` may call
        back into this snapshotter).
        """
        self._check_open()
        found: list[Info] = []
        with self.ms.view() as tx:
            self.ms.walk_info(tx, found.append, filters)
        for info in found:
            fn(info)

    def usage(self, key: str) -> Usage:
        """Committed: the usage stored at commit (no walk). Active/view: measured now."""
        self._check_open()
        with self.ms.view() as tx:
            _, info, usage = self.ms.get_info(tx, key)
            if info.kind == Kind.COMMITTED:
                return usage
            sn = self.ms.get_snapshot(tx, key)
        return self._active_usage(sn)

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of an active or view snapshot (FailedPrecondition when committed)."""
        self._check_open()
        with self.ms.view() as tx:
            sn = self.ms.get_snapshot(tx, key)
        return self._mounts(sn)

    def prepare(self, key: str, parent: str = "", *,
                labels: dict[str, str] | None = None) -> list[Mount]:
        """A new writable snapshot on ``parent``; see the contract in ``api.py``."""
        return self._new(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str = "", *,
             labels: dict[str, str] | None = None) -> list[Mount]:
        """A new read-only snapshot of ``parent``; its mounts are read-only."""
        return self._new(Kind.VIEW, key, parent, labels)

    def close(self) -> None:
        """Release the bookkeeping; a second call does nothing."""
        if not self._closed:
            self._closed = True
            self.ms.close()

    def __enter__(self) -> Bookkept:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
