"""The frame shared by backends whose objects live outside the filesystem tree (zfs, devmapper).

Their snapshots are datasets or thin devices reached through a command-line tool (behind
:class:`~cargohold.snapshotters.runner.Runner`), not directories under the root, so they do not
fit :class:`~cargohold.snapshotters.dirtree.DirSnapshotter`. Beyond what every backend shares
(:class:`~cargohold.snapshotters.bookkeeping.Bookkept`), they share the runner and a few keys
of their own that live in the same LMDB environment under a prefix per backend, outside ``v1/``::

    <backend>/v1/...    backend-specific records (see each backend's module docstring)

Because those keys share the environment, a backend writes them in the same write transaction
as the snapshot record they belong to: both commit together or not at all.
"""

from __future__ import annotations

from cargohold._lmdb import SEP, Tx
from cargohold.errors import FailedPrecondition
from cargohold.snapshotters.bookkeeping import Bookkept
from cargohold.snapshotters.runner import Runner


class ToolSnapshotter(Bookkept):
    """A backend driven by an external tool: its runner, its own keys and fsck helpers
    (the bookkeeping and stat/update/walk/prepare/view/close come from :class:`Bookkept`).

    Subclasses set :attr:`name` and implement ``_new``, commit, remove, usage, mounts, cleanup
    and fsck.
    """

    name = "tool"

    def __init__(self, root: str, runner: Runner | None = None) -> None:
        super().__init__(root)
        self.runner = runner or Runner()

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

    def drop_if_childless(self, tx: Tx, sid: str, key: str) -> bool:
        """For fsck repairs: forget ``key`` (id ``sid``) unless something builds on it."""
        if self.ms.id_map(tx).get(sid) != key or self.ms.has_children(tx, sid):
            return False
        self.ms.remove(tx, key)
        return True
