"""Mount an image on a directory, unmount it, and list what is mounted.

``mount(client, ref, target)``:

1. picks the image's manifest for the platform (this host by default, strictly) and the
   chain ID of its top layer; unpacks it when that snapshot is missing (the unpacker's job;
   without one this refuses and says how to unpack);
2. creates the lease ``mount-<target as a slug>-<hash>`` with **no expiry** (labelled with the
   target), so GC can never take the snapshot while it is mounted — ``ctr`` uses a 1 h lease
   and a long-lived mount can lose its view;
3. makes a VIEW of the chain (read-only) or, with ``rw``, an ACTIVE snapshot on it, keyed like
   the lease; a snapshot kept by an earlier ``unmount --no-rm`` of the same target is reused;
4. mounts it on ``target`` (created when missing). A read-only mount is read-only for real: a
   one-layer view is a bind mount remounted ``ro``, a deeper view is an overlay without an
   upper dir, and ``statvfs`` must report ``ST_RDONLY`` or the mount is undone;
5. records it in ``<state>/mounts/<id>.json`` (target, image, manifest, chain ID, snapshot
   key, snapshotter, namespace, lease, rw, pid, time, mounts).

A failure undoes what this call created. *Crash windows*: after the lease and snapshot exist
but before the record is written, a lease without a record is left; :func:`list_mounts`
reports it (``no record``) and ``unmount TARGET`` cleans it up, because every name is derived
from the target alone.

``unmount(client, target, rm=None)`` unmounts every mount stacked on ``target`` (nothing
mounted is fine: unmounting twice is not an error). With ``rm`` (the default for read-only
mounts; ``rw`` mounts keep their changes unless asked) it removes the snapshot, the lease and
the record; otherwise the record stays, marked unmounted, and a later mount of the same target
picks the snapshot up again.

``mount_snapshot(client, key, target)`` mounts an existing snapshot as it is (``hold snapshots
mount``) and writes a record of kind ``snapshot`` (no image, no lease: the snapshot's own GC
root or lease keeps it until then, the record keeps it while mounted, as every record is a GC
pin); ``unmount_snapshot(client, target)`` unmounts and drops that record.
"""

from __future__ import annotations

import contextlib
import os

from cargohold import mount as kmount
from cargohold._fsutil import makedirs
from cargohold._record import record
from cargohold.errors import AlreadyExists, CargoholdError, FailedPrecondition, NotFound
from cargohold.mount.records import (
    MountRecord,
    mount_id,
    read_record,
    read_records,
    record_path,
    write_record,
)
from cargohold.types import Platform, format_time, now_ns

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cargohold.client import Client
    from cargohold.metadata.snapshotter import NamespacedSnapshotter

LABEL_TARGET = "cargohold.mount/target"


@record(frozen=True)
class MountStatus:
    """A record (or an orphan lease) and what is wrong with it; ``problems`` empty = fine."""

    record: MountRecord
    problems: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        if self.problems:
            return "stale: " + ", ".join(self.problems)
        return "mounted" if self.record.mounted else "unmounted (snapshot kept)"


def _snapshotter(client: Client, ns: str, name: str, lease: str | None = None
                 ) -> NamespacedSnapshotter:
    from cargohold.metadata.snapshotter import NamespacedSnapshotter

    return NamespacedSnapshotter(client.db, client.backend_snapshotter(name), ns, name,
                                 lease=lease)


def resolve_chain(client: Client, ref: str, platform: Platform | None
                  ) -> tuple[str, list[str], list[str]]:
    """``(manifest digest, diff IDs, chain IDs)`` of ``ref`` for ``platform`` (host)."""
    # Imported here: unmount and the mount listings need none of it.
    from cargohold.images import platforms
    from cargohold.images.manifest import chain_ids, diff_ids, manifests, parse_manifest
    from cargohold.images.platforms import Matcher
    from cargohold.metadata import images as records

    with client.db.view() as tx:
        img = records.get(tx, client.namespace, ref)
    wanted = [platforms.normalize(platform)] if platform else None
    matcher = Matcher(wanted)
    found = manifests(client.content, img.target, matcher, f"image {ref}")
    if not found:
        raise NotFound(f"image {ref}: no manifest for {matcher.describe()}",
                       hint="list its platforms with 'hold images inspect', then mount with "
                            "--platform")
    m = parse_manifest(client.content, found[0], f"image {ref}")
    ids = diff_ids(client.content, m.config, f"image {ref}")
    if not ids:
        raise FailedPrecondition(f"image {ref}: has no layers to mount")
    return found[0].digest, ids, chain_ids(ids)


def ensure_unpacked(client: Client, ref: str, snapshotter: str, chain: list[str],
                    platform: Platform | None) -> None:
    """Make sure the top of ``chain`` is a committed snapshot; unpack through the unpacker."""
    sn = _snapshotter(client, client.namespace, snapshotter)
    with contextlib.suppress(NotFound):
        sn.stat(chain[-1])
        return
    try:
        from cargohold.images import unpack as unpacker
    except ImportError:
        raise FailedPrecondition(
            f"image {ref}: not unpacked on snapshotter {snapshotter}",
            hint="import it again with 'hold images import' (it unpacks), then mount") \
            from None
    unpacker.unpack_image(client, ref, snapshotter=snapshotter,  # type: ignore[attr-defined]
                          platform=platform)


def mount(client: Client, ref: str, target: str, *, rw: bool = False,
          platform: Platform | None = None, snapshotter: str | None = None) -> MountRecord:
    """Mount image ``ref`` on ``target``; see the module docstring.

    Raises NotFound (image, platform), FailedPrecondition (not unpacked and no unpacker;
    something else mounted on ``target``; a kept snapshot of another image there),
    AlreadyExists (this target is mounted already) and MountError.
    """
    from cargohold.leases.manager import LeaseManager

    target = os.path.abspath(target)
    sn_name = snapshotter or client.config.snapshotter
    mid = mount_id(target)
    old = read_record(client.config.state, target)
    if kmount.is_mountpoint(target):
        if old is not None and old.mounted:
            raise AlreadyExists(f"target {target}: already mounted (image {old.image})",
                                hint=f"unmount it first with 'hold images unmount {target}'")
        raise FailedPrecondition(f"target {target}: something else is mounted there",
                                 hint="choose an empty directory")
    manifest, _ids, chain = resolve_chain(client, ref, platform)
    ensure_unpacked(client, ref, sn_name, chain, platform)
    leases = LeaseManager(client.db, client.namespace)
    made_lease = made_snapshot = mounted = False
    try:
        try:
            leases.create(mid, labels={LABEL_TARGET: target})
            made_lease = True
        except AlreadyExists:
            pass  # a kept snapshot of this target (unmount --no-rm) or a crashed mount
        sn = _snapshotter(client, client.namespace, sn_name, lease=mid)
        labels = {LABEL_TARGET: target}
        try:
            mounts = (sn.prepare if rw else sn.view)(mid, chain[-1], labels=labels)
            made_snapshot = True
        except AlreadyExists:
            info = sn.stat(mid)
            if info.parent != chain[-1] or (info.kind.name == "ACTIVE") != rw:
                raise FailedPrecondition(
                    f"target {target}: a kept {'rw' if info.kind.name == 'ACTIVE' else 'ro'} "
                    f"snapshot of another image or mode is there ({info.parent})",
                    hint=f"remove it with 'hold images unmount --rm {target}'") from None
            mounts = sn.mounts(mid)
        makedirs(target, 0o755)
        kmount.mount_all(mounts, target)
        mounted = True
        if not rw and not os.statvfs(target).f_flag & os.ST_RDONLY:
            raise FailedPrecondition(f"target {target}: the kernel mounted it writable",
                                     hint="report this: read-only mounts must refuse writes")
        rec = MountRecord(mid, target, ref, manifest, chain[-1], mid, sn_name,
                          client.namespace, mid, rw, os.getpid(), format_time(now_ns()),
                          [m.command(target) for m in mounts])
        write_record(client.config.state, rec)
        return rec
    except BaseException:
        if mounted:
            with contextlib.suppress(CargoholdError):
                kmount.unmount_all(target)
        if made_snapshot:
            with contextlib.suppress(CargoholdError):
                _snapshotter(client, client.namespace, sn_name).remove(mid)
        if made_lease:
            with contextlib.suppress(CargoholdError):
                leases.delete(mid)
        raise


@record(frozen=True)
class UnmountResult:
    """What :func:`unmount` did."""

    target: str
    was_mounted: bool
    removed: bool  # a snapshot, lease or record was removed (False: nothing was left)
    record: MountRecord | None


def unmount(client: Client, target: str, *, rm: bool | None = None) -> UnmountResult:
    """Unmount ``target``; remove snapshot, lease and record when ``rm`` (see the module).

    A target of ``hold snapshots mount`` is refused (FailedPrecondition), nothing changed.
    """
    from cargohold.leases.manager import LeaseManager

    target = os.path.abspath(target)
    rec = read_record(client.config.state, target)
    if rec is not None and rec.kind == "snapshot":
        # Its snapshot is the user's own: removing it here would lose their work.
        raise FailedPrecondition(f"target {target}: mounted by 'hold snapshots mount' "
                                 f"(snapshot {rec.snapshot})",
                                 hint=f"unmount it with 'hold snapshots unmount {target}'")
    was = kmount.is_mountpoint(target)
    if was:
        kmount.unmount_all(target)
    if rm is None:
        rm = not (rec.rw if rec is not None else False)
    mid = mount_id(target)
    ns = rec.namespace if rec else client.namespace
    sn_name = rec.snapshotter if rec else client.config.snapshotter
    if not rm:
        if rec is not None and rec.mounted:
            rec.mounted = False
            write_record(client.config.state, rec)
        return UnmountResult(target, was, False, rec)
    removed = False
    with contextlib.suppress(NotFound):
        _snapshotter(client, ns, sn_name).remove(rec.snapshot if rec else mid)
        removed = True
    with contextlib.suppress(NotFound):
        LeaseManager(client.db, ns).delete(rec.lease if rec else mid)
        removed = True
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record_path(client.config.state, mid))
        removed = True
    return UnmountResult(target, was, removed, rec)


def mount_snapshot(client: Client, key: str, target: str) -> MountRecord:
    """Mount snapshot ``key`` (active: writable, view: read-only) of the client's namespace
    and snapshotter on ``target`` (created when missing), and record it.

    Long overlay chains are mounted through the new mount API (``lowerdir+``), so any chain
    the kernel can stack mounts. Raises NotFound (no such snapshot), FailedPrecondition
    (committed: prepare or view it first; something already mounted on ``target``) and
    MountError. A failure leaves nothing mounted and no record; a crash between the mount and
    the record leaves a kernel mount that GC still sees (it scans mountinfo).
    """
    target = os.path.abspath(target)
    sn = client.snapshotter()
    info = sn.stat(key)
    if kmount.is_mountpoint(target):
        old = read_record(client.config.state, target)
        what = f" ({old.kind} {old.image or old.snapshot})" if old and old.mounted else ""
        raise FailedPrecondition(f"target {target}: something is mounted there already{what}",
                                 hint="choose an empty directory, or unmount it first with "
                                      f"'hold snapshots unmount {target}'")
    mounts = sn.mounts(key)
    makedirs(target, 0o755)
    kmount.mount_all(mounts, target)
    try:
        rec = MountRecord(mount_id(target), target, "", "", "", key, sn.name, client.namespace,
                          "", info.kind.name == "ACTIVE", os.getpid(), format_time(now_ns()),
                          [m.command(target) for m in mounts], kind="snapshot")
        write_record(client.config.state, rec)
    except BaseException:
        with contextlib.suppress(CargoholdError):
            kmount.unmount_all(target)
        raise
    return rec


def unmount_snapshot(client: Client, target: str) -> tuple[bool, MountRecord | None]:
    """Unmount everything on ``target`` and drop its ``snapshot`` record; returns (was
    mounted, the record dropped or None). Nothing mounted and no record is fine (a repeat).

    A target mounted by ``hold images mount`` is refused (FailedPrecondition) before anything
    changes: its lease and snapshot belong to ``hold images unmount``.
    """
    target = os.path.abspath(target)
    rec = read_record(client.config.state, target)
    if rec is not None and rec.kind != "snapshot":
        raise FailedPrecondition(f"target {target}: mounted by 'hold images mount' (image "
                                 f"{rec.image})",
                                 hint=f"unmount it with 'hold images unmount {target}'")
    was = kmount.is_mountpoint(target)
    if was:
        kmount.unmount_all(target)
    if rec is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(record_path(client.config.state, rec.id))
    return was, rec


def list_mounts(client: Client) -> list[MountStatus]:
    """Every mount record, each with what is stale about it, plus leases left with no record.

    Problems: ``not mounted`` (the target is no longer a mount point), ``snapshot gone``,
    ``lease gone``, ``no record`` (a mount lease whose record was never written).
    """
    from cargohold.metadata import leases as lease_records
    from cargohold.metadata import namespaces

    out: list[MountStatus] = []
    seen: set[tuple[str, str]] = set()
    for rec in read_records(client.config.state):
        seen.add((rec.namespace, rec.lease))
        problems = []
        if rec.mounted and not kmount.is_mountpoint(rec.target):
            problems.append("not mounted")
        try:
            _snapshotter(client, rec.namespace, rec.snapshotter).stat(rec.snapshot)
        except NotFound:
            problems.append("snapshot gone")
        except CargoholdError:
            problems.append(f"snapshotter {rec.snapshotter} unavailable")
        with client.db.view() as tx:
            if rec.lease and not lease_records.exists(tx, rec.namespace, rec.lease):
                problems.append("lease gone")
        out.append(MountStatus(rec, tuple(problems)))
    with client.db.view() as tx:
        for ns in namespaces.list_all(tx):
            for lease in lease_records.list_leases(tx, ns):
                tgt = lease.labels.get(LABEL_TARGET)
                if tgt and (ns, lease.id) not in seen:
                    rec = MountRecord(lease.id, tgt, "", "", "", lease.id, "", ns, lease.id,
                                      False, 0, format_time(lease.created_at), mounted=False)
                    out.append(MountStatus(rec, ("no record",)))
    return out

