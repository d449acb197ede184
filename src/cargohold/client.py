"""The embedded client: one root opened directly (no daemon), everything wired together.

``Client(config, lease=...)`` opens nothing until asked; each property opens its part once.
It is what the CLI uses, and what a program embedding cargohold uses.

Opening the root decides, once, whether it is read-only: ``config.read_only`` (``--read-only``,
``HOLD_READ_ONLY=1``) or a root on a read-only filesystem. A read-only root is marked so for
the whole process (:func:`cargohold._oserror.mark_read_only`): nothing creates a directory or
a file under it, LMDB is opened without its lock file, every read works and every write
raises ``ReadOnly`` ("root DIR is read-only"). A writable root gets its space reserve
(:mod:`cargohold._reserve`), made or topped up at open and again at ``close``.
"""

from __future__ import annotations

import os
from functools import cached_property

from cargohold import _reserve
from cargohold._fsutil import makedirs
from cargohold._oserror import fs_read_only, mark_read_only, unmark_read_only
from cargohold.config import Config
from cargohold.errors import NotFound
from cargohold.types import parse_duration

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cargohold.gc.collector import Collector
    from cargohold.leases.manager import LeaseManager
    from cargohold.metadata.content import NamespacedStore
    from cargohold.metadata.db import DB
    from cargohold.metadata.snapshotter import NamespacedSnapshotter, Pin
    from cargohold.store.local import LocalStore


class _Lazy:
    """Builds the wrapped object on first use (listing records needs no blob store)."""

    def __init__(self, make: Any) -> None:
        self._make = make
        self._obj: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._obj is None:
            self._obj = self._make()
        return getattr(self._obj, name)


class Client:
    """Everything under one root, seen from one namespace (and optionally one lease)."""

    def __init__(self, config: Config, *, namespace: str | None = None,
                 lease: str | None = None) -> None:
        self.config = config
        self.root = config.root
        self.namespace = namespace or config.namespace
        self.lease = lease
        self._snapshotters: dict[str, Any] = {}
        self._opened = False
        self._read_only_marked = False
        # Registered now (a stat, no write), so that any removal this client runs on a full
        # disk can give back the reserve, even one that never opens the metadata.
        self._reserve: _reserve.Reserve | None = _reserve.Reserve(self.root)
        _reserve.register(self._reserve)

    @property
    def read_only(self) -> bool:
        """Whether this client's root is read-only (opens the root to find out)."""
        self._open_root()
        return self._read_only_marked

    def _open_root(self) -> None:
        """Decide once whether the root is read-only; make a writable one and its reserve."""
        if self._opened:
            return
        why = "flag" if self.config.read_only else ("fs" if fs_read_only(self.root) else "")
        if why:
            if not os.path.isdir(self.root):
                raise NotFound(f"root {self.root}: does not exist",
                               hint="check --root (or HOLD_ROOT); a read-only root is never "
                                    "created")
            mark_read_only(self.root, why)
            self._read_only_marked = True
        else:
            makedirs(self.root, 0o711)
            if self._reserve is not None:
                self._reserve.ensure()
        self._opened = True

    @cached_property
    def db(self) -> DB:
        from cargohold.metadata.db import open_db

        self._open_root()
        return open_db(self.root)

    @cached_property
    def store(self) -> LocalStore:
        from cargohold.store.local import LocalStore

        self._open_root()
        return LocalStore(os.path.join(self.root, "content"))

    @cached_property
    def content(self) -> NamespacedStore:
        from cargohold.metadata.content import NamespacedStore

        expiry = parse_duration(self.config.section("gc").get("ingest_expiry", "24h"))
        return NamespacedStore(self.db, _Lazy(lambda: self.store), self.namespace,
                               lease=self.lease, ingest_expiry=expiry)

    @cached_property
    def leases(self) -> LeaseManager:
        from cargohold.leases.manager import LeaseManager

        return LeaseManager(self.db, self.namespace, collect=lambda: self.collector.collect())

    @cached_property
    def collector(self) -> Collector:
        from cargohold.gc.collector import Collector

        batch = int(self.config.section("gc").get("sweep_batch", 500))
        return Collector(self.db, self.store, self.backend_snapshotter, batch=batch,
                         lock_path=os.path.join(self.root, "gc.lock"), pins=self.mount_pins)

    def snapshotter_or_none(self, name: str) -> Any:
        """The backend snapshotter ``name``, or None when this host cannot run it (fsck
        reports such a snapshotter as unchecked when records use it).
        """
        from cargohold.errors import CargoholdError

        try:
            return self.backend_snapshotter(name)
        except CargoholdError:
            return None

    def mount_pins(self) -> list[Pin]:
        """Snapshots that mount records under ``<state>/mounts`` name: mounted ones, and
        ones kept for a later mount (``hold images unmount --no-rm``). Kernel mounts are
        found by each backend (``mounted()``), records here.
        """
        from cargohold.metadata.snapshotter import Pin
        from cargohold.mount.records import read_records

        out = []
        for r in read_records(self.config.state):
            why = (f"mounted at {r.target}" if r.mounted
                   else f"kept for {r.target} (unmounted with --no-rm)")
            out.append(Pin(r.namespace, r.snapshotter, r.snapshot, why))
        return out

    def backend_snapshotter(self, name: str) -> Any:
        """Open (once) the shared backend of snapshotter ``name``."""
        if name not in self._snapshotters:
            from cargohold.snapshotters import registry

            root = os.path.join(self.root, "snapshots", name)
            self._open_root()
            self._snapshotters[name] = registry.open_snapshotter(
                name, root, self.config.section("snapshotters", name))
        return self._snapshotters[name]

    def snapshotter(self, name: str | None = None) -> NamespacedSnapshotter:
        """Snapshotter ``name`` (default: the configured one) as this client's namespace sees
        it, writing into this client's lease when it has one.
        """
        from cargohold.metadata.snapshotter import NamespacedSnapshotter

        name = name or self.config.snapshotter
        return NamespacedSnapshotter(self.db, self.backend_snapshotter(name), self.namespace,
                                     name, lease=self.lease, pins=self.mount_pins)

    def close(self) -> None:
        for s in self._snapshotters.values():
            try:
                s.close()
            except Exception:  # noqa: BLE001 - closing must not mask the real outcome
                pass
        self._snapshotters.clear()
        if "db" in self.__dict__:
            self.db.close()
        if self._reserve is not None:
            if self._opened and not self._read_only_marked:
                # After a removal that used the reserve, this is when the freed space lets it
                # come back; a reserve that finds no room stays smaller until the next open.
                self._reserve.ensure()
            _reserve.unregister(self._reserve)
            self._reserve = None
        if self._read_only_marked:
            unmark_read_only(self.root)
            self._read_only_marked = False
