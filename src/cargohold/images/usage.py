"""``hold df``: bytes used by content, by snapshots and by each image, from stored numbers.

Nothing here walks a file tree. Blob sizes come from the namespace's content records;
committed snapshots' sizes from the usage each backend stored when the snapshot was committed
(active snapshots are counted but not measured, since measuring them would mean a walk).

Per image (names that point at the same target count as one image), the objects are the blobs
reachable from its target that the store has, and the snapshots of each unpacked platform's
chain. An object is *exclusive* when no other image reaches it (removing the image and running
GC would free it) and *shared* otherwise. Content that no image reaches is *reclaimable*
(leases and ingests may still hold it until they end).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cargohold._record import field, record
from cargohold.errors import CargoholdError
from cargohold.images import mediatypes as mt
from cargohold.images.manifest import chain_ids, children, diff_ids, parse_manifest
from cargohold.snapshotters.api import Kind
from cargohold.store.api import Store
from cargohold.types import Descriptor

if TYPE_CHECKING:
    from cargohold.client import Client


@record
class ImageUsage:
    """One image (all names of one target)."""

    names: list[str]
    target: str
    content: int = 0
    snapshots: int = 0
    shared: int = 0
    exclusive: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"names": self.names, "target": self.target, "content": self.content,
                "snapshots": self.snapshots, "shared": self.shared,
                "exclusive": self.exclusive}


@record
class Usage:
    """The whole report."""

    namespace: str
    snapshotter: str
    content_bytes: int = 0
    content_count: int = 0
    content_reclaimable: int = 0
    snapshot_bytes: int = 0
    snapshot_count: int = 0
    snapshot_active: int = 0
    snapshot_reclaimable: int = 0
    images: list[ImageUsage] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "snapshotter": self.snapshotter,
                "content": {"bytes": self.content_bytes, "count": self.content_count,
                            "reclaimable": self.content_reclaimable},
                "snapshots": {"bytes": self.snapshot_bytes, "count": self.snapshot_count,
                              "active": self.snapshot_active,
                              "reclaimable": self.snapshot_reclaimable},
                "images": [i.to_json() for i in self.images]}


def _reach(store: Store, target: Descriptor, has: Callable[[str], bool]
           ) -> tuple[set[str], set[str]]:
    """(blob digests, chain IDs) reachable from ``target`` in the store."""
    blobs: set[str] = set()
    chains: set[str] = set()
    stack = [target]
    while stack:
        d = stack.pop()
        if d.digest in blobs or not has(d.digest):
            continue
        blobs.add(d.digest)
        try:
            if mt.is_index(d.media_type):
                stack.extend(children(store, d))
            elif mt.is_manifest(d.media_type):
                m = parse_manifest(store, d)
                stack.extend([m.config, *m.layers])
                if has(m.config.digest):
                    with_ids = diff_ids(store, m.config)
                    chains.update(chain_ids(with_ids))
        except CargoholdError:
            continue  # a malformed blob is reported by 'hold images check', not here
    return blobs, chains


def disk_usage(client: Client, snapshotter: str | None = None) -> Usage:
    """Compute the report for ``client``'s namespace and ``snapshotter`` (default: global)."""
    from cargohold.images.manage import ImageService

    svc = ImageService(client, snapshotter=snapshotter)
    store = client.content
    sizes: dict[str, int] = {}
    store.walk(lambda i: sizes.__setitem__(i.digest, i.size))
    out = Usage(client.namespace, svc.snapshotter_name, sum(sizes.values()), len(sizes))

    snap_size: dict[str, int] = {}
    try:
        sn = client.snapshotter(svc.snapshotter_name)
        infos: list[Any] = []
        sn.walk(infos.append)
        for info in infos:
            if info.kind == Kind.COMMITTED:
                try:
                    snap_size[info.name] = sn.usage(info.name).size
                except CargoholdError:
                    snap_size[info.name] = 0
            else:
                out.snapshot_active += 1
    except CargoholdError:
        infos = []
    out.snapshot_bytes = sum(snap_size.values())
    out.snapshot_count = len(snap_size)

    groups: dict[str, list[Any]] = {}
    for img in svc.list():
        groups.setdefault(img.target.digest, []).append(img)
    has = sizes.__contains__
    reach: dict[str, tuple[set[str], set[str]]] = {}
    for digest, imgs in groups.items():
        blobs, chains = _reach(store, imgs[0].target, has)
        reach[digest] = (blobs, {c for c in chains if c in snap_size})
    blob_refs: Counter[str] = Counter()
    snap_refs: Counter[str] = Counter()
    for blobs, chains in reach.values():
        blob_refs.update(blobs)
        snap_refs.update(chains)
    for digest, imgs in sorted(groups.items(), key=lambda kv: kv[1][0].name):
        blobs, chains = reach[digest]
        u = ImageUsage(sorted(i.name for i in imgs), digest)
        u.content = sum(sizes[b] for b in blobs)
        u.snapshots = sum(snap_size[c] for c in chains)
        u.exclusive = (sum(sizes[b] for b in blobs if blob_refs[b] == 1)
                       + sum(snap_size[c] for c in chains if snap_refs[c] == 1))
        u.shared = u.content + u.snapshots - u.exclusive
        out.images.append(u)
    out.content_reclaimable = sum(s for d, s in sizes.items() if d not in blob_refs)
    out.snapshot_reclaimable = sum(s for k, s in snap_size.items() if k not in snap_refs)
    return out
