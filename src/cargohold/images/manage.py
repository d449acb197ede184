"""Image-level operations over one namespace: get, list, check, tag, remove, label, inspect.

:class:`ImageService` wraps a :class:`~cargohold.client.Client`; the CLI and the usage report
share it. What it adds over the raw records of :mod:`cargohold.metadata.images` is knowledge of
what an image *is*: its platforms, which of their blobs the store has
(:mod:`cargohold.images.completeness`), and whether each one is unpacked on a snapshotter.

Removal deletes records only: blobs and snapshots go when GC finds nothing else keeps them
(``sync=True`` runs GC before returning, and reports the bytes it freed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cargohold._record import field, record, replace
from cargohold.errors import AlreadyExists, CargoholdError, InvalidArgument, NotFound
from cargohold.images import mediatypes as mt
from cargohold.images import platforms as plat
from cargohold.images.completeness import (
    PlatformState,
    platform_list,
    platform_states,
    store_has,
)
from cargohold.images.manifest import (
    chain_ids,
    children,
    read_json,
    rootfs_diff_ids,
)
from cargohold.metadata import images as records
from cargohold.metadata.images import Image
from cargohold.types import Descriptor, format_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cargohold.client import Client
    from cargohold.store.protocols import Store

#: containerd CRI's pin: kubelet image GC keeps such images, and so does 'hold images rm'
PINNED_LABEL = "io.cri-containerd.pinned"


@record
class Summary:
    """What ``hold images ls`` shows about one image."""

    image: Image
    size: int
    platforms: list[str]
    states: list[PlatformState] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        t = self.image.target
        return {"name": self.image.name, "type": t.media_type, "digest": t.digest,
                "size": self.size, "platforms": self.platforms, "labels": self.image.labels,
                "created_at": format_time(self.image.created_at),
                "updated_at": format_time(self.image.updated_at)}


@record
class RemoveResult:
    """What ``remove`` did: the names removed and, with ``sync``, the GC result."""

    removed: list[str]
    gc: Any = None

    @property
    def bytes_freed(self) -> int:
        return int(getattr(self.gc, "bytes_freed", 0) or 0)


class ImageService:
    """Image operations for the client's namespace (see the module docstring)."""

    def __init__(self, client: Client, *, snapshotter: str | None = None) -> None:
        self.client = client
        self.snapshotter_name = snapshotter or client.config.snapshotter

    @property
    def ns(self) -> str:
        return self.client.namespace

    @property
    def store(self) -> Store:
        return self.client.content

    # --- records ----------------------------------------------------------------------------
    def get(self, name: str) -> Image:
        """The record of ``name``; NotFound (with a hint) when there is none."""
        with self.client.db.view() as tx:
            return records.get(tx, self.ns, name)

    def list(self, filters: Sequence[str] = ()) -> list[Image]:
        """Records matching containerd-style filters (``name==x``, ``labels."k"==v``),
        sorted by name.
        """
        with self.client.db.view() as tx:
            return sorted(records.list_images(tx, self.ns, filters), key=lambda i: i.name)

    def tag(self, src: str, dsts: Sequence[str], *, force: bool = False) -> list[Image]:
        """Point each name in ``dsts`` at ``src``'s target (labels copied). A destination that
        exists with another target raises AlreadyExists unless ``force``; one that already
        points at the same target is left as it is. All or nothing (one transaction).
        """
        out = []
        with self.client.db.update() as tx:
            img = records.get(tx, self.ns, src)
            for dst in dsts:
                if not dst:
                    raise InvalidArgument("image name '': empty")
                try:
                    cur: Image | None = records.get(tx, self.ns, dst)
                except NotFound:
                    cur = None
                if cur is not None and cur.target.digest == img.target.digest:
                    out.append(cur)
                    continue
                if cur is not None and not force:
                    raise AlreadyExists(f"image {dst}: already exists (target "
                                        f"{cur.target.digest})",
                                        hint="use --force to point it at the new target")
                out.append(records.upsert(tx, self.ns, Image(dst, img.target,
                                                             dict(img.labels))))
        return out

    def remove(self, names: Sequence[str], *, sync: bool = False,
               force: bool = False) -> RemoveResult:
        """Delete the records of ``names`` (all or none: NotFound names the first missing one).

        A pinned image (label ``io.cri-containerd.pinned=pinned``, as seeding sets it) is
        refused with FailedPrecondition unless ``force``. What they kept alive becomes
        garbage; ``sync`` runs GC now and returns its result.
        """
        with self.client.db.update() as tx:
            for n in names:
                img = records.get(tx, self.ns, n)
                if img.labels.get(PINNED_LABEL) == "pinned" and not force:
                    from cargohold.errors import FailedPrecondition

                    raise FailedPrecondition(
                        f"image {n}: pinned (seeded for offline use)",
                        hint="remove it anyway with 'hold images rm --force', or unpin it "
                             f"with 'hold images label {n} {PINNED_LABEL}='")
            for n in dict.fromkeys(names):
                records.delete(tx, self.ns, n)
        res = RemoveResult(list(dict.fromkeys(names)))
        if sync:
            res.gc = self.client.collector.collect()
        return res

    def label(self, name: str, labels: dict[str, str]) -> Image:
        """Set labels (an empty value deletes one); returns the updated record."""
        fps = [f"labels.{k}" for k in labels]
        with self.client.db.update() as tx:
            return records.update(tx, self.ns, Image(name, records.get(tx, self.ns, name).target,
                                                     dict(labels)), fps)

    # --- what an image is -------------------------------------------------------------------
    def states(self, img: Image, *, unpacked: bool = False,
               has: Callable[[str], bool] | None = None) -> list[PlatformState]:
        """Per-manifest states of ``img``; with ``unpacked``, whether each chain is on the
        snapshotter (None when that snapshotter cannot run here).
        """
        states = platform_states(self.store, img.target, what=f"image {img.name}", has=has)
        if not unpacked:
            return states
        sn = self._snapshotter()
        return [replace(s, unpacked=None if sn is None
                        else bool(s.chain_id) and self._has_snapshot(sn, s.chain_id))
                for s in states]

    def _snapshotter(self) -> Any:
        try:
            return self.client.snapshotter(self.snapshotter_name)
        except CargoholdError:
            return None

    @staticmethod
    def _has_snapshot(sn: Any, key: str) -> bool:
        try:
            sn.stat(key)
            return True
        except NotFound:
            return False

    @staticmethod
    def host_state(img: Image, states: Sequence[PlatformState]) -> PlatformState | None:
        """The state ``ctr images check`` reports for ``img``: a manifest target's own, an
        index's best match for this host (None when none matches).
        """
        if mt.is_manifest(img.target.media_type) or (
                len(states) == 1 and states[0].manifest == img.target.digest):
            return states[0] if states else None
        matcher = plat.Matcher()
        real = [s for s in states if not s.attestation and s.platform
                and matcher.match(plat.parse(s.platform))]
        return min(real, key=lambda s: matcher.rank(plat.parse(s.platform)), default=None)

    def summary(self, img: Image, has: Callable[[str], bool] | None = None) -> Summary:
        """Size (for this host's platform, else the first) and platforms of ``img``."""
        try:
            states = self.states(img, has=has)
        except CargoholdError:
            return Summary(img, img.target.size, [], [])
        real = [s for s in states if not s.attestation]
        best = self.host_state(img, states)
        pick = best if best is not None else (real[0] if real else None)
        size = (pick.size if pick else 0)
        if mt.is_index(img.target.media_type):
            size += img.target.size
        return Summary(img, size, platform_list(states), states)

    def summaries(self, filters: Sequence[str] = ()) -> list[Summary]:
        has = store_has(self.store)
        return [self.summary(i, has) for i in self.list(filters)]

    def inspect(self, name: str) -> dict[str, Any]:
        """A JSON-ready description: record, target, index, manifests, configs, chain IDs and
        whether each platform is unpacked on the snapshotter.
        """
        img = self.get(name)
        what = f"image {name}"
        doc: dict[str, Any] = {"name": img.name, "target": img.target.to_json(),
                               "labels": img.labels,
                               "created_at": format_time(img.created_at),
                               "updated_at": format_time(img.updated_at),
                               "snapshotter": self.snapshotter_name}
        has = store_has(self.store)
        if mt.is_index(img.target.media_type) and has(img.target.digest):
            doc["index"] = read_json(self.store, img.target, what)
        states = self.states(img, unpacked=True, has=has)
        manifests = []
        for s in states:
            entry = s.to_json()
            if not s.manifest_missing:
                d = Descriptor(mt.OCI_MANIFEST, s.manifest, 1)
                mdesc = _find_desc(self.store, img.target, s.manifest, what) or d
                man = read_json(self.store, mdesc, what)
                entry["manifest_json"] = man
                cdesc = Descriptor.from_json(man["config"]) if "config" in man else None
                if cdesc is not None and has(cdesc.digest) and not s.attestation:
                    try:
                        cfg = read_json(self.store, cdesc, what)
                        entry["config"] = cfg
                        ids = rootfs_diff_ids(cfg) or []
                        entry["diff_ids"] = ids
                        entry["chain_ids"] = chain_ids(ids)
                    except CargoholdError as exc:
                        entry["config_error"] = exc.message
            manifests.append(entry)
        doc["manifests"] = manifests
        doc["platforms"] = platform_list(states)
        return doc


def _find_desc(store: Store, target: Descriptor, digest: str, what: str) -> Descriptor | None:
    if target.digest == digest:
        return target
    if not mt.is_index(target.media_type):
        return None
    try:
        kids = children(store, target, what)
    except NotFound:
        return None
    for k in kids:
        found = _find_desc(store, k, digest, what)
        if found is not None:
            return found
    return None
