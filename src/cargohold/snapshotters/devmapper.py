"""The devmapper snapshotter: one thin device per snapshot in an existing thin pool.

Config (``[snapshotters.devmapper]``): ``pool_name`` (a thin pool that exists and is dedicated
to one cargohold root), ``base_image_size`` (``10GB``, ``512MiB``; see :func:`.dmpool.parse_size`),
``fs_type`` (``ext4``, ``xfs`` or ``ext2``), ``fs_options`` (extra mkfs arguments),
``discard_blocks`` (discard a device before deleting it so the pool's backing store gets the
space back), and optionally ``root_path`` for the bookkeeping.

Objects, through ``dmsetup``, ``mkfs.<fs>``, ``debugfs`` and ``blkdiscard`` (behind
:class:`~cargohold.snapshotters.runner.Runner`):

- prepare/view without parent: ``message <pool> 0 "create_thin <tid>"``, activate with
  ``dmsetup create <pool>-snap-<tid> --table "0 <sectors> thin /dev/mapper/<pool> <tid>"``,
  mkfs (ext4: no discard, eager inode tables and journal, so no background writes follow), and
  for ext* ``debugfs -w -R "rmdir lost+found"`` so an image's root does not gain lost+found.
- with a parent: ``create_snap <tid> <parent tid>`` (suspending the parent's device around it
  when it is active, as the kernel requires), then activate. Children keep the parent's size and
  file system type.
- commit: mapped bytes from ``dmsetup status <dev>``, minus the parent's, stored as usage; the
  device is then deactivated (children snapshot it without a suspend).
- remove: forget the record, then tear down: discard (``blkdiscard``), ``dmsetup remove
  --retry`` and ``message delete <tid>``; the thin id is freed only when the pool let it go.

Mounts are ``Mount(<fs>, "/dev/mapper/<pool>-snap-<tid>", opts)`` with ``rw`` or ``ro`` (views)
and ``nouuid`` for xfs (every snapshot of one file system shares its UUID). :meth:`mounts`
reactivates a device that is not loaded (after a reboot nothing is).

Before any thin device is made, the pool's status is read and a prepare is refused
(:class:`.dmpool.PoolFull`, with the status line and how to grow the pool) when the pool is
out of data or metadata space, read-only or needs a check. Every error from a device command
carries ``dmsetup status <pool>``.

Bookkeeping: :mod:`.storage` plus these keys, written in the same transactions::

    devmapper/v1/pool                the pool this root was made for
    devmapper/v1/cursor              the last thin id handed out (allocation continues after it)
    devmapper/v1/thin/<tid>          owner: a snapshot id, or "rm <sectors>" while being removed
    devmapper/v1/snap/<sid>/tid      the thin id of snapshot <sid>
    devmapper/v1/snap/<sid>/sectors  its size; .../fstype its file system;
    devmapper/v1/snap/<sid>/mapped   its mapped bytes at commit (what its children start from)

Crash windows (each also commented where it opens):

- prepare: after create_thin/create_snap and before the bookkeeping commits, the pool holds a
  thin id (maybe an active device) no record owns. The next prepare is handed the same id,
  finds "File exists" and moves on to the next id: the pool may be shared by mistake, so only
  fsck (which reports it) and ``fsck --repair`` (which deletes it) act on such ids.
- remove: after the record is gone and before the teardown ends, the thin id stays reserved as
  ``rm``; :meth:`Devmapper.cleanup` (run after GC) and ``fsck --repair`` finish it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
from collections.abc import Callable, Iterator
from typing import Any

from cargohold._lmdb import SEP, Tx
from cargohold.errors import (
    CargoholdError,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    Unsupported,
)
from cargohold.mount import MountUsers
from cargohold.snapshotters.api import Kind, Usage
from cargohold.snapshotters.dmpool import (
    MAX_THIN_ID,
    SECTOR,
    Pool,
    PoolFull,
    delete_thin,
    gone,
    parse_size,
    parse_thin_mapped,
)
from cargohold.snapshotters.runner import CommandFailed, Runner
from cargohold.snapshotters.storage import Snapshot
from cargohold.snapshotters.tooldriven import ToolSnapshotter
from cargohold.types import Mount

SYS_MODULE = "/sys/module/dm_mod"
FS_PACKAGES = {"ext4": "e2fsprogs", "ext2": "e2fsprogs", "xfs": "xfsprogs"}
MKFS_ARGS = {
    "ext4": ["-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"],
    "ext2": ["-E", "nodiscard,lazy_itable_init=0"],
    "xfs": ["-K"],  # -K: do not discard (the device is freshly thin: nothing to discard)
}


class DevmapperError(FailedPrecondition):
    """A device command failed; the message ends with the pool's ``dmsetup status``."""


def _have(cmd: str) -> bool:
    return shutil.which(cmd) is not None


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


def mkfs_need(size: int) -> int:
    """Pool bytes that mkfs of a ``size``-byte base device writes, estimated generously.

    Eager ext4 inode tables take 1/64 of the device (one 256-byte inode per 16 KiB) and the
    journal up to a few per cent on small devices; 1/16 covers both, and xfs's log and headers.
    """
    return size // 16


class Devmapper(ToolSnapshotter):
    """Thin devices in ``pool_name``; bookkeeping under ``root``."""

    name = "devmapper"

    def __init__(self, root: str, pool_name: str, *, base_image_size: str | int = "10GB",
                 fs_type: str = "ext4", fs_options: str = "", discard_blocks: bool = True,
                 runner: Runner | None = None) -> None:
        size = parse_size(base_image_size)
        if fs_type not in MKFS_ARGS:
            raise InvalidArgument(f"devmapper fs_type {fs_type!r}: not supported",
                                  hint="use ext4, xfs or ext2")
        super().__init__(root, runner)
        self.pool = Pool(pool_name, self.runner)
        self.sectors = -(-size // 512)
        self.fs_type = fs_type
        self.fs_options = shlex.split(fs_options or "")
        self.discard = discard_blocks
        try:
            self.bind("pool", pool_name)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def check_support(root: str, section: dict[str, Any] | None = None, *,
                      runner: Runner | None = None) -> None:
        """Raise Unsupported, with what to do, unless device-mapper, the tools and the pool are
        here; InvalidArgument for a malformed size or file system type.
        """
        section = section or {}
        if not os.path.exists(SYS_MODULE):
            raise Unsupported("kernel has no device-mapper (dm_mod not loaded; "
                              f"{SYS_MODULE} missing)", hint="run 'modprobe dm_thin_pool'")
        if not _have("dmsetup"):
            raise Unsupported("dmsetup command not found (apt-get install dmsetup)")
        pool = str(section.get("pool_name") or "")
        if not pool:
            raise Unsupported("no [snapshotters.devmapper] pool_name configured",
                              hint="create a thin pool and set pool_name to its name")
        parse_size(section.get("base_image_size", "10GB"))
        fs = str(section.get("fs_type") or "ext4")
        if fs not in MKFS_ARGS:
            raise InvalidArgument(f"devmapper fs_type {fs!r}: not supported",
                                  hint="use ext4, xfs or ext2")
        for tool in [f"mkfs.{fs}"] + (["debugfs"] if fs.startswith("ext") else []):
            if not _have(tool):
                raise Unsupported(f"{tool} not found (apt-get install {FS_PACKAGES[fs]})")
        if _flag(section.get("discard_blocks", True)) and not _have("blkdiscard"):
            raise Unsupported("blkdiscard not found (apt-get install util-linux)",
                              hint="or set discard_blocks = false")
        res = (runner or Runner()).run(["dmsetup", "status", pool], check=False)
        if not res.ok:
            raise Unsupported(f"thin pool {pool} not found (create it with dmsetup create "
                              f"{pool} --table '0 <sectors> thin-pool <metadata dev> <data dev> "
                              "128 32768')")
        if " thin-pool " not in f" {res.stdout} ":
            raise Unsupported(f"device {pool}: not a thin pool ({res.stdout.strip()})")

    @classmethod
    def from_config(cls, root: str, section: dict[str, Any] | None = None, *,
                    runner: Runner | None = None) -> Devmapper:
        """Build from ``[snapshotters.devmapper]`` after :meth:`check_support` agrees."""
        s = section or {}
        cls.check_support(root, s, runner=runner)
        return cls(s.get("root_path") or root, str(s["pool_name"]),
                   base_image_size=s.get("base_image_size", "10GB"),
                   fs_type=str(s.get("fs_type") or "ext4"),
                   fs_options=str(s.get("fs_options") or ""),
                   discard_blocks=_flag(s.get("discard_blocks", True)), runner=runner)

    # --- names and bookkeeping -------------------------------------------------------------------
    def dev_name(self, tid: int) -> str:
        """The device-mapper name of thin id ``tid``."""
        return f"{self.pool.name}-snap-{tid}"

    def _dev(self, tx: Tx, sid: str) -> tuple[int, int, str, int]:
        """(thin id, sectors, fs type, mapped bytes at commit) of snapshot ``sid``."""
        raw = tx.get(self.key("snap", sid, "tid"))
        if raw is None:
            raise FailedPrecondition(f"snapshot id {sid}: no thin device recorded",
                                     hint="run 'hold fsck --repair'")
        return (int(raw), tx.get_int(self.key("snap", sid, "sectors")),
                tx.get_str(self.key("snap", sid, "fstype")),
                tx.get_int(self.key("snap", sid, "mapped")))

    def _allocate(self, tx: Tx) -> int:
        """The next free 24-bit thin id after the cursor (wrapping), recorded in ``tx``."""
        start = tx.get_int(self.key("cursor"), -1)
        for step in range(1, MAX_THIN_ID + 2):
            tid = (start + step) % (MAX_THIN_ID + 1)
            if not tx.exists(self.key("thin", str(tid))):
                tx.put(self.key("cursor"), tid)
                return tid
        raise FailedPrecondition(f"thin pool {self.pool.name}: all {MAX_THIN_ID + 1} thin ids "
                                 "in use", hint="remove snapshots (hold gc)")

    @contextlib.contextmanager
    def _diagnosed(self) -> Iterator[None]:
        """Append the pool's status to errors of device commands."""
        try:
            yield
        except PoolFull:
            raise  # carries the status line already
        except CommandFailed as exc:
            raise DevmapperError(f"{exc.message}; {self.pool.status_note()}",
                                 hint=exc.hint) from exc
        except Unavailable as exc:
            raise Unavailable(f"{exc.message}; {self.pool.status_note()}",
                              hint=exc.hint) from exc

    # --- the contract ----------------------------------------------------------------------------
    def _new(self, kind: Kind, key: str, parent: str,
             labels: dict[str, str] | None) -> list[Mount]:
        """prepare/view: a thin device with a new file system, or a thin snapshot of the
        committed parent; a view's mounts are read-only.
        """
        self._check_open()
        undo: list[Callable[[], object]] = []
        committed = False
        with self._diagnosed():
            try:
                with self.ms.update() as tx:
                    sn = self.ms.create(tx, kind, key, parent, labels)
                    if sn.parent_ids:
                        ptid, sectors, fs, _ = self._dev(tx, sn.parent_ids[0])
                        self.pool.ensure_room(1, f"snapshot {key}")
                    else:
                        ptid, sectors, fs = -1, self.sectors, self.fs_type
                        self.pool.ensure_room(mkfs_need(sectors * 512), f"base device for {key}")
                    tid = self._create_thin(tx, self._allocate(tx), ptid)
                    dev = self.dev_name(tid)
                    # Crash window: the pool holds tid, no record owns it (module docstring).
                    undo.append(lambda: delete_thin(self.pool, tid))
                    self.pool.activate(dev, tid, sectors)
                    undo.append(lambda: self.pool.deactivate(dev, check=False))
                    if ptid < 0:
                        self._mkfs(dev, fs)
                    for field, value in (("tid", tid), ("sectors", sectors), ("fstype", fs)):
                        tx.put(self.key("snap", sn.id, field), value)
                    tx.put(self.key("thin", str(tid)), sn.id)
                committed = True
            finally:
                if not committed:  # a command or the bookkeeping commit failed: roll back
                    for step in reversed(undo):
                        with contextlib.suppress(CargoholdError):
                            step()
        return [self._mount(sn.kind, tid, fs)]

    def _create_thin(self, tx: Tx, tid: int, origin: int) -> int:
        """Make thin id ``tid`` (a snapshot of ``origin`` when >= 0); return the id used."""
        suspended = ""
        if origin >= 0 and self.pool.is_active(self.dev_name(origin)):
            # The kernel snapshots a thin device only while its origin is quiescent.
            suspended = self.dev_name(origin)
            self.pool.dmsetup("suspend", suspended)
        try:
            for _ in range(16):
                msg = f"create_snap {tid} {origin}" if origin >= 0 else f"create_thin {tid}"
                res = self.pool.message(msg, check=False)
                if res.ok:
                    return tid
                if "File exists" not in res.stderr:
                    raise CommandFailed(res)
                # The pool has this id already: left by a prepare that crashed before recording
                # it, or made by something else sharing the pool. Deleting it here could destroy
                # another owner's data, so move on; fsck reports it.
                tid = self._allocate(tx)
            raise CommandFailed(res, hint="the pool holds many thin ids this root does not "
                                          "know; run 'hold fsck'")
        finally:
            if suspended:
                self.pool.dmsetup("resume", suspended)

    def _mkfs(self, dev: str, fs: str) -> None:
        path = f"/dev/mapper/{dev}"
        self.runner.run([f"mkfs.{fs}", *MKFS_ARGS[fs], *self.fs_options, path])
        if fs.startswith("ext"):
            self.runner.run(["debugfs", "-w", "-R", "rmdir lost+found", path])

    def _mount(self, kind: Kind, tid: int, fs: str) -> Mount:
        opts = ["ro" if kind == Kind.VIEW else "rw"]
        if fs == "xfs":
            opts.append("nouuid")
        return Mount(fs, f"/dev/mapper/{self.dev_name(tid)}", tuple(opts))

    def mounts(self, key: str) -> list[Mount]:
        """The mount of an active or view snapshot, loading its device if it is not."""
        self._check_open()
        with self.ms.view() as tx:
            sn = self.ms.get_snapshot(tx, key)
            tid, sectors, fs, _ = self._dev(tx, sn.id)
        with self._diagnosed():
            self._ensure_active(tid, sectors)
        return [self._mount(sn.kind, tid, fs)]

    def _ensure_active(self, tid: int, sectors: int) -> None:
        if not self.pool.is_active(self.dev_name(tid)):
            self.pool.activate(self.dev_name(tid), tid, sectors)

    def _mapped(self, tid: int, sectors: int) -> int:
        dev = self.dev_name(tid)
        res = self.pool.dmsetup("status", dev, check=False)
        if not res.ok and gone(res):
            self.pool.activate(dev, tid, sectors)  # not loaded (since a reboot): load it
            res = self.pool.dmsetup("status", dev, check=False)
        if not res.ok:
            raise CommandFailed(res)
        return parse_thin_mapped(res.stdout) * SECTOR

    def _own_usage(self, tx: Tx, sn: Snapshot) -> tuple[int, Usage]:
        tid, sectors, _, _ = self._dev(tx, sn.id)
        mapped = self._mapped(tid, sectors)
        base = self._dev(tx, sn.parent_ids[0])[3] if sn.parent_ids else 0
        return mapped, Usage(max(0, mapped - base), -1)

    def usage(self, key: str) -> Usage:
        """Committed: stored at commit. Active/view: mapped bytes now, minus the parent's."""
        self._check_open()
        with self.ms.view() as tx, self._diagnosed():
            _, info, usage = self.ms.get_info(tx, key)
            if info.kind == Kind.COMMITTED:
                return usage
            return self._own_usage(tx, self.ms.get_snapshot(tx, key))[1]

    def commit(self, name: str, key: str, *, labels: dict[str, str] | None = None) -> None:
        """Record usage once, commit, then deactivate the device (best effort)."""
        self._check_open()
        with self._diagnosed():
            with self.ms.update() as tx:
                sn = self.ms.get_active(tx, key)
                mapped, usage = self._own_usage(tx, sn)
                self.ms.commit_active(tx, key, name, usage, labels)
                tx.put(self.key("snap", sn.id, "mapped"), mapped)
                tid = self._dev(tx, sn.id)[0]
        # Nothing mounts a committed device through us again; if it is still held open (or
        # dmsetup hangs) it stays loaded, and children suspend it around create_snap instead.
        with contextlib.suppress(CargoholdError):
            self.pool.deactivate(self.dev_name(tid), check=False)

    def remove(self, key: str, *, defer: bool = False) -> None:
        """Forget ``key``, then discard, deactivate and delete its thin device.

        The record goes first, keeping the thin id reserved; discarding before the record went
        would destroy data a failed remove still points to. A teardown that fails (device still
        mounted, pool trouble) leaves the id reserved for :meth:`cleanup`, and fsck reports it.
        With ``defer`` (GC, which holds a lock meanwhile) the teardown is left to
        :meth:`cleanup` altogether.
        """
        self._check_open()
        with self.ms.update() as tx:
            sid, _ = self.ms.remove(tx, key)
            tid, sectors, _, _ = self._dev(tx, sid)
            tx.delete_prefix(self.key("snap", sid) + SEP)
            tx.put(self.key("thin", str(tid)), f"rm {sectors}")
        # Crash window: the record is gone, the thin id reserved as "rm" (module docstring).
        if not defer:
            self._finish_removal(tid, sectors)

    def _in_use(self, ids: dict[str, str], users: MountUsers) -> dict[str, list[str]]:
        by_source: dict[str, list[str]] = {}
        for e in users.entries:
            by_source.setdefault(os.path.realpath(e.source), []).append(e.target)
        out: dict[str, list[str]] = {}
        with self.ms.view() as tx:
            for sid in ids:
                raw = tx.get(self.key("snap", sid, "tid"))
                if raw is not None:
                    dev = os.path.realpath(f"/dev/mapper/{self.dev_name(int(raw))}")
                    out[sid] = by_source.get(dev, [])
        return out

    def _teardown(self, tid: int, sectors: int) -> None:
        dev = self.dev_name(tid)
        active = self.pool.is_active(dev)
        if self.discard:
            if not active:
                self.pool.activate(dev, tid, sectors)
                active = True
            # Deleting a thin id frees pool blocks but tells the pool's backing store nothing;
            # a discard does, so a sparse or SSD-backed pool gets the space back.
            self.runner.run(["blkdiscard", f"/dev/mapper/{dev}"])
        if active:
            self.pool.deactivate(dev)
        delete_thin(self.pool, tid)

    def _finish_removal(self, tid: int, sectors: int) -> bool:
        try:
            self._teardown(tid, sectors)
        except CargoholdError:
            return False  # stays reserved; cleanup() retries
        with self.ms.update() as tx:
            if tx.get_str(self.key("thin", str(tid))).startswith("rm "):
                tx.delete(self.key("thin", str(tid)))
        return True

    def pending_removals(self, tx: Tx) -> dict[int, int]:
        """Thin ids whose snapshot is gone but whose device is not torn down: tid -> sectors."""
        prefix = self.key("thin") + SEP
        out = {}
        for k, v in tx.scan(prefix):
            if v.startswith(b"rm "):
                out[int(k[len(prefix):])] = int(v[3:])
        return out

    def cleanup(self) -> None:
        """Tear down the devices of removals that did not finish."""
        self._check_open()
        with self.ms.view() as tx:
            pending = self.pending_removals(tx)
        for tid, sectors in sorted(pending.items()):
            self._finish_removal(tid, sectors)

    def fsck(self, *, repair: bool = False) -> list[str]:
        """Compare the bookkeeping with the pool's thin devices; see :mod:`.dmfsck`."""
        from cargohold.snapshotters.dmfsck import fsck

        self._check_open()
        return fsck(self, repair=repair)

