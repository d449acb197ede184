"""``push``: an image record's blobs and manifests into a registry repository.

:meth:`Pusher.push` (``hold images push REF [LOCAL]``):

1. The image's target: a manifest is pushed as it is; an index with all its manifests, or —
   with ``--platform`` — only the matching ones: a single match is pushed as a plain manifest
   under the tag, several as a new index that lists just them. Every blob must be in the
   store (pull with ``--all-platforms`` first, or choose platforms).
2. Every config and layer, ``max_concurrent_uploads`` at a time: nothing when the registry
   has it (``HEAD``); a cross-repository mount when our
   ``containerd.io/distribution.source.<registry>`` label names another repository on the
   same registry and the registry agrees (201); else an upload — one ``PUT`` with the whole
   blob, or ``PATCH`` chunks of ``chunk_size`` then the closing ``PUT ?digest=``.
3. Manifests once their blobs are there, by digest; the index after its children; the tag
   last, so a reader never sees a tag whose content is incomplete.
4. Pushed blobs get the destination's ``distribution.source`` label (later pushes can mount).

The endpoints with the ``push`` capability are tried in order; a failure on one moves the
whole push to the next (blobs already there are found by ``HEAD``).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from cargohold._record import field, record
from cargohold.errors import InvalidArgument, NotFound
from cargohold.fetch.api import Endpoint, Reference
from cargohold.fetch.download import merge_source_label
from cargohold.fetch.registry import Registry
from cargohold.fetch.remote import Remote
from cargohold.images import mediatypes as mt
from cargohold.images import platforms as plat
from cargohold.images.manifest import descriptors, parse_manifest, read_json
from cargohold.images.progress import Progress
from cargohold.store.api import Info
from cargohold.types import LABEL_DISTRIBUTION_SOURCE, Descriptor, Digest, Platform

if TYPE_CHECKING:
    from cargohold.client import Client


@record
class PushOptions:
    """What ``hold images push`` can ask for."""

    platforms: list[Platform] = field(default_factory=list)
    chunk_size: int = 0
    max_concurrent_uploads: int = 3
    #: an index whose manifests the store lacks in part: push the complete ones (seeding),
    #: instead of failing
    present_only: bool = False


@record
class PushResult:
    """What a push did."""

    name: str
    target: Descriptor
    endpoint: str = ""
    uploaded: int = 0
    mounted: int = 0
    existing: int = 0
    bytes: int = 0
    manifests: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target.to_json(), "endpoint": self.endpoint,
                "uploaded": self.uploaded, "mounted": self.mounted, "existing": self.existing,
                "bytes": self.bytes, "manifests": self.manifests,
                "seconds": round(self.seconds, 3)}


@record
class _Plan:
    target: Descriptor  # what the tag will point at
    target_data: bytes  # its JSON
    manifests: list[Descriptor]  # image manifests, pushed by digest first (index case)
    blobs: list[Descriptor]  # configs and layers, deduplicated


class Pusher:
    """Pushes images of ``client``'s namespace (see the module docstring)."""

    def __init__(self, client: Client, registry: Registry, *,
                 progress: Progress | None = None) -> None:
        self.client = client
        self.registry = registry
        self.progress = progress or Progress()

    def push(self, local: str, dest: str, opts: PushOptions | None = None) -> PushResult:
        """Push image ``local`` to reference ``dest``. Raises NotFound (no such image, or a
        blob the store lacks), the fetch errors of :mod:`.api`, IntegrityError when the
        registry stores a manifest under another digest.
        """
        opts = opts or PushOptions()
        t0 = time.monotonic()
        ref = Reference.parse(dest)
        img = self._image(local)
        plan = self._plan(img.name, img.target, opts)
        sources = self._sources(plan.blobs, ref.registry)
        remote = self.registry.remote(ref, push=True,
                                      mount_from=tuple(sorted({r for rs in sources.values()
                                                               for r in rs})))
        res = PushResult(ref.name, plan.target)

        def at(ep: Endpoint) -> None:
            res.endpoint = ep.url
            self._blobs(remote, ep, plan, sources, opts, res)
            for m in plan.manifests:
                remote.put_manifest(ep, m.digest, m, self._bytes(m))
                res.manifests += 1
            tag = ref.digest or ref.tag or "latest"
            remote.put_manifest(ep, tag, plan.target, plan.target_data)
            res.manifests += 1

        remote.each("push", at)
        self._label(plan, ref)
        res.seconds = time.monotonic() - t0
        return res

    def _image(self, name: str) -> Any:
        from cargohold.images import refs
        from cargohold.metadata import images as records

        c = self.client
        with c.db.view() as tx:
            try:
                return records.get(tx, c.namespace, name)
            except NotFound:
                try:
                    return records.get(tx, c.namespace, refs.normalize(name))
                except (NotFound, InvalidArgument):
                    pass
        raise NotFound(f"image {name}: not found",
                       hint="list images with 'hold images ls'; push LOCAL under another "
                            "name with 'hold images push REF LOCAL'")

    def _bytes(self, desc: Descriptor) -> bytes:
        with self.client.content.reader(desc.digest) as r:
            return r.read()

    def _plan(self, name: str, target: Descriptor, opts: PushOptions) -> _Plan:
        store = self.client.content
        what = f"image {name}"
        if mt.is_manifest(target.media_type):
            return _Plan(target, self._bytes(target), [], self._manifest_blobs([target], what))
        if not mt.is_index(target.media_type):
            raise InvalidArgument(f"{what}: target {target.media_type!r} is not a manifest or "
                                  "index")
        doc = read_json(store, target, what)
        kids = descriptors(doc, "manifests", f"index {target.digest}")
        chosen: list[Descriptor] = []
        if opts.platforms:
            matcher = plat.Matcher(opts.platforms)
            chosen = [k for k in kids if mt.is_manifest(k.media_type)
                      and k.platform is not None and matcher.match(k.platform)]
            if not chosen:
                have = ", ".join(sorted({str(k.platform) for k in kids if k.platform})) or "none"
                raise NotFound(f"{what}: no manifest for platform {matcher.describe()} (it has "
                               f"{have})", hint="choose one of those with --platform")
        elif opts.present_only:
            complete = [k for k in kids if mt.is_manifest(k.media_type) and self._complete(k)]
            if not complete:
                raise NotFound(f"{what}: the store has no complete manifest of it",
                               hint="import or pull the image again")
            if len(complete) < len(kids):
                chosen = complete
        if chosen:
            if len(chosen) == 1:
                d = Descriptor(chosen[0].media_type, chosen[0].digest, chosen[0].size)
                return _Plan(d, self._bytes(d), [], self._manifest_blobs([d], what))
            sub = dict(doc)
            sub["manifests"] = [k.to_json() for k in chosen]
            data = json.dumps(sub, indent=2).encode()
            d = Descriptor(target.media_type, Digest.from_bytes(data), len(data))
            return _Plan(d, data, chosen, self._manifest_blobs(chosen, what))
        missing = []
        for k in kids:
            try:
                store.info(k.digest)
            except NotFound:
                missing.append(str(k.platform or k.digest))
        if missing:
            raise NotFound(f"{what}: the store lacks the manifests of {', '.join(missing)}",
                           hint="push the platforms it has with --platform, or pull the image "
                                "with --all-platforms first")
        mans = [k for k in kids if mt.is_manifest(k.media_type)]
        return _Plan(target, self._bytes(target), kids, self._manifest_blobs(mans, what))

    def _complete(self, m: Descriptor) -> bool:
        try:
            self._manifest_blobs([m], "")
        except NotFound:
            return False
        return True

    def _manifest_blobs(self, mans: list[Descriptor], what: str) -> list[Descriptor]:
        store = self.client.content
        out: dict[str, Descriptor] = {}
        for m in mans:
            man = parse_manifest(store, m, what)
            for b in [man.config, *man.layers]:
                try:
                    store.info(b.digest)
                except NotFound as exc:
                    raise NotFound(f"{what}: blob {b.digest} ({b.media_type}) is not in the "
                                   "store", hint="pull the image again to complete it") from exc
                out.setdefault(b.digest, b)
        return list(out.values())

    def _sources(self, blobs: list[Descriptor], registry: str) -> dict[str, list[str]]:
        key = f"{LABEL_DISTRIBUTION_SOURCE}{registry}"
        out = {}
        for b in blobs:
            v = self.client.content.info(b.digest).labels.get(key, "")
            out[b.digest] = [r for r in v.split(",") if r]
        return out

    def _blobs(self, remote: Remote, ep: Endpoint, plan: _Plan,
               sources: dict[str, list[str]], opts: PushOptions, res: PushResult) -> None:
        def one(b: Descriptor) -> str:
            key = b.digest
            self.progress.start(key, f"upload {b.digest.split(':', 1)[1][:12]}", b.size)
            try:
                if remote.blob_exists(ep, b.digest):
                    self.progress.done(key, "exists")
                    return "existing"
                for repo in sources.get(b.digest, []):
                    if repo == remote.ref.repository:
                        continue
                    loc = remote.start_upload(ep, b.digest, mount_from=repo)
                    if not loc:
                        self.progress.done(key, "mounted")
                        return "mounted"
                    break  # the registry would not mount: upload into this session
                else:
                    loc = remote.start_upload(ep, b.digest)
                remote.upload(ep, loc, b, lambda: self.client.content.reader(b.digest),
                              chunk=opts.chunk_size,
                              progress=lambda n: self.progress.advance(key, n))
            except BaseException:
                self.progress.done(key, "failed")
                raise
            self.progress.done(key)
            return "uploaded"

        with ThreadPoolExecutor(max(1, opts.max_concurrent_uploads),
                                thread_name_prefix="cargohold-push") as pool:
            outcomes = list(pool.map(one, plan.blobs))
        for b, o in zip(plan.blobs, outcomes, strict=True):
            if o == "uploaded":
                res.uploaded += 1
                res.bytes += b.size
            elif o == "mounted":
                res.mounted += 1
            else:
                res.existing += 1

    def _label(self, plan: _Plan, ref: Reference) -> None:
        key = f"{LABEL_DISTRIBUTION_SOURCE}{ref.registry}"
        store = self.client.content
        for b in [*plan.blobs, *plan.manifests]:
            try:
                cur = store.info(b.digest).labels.get(key, "")
            except NotFound:
                continue
            new = merge_source_label(cur, ref.repository)
            if new != cur:
                store.update(Info(b.digest, 0, labels={key: new}), [f"labels.{key}"])
