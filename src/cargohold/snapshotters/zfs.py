"""The zfs snapshotter: one dataset per snapshot under a configured parent dataset.

Config (``[snapshotters.zfs]``): ``dataset``, the parent dataset (e.g. ``tank/cargohold``),
which must exist and be dedicated to one cargohold root; ``root_path`` optionally moves the
bookkeeping. Objects, all reached through the ``zfs`` command (behind
:class:`~cargohold.snapshotters.runner.Runner`)::

    <dataset>/<id>             the snapshot's filesystem, mountpoint=legacy (mounted by callers)
                               - prepare without parent: zfs create
                               - prepare with parent:    zfs clone <dataset>/<parent id>@snapshot
                               - view: the same with readonly=on
    <dataset>/<id>@snapshot    exists once <id> is committed; children are clones of it

Each dataset carries the user property ``cargohold:root=<root>``, so a leftover of a crashed
prepare can be told from a dataset of another root that wrongly shares the parent dataset; fsck
leaves datasets of other roots alone too.

Bookkeeping (``<root>/metadata/``, :mod:`.storage`) knows every id, kind, parent and the usage
measured at commit, plus ``zfs/v1/dataset`` (the parent dataset this root was made for). So no
operation ever lists datasets: each command names exactly the dataset it is about. containerd's
zfs snapshotter became unusably slow (``zfs list`` taking half an hour) on hosts with tens of
thousands of datasets; here the only listing is :meth:`ZFS.fsck`, which lists the children of
the parent dataset alone, deliberately, to find what the bookkeeping does not know.

Mounts are ``Mount("zfs", "<dataset>/<id>", ("rw",))`` for active snapshots and ``("ro",)`` for
views (containerd mounts views read-write; here the dataset is also readonly=on).

Usage is the dataset's ``used`` property, read by name at commit and stored: a clone is charged
only for what it does not share with its origin, so parents are excluded. zfs does not count
inodes per dataset; they read -1.

Crash windows (each also commented where it opens):

- prepare/view: after ``zfs create``/``clone`` and before the bookkeeping commits, the dataset
  exists under an id no record owns. That id is handed out again next time; the prepare that
  gets it finds "dataset already exists", destroys the leftover and retries.
- commit: after ``zfs snapshot`` and before the bookkeeping commits, the active dataset has a
  stale ``@snapshot``; the next commit of that key retakes it, and fsck reports it.
- remove: objects are destroyed inside the write transaction, before the record goes. A crash
  in between leaves a record whose dataset is gone; removing it again succeeds (a dataset that
  is already gone counts as destroyed), and fsck drops such records.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from cargohold._lmdb import Tx
from cargohold.errors import CargoholdError, FailedPrecondition, Unsupported
from cargohold.mount import MountUsers
from cargohold.snapshotters.api import Kind, Usage
from cargohold.snapshotters.runner import CommandFailed, Result, Runner
from cargohold.snapshotters.storage import Snapshot
from cargohold.snapshotters.tooldriven import ToolSnapshotter
from cargohold.types import Mount

SYS_MODULE = "/sys/module/zfs"
SNAPSHOT = "snapshot"  # the name of the one zfs snapshot a committed dataset carries
OWNER = "cargohold:root"  # user property naming the root that made a dataset


def _have(cmd: str) -> bool:
    return shutil.which(cmd) is not None


def _gone(res: Result) -> bool:
    """Whether a failed zfs command failed only because its target does not exist."""
    err = res.stderr
    return "does not exist" in err or "could not find any snapshots" in err


def _exists(res: Result) -> bool:
    return "already exists" in res.stderr


class ZFS(ToolSnapshotter):
    """Datasets, snapshots and clones under ``dataset``; bookkeeping under ``root``."""

    name = "zfs"

    def __init__(self, root: str, dataset: str, *, runner: Runner | None = None) -> None:
        super().__init__(root, runner)
        self.dataset = dataset.strip("/")
        try:
            self.bind("dataset", self.dataset)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def check_support(root: str, section: dict[str, Any] | None = None, *,
                      runner: Runner | None = None) -> None:
        """Raise Unsupported, with what to do, unless zfs and the parent dataset are here.

        Asks the kernel, the PATH and then ``zfs list -H -o name <dataset>`` (by name).
        """
        if not os.path.exists(SYS_MODULE):
            raise Unsupported(f"kernel has no ZFS (zfs module not loaded; {SYS_MODULE} missing)",
                              hint="install zfs-dkms (or your kernel's zfs module) and run "
                                   "'modprobe zfs'")
        if not _have("zfs"):
            raise Unsupported("zfs command not found (apt-get install zfsutils-linux)")
        ds = str((section or {}).get("dataset") or "").strip("/")
        if not ds:
            raise Unsupported("no [snapshotters.zfs] dataset configured",
                              hint='set dataset = "<pool>/cargohold" in the config')
        res = (runner or Runner()).run(["zfs", "list", "-H", "-o", "name", ds], check=False)
        if not res.ok:
            if _gone(res):
                raise Unsupported(f"zfs dataset {ds} not found (create it with "
                                  f"'zfs create -o mountpoint=none {ds}')")
            raise CommandFailed(res)

    @classmethod
    def from_config(cls, root: str, section: dict[str, Any] | None = None, *,
                    runner: Runner | None = None) -> ZFS:
        """Build from ``[snapshotters.zfs]`` after :meth:`check_support` agrees."""
        section = section or {}
        cls.check_support(root, section, runner=runner)
        return cls(section.get("root_path") or root, str(section["dataset"]), runner=runner)

    # --- names and commands ----------------------------------------------------------------------
    def ds(self, id: str) -> str:
        """The dataset of the snapshot with internal id ``id``."""
        return f"{self.dataset}/{id}"

    def snap(self, id: str) -> str:
        """The zfs snapshot a committed ``id`` carries (the origin of its children)."""
        return f"{self.ds(id)}@{SNAPSHOT}"

    def _zfs(self, *args: str, check: bool = True) -> Result:
        return self.runner.run(["zfs", *args], check=check)

    def _used(self, id: str) -> int:
        out = self._zfs("get", "-Hp", "-o", "value", "used", self.ds(id)).stdout.strip()
        try:
            return int(out)
        except ValueError:
            raise FailedPrecondition(f"zfs dataset {self.ds(id)}: used is {out!r}, not a "
                                     "number") from None

    # --- the contract ----------------------------------------------------------------------------
    def _active_usage(self, sn: Snapshot) -> Usage:
        """``used``, read now by name (no listing)."""
        return Usage(self._used(sn.id), -1)

    def _mounts(self, sn: Snapshot) -> list[Mount]:
        return [Mount("zfs", self.ds(sn.id), ("ro",) if sn.kind == Kind.VIEW else ("rw",))]

    def _new(self, kind: Kind, key: str, parent: str,
             labels: dict[str, str] | None) -> list[Mount]:
        """prepare/view: a dataset created empty, or a clone of the committed parent; a view's
        dataset is also readonly=on and its mounts read-only.
        """
        self._check_open()
        made = ""
        try:
            with self.ms.update() as tx:
                sn = self.ms.create(tx, kind, key, parent, labels)
                self._make(sn)
                # Crash window: the dataset exists, its id is not recorded yet (see _make).
                made = self.ds(sn.id)
        except BaseException:
            if made:  # the bookkeeping commit failed: the dataset must not outlive the record
                self._zfs("destroy", "-r", made, check=False)
            raise
        return self._mounts(sn)

    def _make(self, sn: Snapshot) -> None:
        opts = ["-o", "mountpoint=legacy", "-o", f"{OWNER}={self.root}"]
        if sn.kind == Kind.VIEW:
            opts += ["-o", "readonly=on"]
        ds = self.ds(sn.id)
        argv = (["clone", *opts, self.snap(sn.parent_ids[0]), ds] if sn.parent_ids
                else ["create", *opts, ds])
        res = self._zfs(*argv, check=False)
        if not res.ok and _exists(res):
            # Either an earlier process crashed after making this dataset and before recording
            # it (its id came round again), or another root wrongly shares the parent dataset.
            # Only the first is ours to destroy: the owner property tells them apart.
            owner = self._zfs("get", "-H", "-o", "value", OWNER, ds).stdout.strip()
            if owner != self.root:
                raise FailedPrecondition(
                    f"zfs dataset {ds}: exists and belongs to {owner or 'something else'}",
                    hint=f"give each cargohold root its own parent dataset, not {self.dataset}")
            self._zfs("destroy", "-r", ds)
            res = self._zfs(*argv, check=False)
        if not res.ok:
            raise CommandFailed(res, hint="check 'zfs list -o name,used,avail "
                                          f"{self.dataset}' and the pool's health")

    def commit(self, name: str, key: str, *, labels: dict[str, str] | None = None) -> None:
        """Measure ``used`` once, record the commit, then take ``<dataset>/<id>@snapshot``."""
        self._check_open()
        snapped = ""
        try:
            with self.ms.update() as tx:
                sn = self.ms.get_active(tx, key)
                usage = Usage(self._used(sn.id), -1)
                self.ms.commit_active(tx, key, name, usage, labels)  # AlreadyExists before zfs
                self._snapshot(sn.id)
                # Crash window: @snapshot exists, the record still says active (see module doc).
                snapped = self.snap(sn.id)
        except BaseException:
            if snapped:  # the bookkeeping commit failed: undo the snapshot we took
                self._zfs("destroy", snapped, check=False)
            raise

    def _snapshot(self, id: str) -> None:
        res = self._zfs("snapshot", self.snap(id), check=False)
        if not res.ok and _exists(res):
            # Left by a commit that crashed before recording itself; the data has moved on
            # since, so take it again.
            self._zfs("destroy", self.snap(id))
            res = self._zfs("snapshot", self.snap(id), check=False)
        if not res.ok:
            raise CommandFailed(res)

    def remove(self, key: str, *, defer: bool = False) -> None:
        """Destroy ``@snapshot`` (committed) and the dataset, then forget ``key``.

        Objects that are already gone count as destroyed. If destroying the dataset fails after
        its snapshot went, the snapshot is taken again (the data is unchanged since the commit)
        and the record stays, so nothing is left half-removed.

        With ``defer`` (GC, which holds a lock while it removes), the record goes at once and
        the id is parked under ``zfs/v1/trash/<id>``; :meth:`cleanup` destroys parked datasets
        later, so no ``zfs destroy`` runs while the caller holds its lock.
        """
        self._check_open()
        with self.ms.update() as tx:
            sid, kind = self.ms.remove(tx, key)
            if defer:
                tx.put(self.key("trash", sid), int(kind))
                return
            self._destroy(sid, kind)
            # Crash window: objects gone, record still there; a second remove finishes it.

    def _trash(self, tx: Tx) -> dict[str, Kind]:
        prefix = self.key("trash") + b"\x00"
        return {k[len(prefix):].decode(): Kind(int(v)) for k, v in tx.scan(prefix)}

    def _in_use(self, ids: dict[str, str], users: MountUsers) -> dict[str, list[str]]:
        by_source: dict[str, list[str]] = {}
        for e in users.entries:
            by_source.setdefault(e.source, []).append(e.target)
        return {sid: by_source.get(self.ds(sid), []) for sid in ids}

    def _destroy(self, sid: str, kind: Kind) -> None:
        snap_went = False
        if kind == Kind.COMMITTED:
            res = self._zfs("destroy", self.snap(sid), check=False)
            if not res.ok and not _gone(res):
                raise CommandFailed(res)
            snap_went = res.ok
        try:
            res = self._zfs("destroy", self.ds(sid), check=False)
            if not res.ok and "has children" in res.stderr and kind != Kind.COMMITTED:
                # a stale @snapshot from a commit that crashed (see the module docstring)
                self._zfs("destroy", self.snap(sid), check=False)
                res = self._zfs("destroy", self.ds(sid), check=False)
            if not res.ok and not _gone(res):
                raise CommandFailed(res, hint="is it still mounted? unmount it and retry")
        except BaseException:
            if snap_went:
                self._zfs("snapshot", self.snap(sid), check=False)
            raise

    def cleanup(self) -> None:
        """Destroy the datasets parked by deferred removals (``zfs/v1/trash``).

        Leftovers of crashes are found by :meth:`fsck`, which lists the parent's children;
        cleanup runs after every GC and must stay cheap, so it lists nothing. A destroy that
        fails keeps its entry (the next cleanup retries) and is raised after the others ran.
        """
        self._check_open()
        with self.ms.view() as tx:
            parked = self._trash(tx)
        failed: CargoholdError | None = None
        for sid, kind in sorted(parked.items(), key=lambda kv: -int(kv[0])):  # children first
            try:
                self._destroy(sid, kind)
            except CargoholdError as exc:
                failed = failed or exc
                continue
            with self.ms.update() as tx:
                tx.delete(self.key("trash", sid))
        if failed is not None:
            raise failed

    # --- fsck ------------------------------------------------------------------------------------
    def fsck(self, *, repair: bool = False) -> list[str]:
        """Compare the bookkeeping with the datasets under the parent, both ways.

        The one deliberate listing: ``zfs list -H -r -d 2 -t filesystem,snapshot -o
        name,cargohold:root <dataset>`` (the parent's children and their snapshots, nothing
        else). Reports
        datasets of this root no record owns, records whose dataset is gone, committed records
        without ``@snapshot`` and active ones with a stale one, and datasets of other roots or
        of nobody (left alone).
        With ``repair`` (done under the write lock, so no prepare races it): leftovers are
        destroyed, records whose dataset is gone are dropped unless children build on them,
        missing ``@snapshot`` are taken again and stale ones destroyed.
        """
        self._check_open()
        problems: list[str] = []
        if repair:
            with self.ms.update() as tx:
                self._fsck(tx, problems, True)
        else:
            with self.ms.view() as tx:
                self._fsck(tx, problems, False)
        return problems

    def _fsck(self, tx: Tx, problems: list[str], repair: bool) -> None:
        out = self._zfs("list", "-H", "-r", "-d", "2", "-t", "filesystem,snapshot", "-o",
                        f"name,{OWNER}", self.dataset).stdout
        prefix = self.dataset + "/"
        datasets: set[str] = set()
        snaps: set[str] = set()
        for line in out.splitlines():
            name, _, owner = line.partition("\t")
            if not name.startswith(prefix):
                continue  # the parent itself
            base, at, tag = name[len(prefix):].partition("@")
            if at:
                if tag == SNAPSHOT and base.isdigit():
                    snaps.add(base)
            elif base.isdigit() and owner.strip() == self.root:
                datasets.add(base)
            else:
                problems.append(f"dataset {name}: not made by this root "
                                f"({OWNER}={owner.strip() or '-'}); left alone")
        ids = self.ms.id_map(tx)

        def fix(what: str, action: Callable[[], object]) -> None:
            if repair:
                try:
                    action()
                except CargoholdError as exc:
                    problems.append(f"{what}: repair failed: {exc}")

        parked = self._trash(tx)
        for sid in sorted(datasets - set(ids), key=int):
            if sid in parked:
                problems.append(f"dataset {self.ds(sid)}: removed, waiting to be destroyed")
            else:
                problems.append(f"dataset {self.ds(sid)}: no snapshot record owns it")
            fix(self.ds(sid), lambda sid=sid: self._zfs("destroy", "-r", self.ds(sid)))
        if repair:
            for sid in parked:
                tx.delete(self.key("trash", sid))
        for sid, key in sorted(ids.items(), key=lambda kv: -int(kv[0])):  # children first
            kind = self.ms.get_info(tx, key)[1].kind
            if sid not in datasets:
                problems.append(f"snapshot {key}: its dataset {self.ds(sid)} is missing")
                if repair and not self.drop_if_childless(tx, sid, key):
                    problems.append(f"snapshot {key}: kept, other snapshots build on it")
            elif kind == Kind.COMMITTED and sid not in snaps:
                problems.append(f"snapshot {key}: {self.snap(sid)} is missing")
                fix(self.snap(sid), lambda sid=sid: self._zfs("snapshot", self.snap(sid)))
            elif kind != Kind.COMMITTED and sid in snaps:
                problems.append(f"snapshot {key}: stale {self.snap(sid)} from an interrupted "
                                "commit")
                fix(self.snap(sid), lambda sid=sid: self._zfs("destroy", self.snap(sid)))
