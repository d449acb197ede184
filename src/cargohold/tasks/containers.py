"""Containers: an image, a writable snapshot on it and the OCI runtime spec to run it with.

:func:`create` (``hold containers create``, ``hold run``):

1. refuses an id that exists (AlreadyExists) and reads the image: its manifest for this host
   (or ``platform``), its config and chain IDs;
2. makes sure the image is unpacked on the snapshotter: unpacks it when its layers are in the
   store (as ``ctr run`` and ``hold images mount`` do), and otherwise raises "image X: not
   unpacked for snapshotter S" with how to get the layers;
3. inside a lease owned by this process, prepares the ACTIVE snapshot ``<id>`` on the top
   chain ID (the key is the container id, as containerd's), resolves the process user in the
   image's ``/etc/passwd`` and ``/etc/group`` (a read-only mount of the snapshot, only when a
   name must be looked up), builds the spec (:mod:`.spec`) and, in one transaction, writes
   the container record, which from then on holds the snapshot for GC (containers are GC
   roots and reference their snapshot), and deletes the lease;
4. a failure removes the snapshot and the lease. *Crash window*: a crash before the record
   leaves the snapshot in the dead process's lease, which GC collects.

:func:`remove` refuses a container that has a task, deletes the record and then the snapshot;
with ``keep_snapshot`` the snapshot stays, labelled ``containerd.io/gc.root`` so that GC keeps
it (an unreferenced snapshot would otherwise be garbage).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cargohold._record import field, record
from cargohold.errors import AlreadyExists, CargoholdError, FailedPrecondition, NotFound
from cargohold.metadata import containers as records
from cargohold.metadata.containers import Container
from cargohold.tasks import spec as specs
from cargohold.tasks import users
from cargohold.tasks.api import RUNTIME, TaskPaths
from cargohold.types import LABEL_GC_ROOT, Platform, format_time, now_ns, validate_identifier

if TYPE_CHECKING:
    from cargohold.client import Client


@record
class CreateOptions:
    """What ``hold containers create`` can ask for besides image and id."""

    spec: specs.SpecOptions = field(default_factory=specs.SpecOptions)
    labels: dict[str, str] = field(default_factory=dict)
    snapshotter: str = ""
    platform: Platform | None = None


def get(client: Client, cid: str) -> Container:
    """Container ``cid``; NotFound (saying how to list them) when it does not exist."""
    with client.db.view() as tx:
        return records.get(tx, client.namespace, cid)


def list_containers(client: Client, filters: Sequence[str] = ()) -> list[Container]:
    with client.db.view() as tx:
        return records.list_containers(tx, client.namespace, filters)


def image_config(client: Client, ref: str, platform: Platform | None
                 ) -> tuple[dict[str, Any], list[str]]:
    """``(image config, chain IDs)`` of image ``ref`` for ``platform`` (this host)."""
    from cargohold.images import platforms
    from cargohold.images.manifest import (
        chain_ids,
        manifests,
        parse_manifest,
        read_json,
        rootfs_diff_ids,
    )
    from cargohold.images.platforms import Matcher
    from cargohold.metadata import images as image_records

    with client.db.view() as tx:
        try:
            img = image_records.get(tx, client.namespace, ref)
        except NotFound:
            raise NotFound(f"image {ref}: not found in namespace {client.namespace}",
                           hint="pull it with 'hold images pull', or list images with "
                                "'hold images ls'") from None
    matcher = Matcher([platforms.normalize(platform)] if platform else None)
    found = manifests(client.content, img.target, matcher, f"image {ref}")
    if not found:
        raise NotFound(f"image {ref}: no manifest for {matcher.describe()}",
                       hint="list its platforms with 'hold images inspect'")
    m = parse_manifest(client.content, found[0], f"image {ref}")
    cfg = read_json(client.content, m.config, f"image {ref}")
    ids = rootfs_diff_ids(cfg) or []
    if not ids:
        raise FailedPrecondition(f"image {ref}: has no layers to run")
    return cfg, chain_ids(ids)


def _ensure_unpacked(client: Client, ref: str, sn_name: str, chain: list[str],
                     platform: Platform | None) -> None:
    sn = client.snapshotter(sn_name)
    with contextlib.suppress(NotFound):
        sn.stat(chain[-1])
        return
    from cargohold.images import unpack

    try:
        unpack.unpack_image(client, ref, snapshotter=sn_name, platform=platform)
    except NotFound as exc:
        raise FailedPrecondition(
            f"image {ref}: not unpacked for snapshotter {sn_name}, and its layers are not "
            f"all in the store ({exc.message})",
            hint=f"pull it with 'hold images pull {ref}', or import it again with "
                 "'hold images import'") from exc


def create(client: Client, ref: str, cid: str, opts: CreateOptions | None = None) -> Container:
    """Create container ``cid`` from image ``ref``; see the module docstring."""
    opts = opts or CreateOptions()
    validate_identifier("container", cid)
    ns = client.namespace
    with client.db.view() as tx:
        with contextlib.suppress(NotFound):
            records.get(tx, ns, cid)
            raise AlreadyExists(f"container {cid}: already exists in namespace {ns}",
                                hint=f"remove it with 'hold containers rm {cid}', or choose "
                                     "another id")
    cfg, chain = image_config(client, ref, opts.platform)
    sn_name = opts.snapshotter or client.config.snapshotter
    _ensure_unpacked(client, ref, sn_name, chain, opts.platform)
    who = specs.user_text(cfg, opts.spec)
    from cargohold.leases.manager import DEFAULT_EXPIRY
    from cargohold.leases.owner import owner_labels
    from cargohold.metadata import leases as lease_records
    from cargohold.metadata.snapshotter import NamespacedSnapshotter

    lease = client.leases.create(expire=DEFAULT_EXPIRY,
                                 labels=owner_labels(f"create container {cid}")).id
    sn = NamespacedSnapshotter(client.db, client.backend_snapshotter(sn_name), ns, sn_name,
                               lease=lease, pins=client.mount_pins)
    prepared = False
    try:
        try:
            mounts = sn.prepare(cid, chain[-1])
        except AlreadyExists:
            raise AlreadyExists(f"snapshot {cid} on {sn_name}: already exists (the key a "
                                f"container {cid} would use)",
                                hint=f"remove it with 'hold snapshots rm {cid}', or choose "
                                     "another container id") from None
        prepared = True
        if users.needs_lookup(who):
            from cargohold.mount import temp_mount

            with temp_mount(mounts, readonly=True) as rootfs:
                user = users.resolve(who, rootfs)
        else:
            user = users.resolve(who, None)
        doc = specs.build(cfg, cid, ns=ns, state=client.config.state, opts=opts.spec,
                          user=user)
        c = Container(cid, image=ref, runtime=RUNTIME, spec=json.dumps(doc),
                      snapshotter=sn_name, snapshotkey=cid, labels=dict(opts.labels))
        with client.db.update() as tx:
            # One commit: from it on the record holds the snapshot, and the lease is gone.
            c = records.create(tx, ns, c)
            lease_records.delete(tx, ns, lease)
        return c
    except BaseException:
        if prepared:
            with contextlib.suppress(CargoholdError):
                sn.remove(cid)
        with contextlib.suppress(CargoholdError):
            client.leases.delete(lease)
        raise


def has_task(client: Client, cid: str) -> bool:
    return os.path.isdir(TaskPaths(client.config.state, client.namespace, cid).dir)


def remove(client: Client, cid: str, *, keep_snapshot: bool = False,
           task_going: bool = False) -> Container:
    """Remove container ``cid`` (and its snapshot unless ``keep_snapshot``); see the module.

    Raises NotFound (a repeat too) and FailedPrecondition while it has a task, unless
    ``task_going``: the caller is removing the task and has unmounted its rootfs already
    (``hold run --rm``, while the shim finishes).
    """
    c = get(client, cid)
    if not task_going and has_task(client, cid):
        raise FailedPrecondition(f"container {cid}: has a task",
                                 hint=f"remove the task first with 'hold tasks rm {cid}' "
                                      "(--force kills it)")
    sn = client.snapshotter(c.snapshotter) if c.snapshotter else None
    if keep_snapshot and sn is not None:
        from cargohold.snapshotters.api import Info, Kind

        with contextlib.suppress(NotFound):
            sn.update(Info(c.snapshotkey, Kind.ACTIVE, labels={LABEL_GC_ROOT: format_time(
                now_ns())}), [f"labels.{LABEL_GC_ROOT}"])
    with client.db.update() as tx:
        records.delete(tx, client.namespace, cid)
    if sn is not None and not keep_snapshot:
        # A failure here leaves an unreferenced snapshot: garbage that GC removes.
        with contextlib.suppress(NotFound):
            sn.remove(c.snapshotkey)
    return c


def label(client: Client, cid: str, labels: dict[str, str]) -> Container:
    """Set (``k=v``) or remove (``k=``) labels of container ``cid``."""
    with client.db.update() as tx:
        return records.update(tx, client.namespace, Container(cid, labels=labels),
                              [f"labels.{k}" for k in labels])


def info_json(c: Container) -> dict[str, Any]:
    """The container as ``ctr containers info`` prints it."""
    try:
        spec = json.loads(c.spec) if c.spec else None
    except ValueError:
        spec = c.spec
    return {"ID": c.id, "Labels": c.labels or None, "Image": c.image,
            "Runtime": {"Name": c.runtime, "Options": None}, "SnapshotKey": c.snapshotkey,
            "Snapshotter": c.snapshotter, "CreatedAt": format_time(c.created_at),
            "UpdatedAt": format_time(c.updated_at), "Extensions": None, "Spec": spec}
