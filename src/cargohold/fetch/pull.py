"""``pull``: resolve a reference, fetch what its platforms need, unpack while it downloads.

:meth:`Puller.pull` (``hold images pull``; ``hold content fetch`` is the same with
``unpack=False``):

1. Resolve the reference on the endpoints with ``resolve`` (:mod:`.remote`), fetch the index
   or manifest, and walk it: index entries are kept when their platform matches (as for
   import: ``--platform`` each, ``--all-platforms``, else this host; attestations never),
   their manifests fetched, then every config. Each is verified and committed with
   containerd's labels: ``containerd.io/gc.ref.content.*`` on parents for the children that
   were fetched, ``containerd.io/distribution.source.<registry>=<repository>`` on everything.
2. Every layer goes to a pool of ``max_concurrent_downloads`` :class:`~.download.BlobDownload`
   workers, in manifest order; a large layer is fetched in ranged parts.
3. Meanwhile the unpacker (:class:`~cargohold.images.unpack.Unpacker`) reads each layer
   through a :class:`~.download.FollowingStore`, i.e. while it downloads: a layer is applied as
   its bytes arrive and committed only after its digest was verified, so the pull ends soon
   after the last byte.
4. The image record (``name`` → the resolved descriptor, as containerd writes it), last.

Everything runs inside one lease (internal, named for this process), which holds each blob's
digest from before its download starts, and the snapshots. Partial downloads are not in the
lease: their ingest records expire on their own (:mod:`.download`), so after a crash or a
``kill -9`` the next pull of the same image continues each blob from its offset. Finished
layers are also held by an owner-less "resume" lease (``pull-<hash>``, see
:meth:`Puller._resume_lease`) that a successful pull deletes and a failed one leaves to
expire, so a GC between a killed pull and its retry does not take them either. On any
failure the remaining downloads are stopped; a download's error wins over the unpack error it
caused.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from cargohold._record import field, record
from cargohold.errors import AlreadyExists, CargoholdError, NotFound
from cargohold.fetch.api import Reference
from cargohold.fetch.download import (
    BlobDownload,
    FollowingStore,
    add_labels,
    open_writer,
)
from cargohold.fetch.registry import Registry
from cargohold.fetch.remote import Remote
from cargohold.images import mediatypes as mt
from cargohold.images import platforms as plat
from cargohold.images.manifest import child_gc_labels, config_platform, loads, parse_manifest
from cargohold.images.progress import Progress
from cargohold.leases.manager import DEFAULT_EXPIRY
from cargohold.metadata.leases import Resource
from cargohold.types import LABEL_DISTRIBUTION_SOURCE, Descriptor, Platform

if TYPE_CHECKING:
    from cargohold.client import Client
    from cargohold.metadata.content import NamespacedStore

DEFAULT_CHUNK = 32 << 20
_ACTIVE: set[Puller] = set()  # pulls running in this process, for interrupt_all()
_ACTIVE_MU = threading.Lock()


def interrupt_all() -> None:
    """Abort every running pull's downloads now (their reads included).

    For a signal handler to call before it raises KeyboardInterrupt: unpack's cleanup waits
    for the layer it reads, and a silent registry would otherwise keep it waiting until the
    read timeout. Safe from any thread, and when nothing runs.
    """
    with _ACTIVE_MU:
        pullers = list(_ACTIVE)
    for p in pullers:
        p.interrupt()


@record
class PullOptions:
    """What ``hold images pull`` can ask for."""

    platforms: list[Platform] = field(default_factory=list)
    all_platforms: bool = False
    unpack: bool = True
    snapshotter: str = ""
    max_concurrent_downloads: int = 3
    chunk_size: int = DEFAULT_CHUNK
    labels: dict[str, str] = field(default_factory=dict)


@record
class PullResult:
    """What a pull did, for the CLI to print."""

    name: str
    target: Descriptor
    endpoint: str = ""
    manifests: list[tuple[str, str]] = field(default_factory=list)  # (platform, digest)
    unpacked: dict[str, str] = field(default_factory=dict)  # manifest digest -> chain ID
    fetched: int = 0  # blobs downloaded (fully or the rest of a partial one)
    existing: int = 0  # blobs the store had
    bytes: int = 0  # body bytes received
    resumed: int = 0  # bytes of partial downloads that were kept from an earlier run
    seconds: float = 0.0
    image: str = "created"  # or "updated", "unchanged"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target.to_json(), "endpoint": self.endpoint,
                "manifests": [{"platform": p, "digest": d} for p, d in self.manifests],
                "unpacked": self.unpacked, "fetched": self.fetched, "existing": self.existing,
                "bytes": self.bytes, "resumed": self.resumed,
                "seconds": round(self.seconds, 3), "image": self.image}


class _Prefixed(Progress):
    """Unpack's items beside the downloads' (both key by layer digest)."""

    def __init__(self, inner: Progress, prefix: str) -> None:
        super().__init__()
        self.inner, self.prefix = inner, prefix

    def start(self, key: str, label: str, total: int = 0) -> None:
        self.inner.start(self.prefix + key, label, total)

    def advance(self, key: str, n: int) -> None:
        self.inner.advance(self.prefix + key, n)

    def done(self, key: str, status: str = "done") -> None:
        self.inner.done(self.prefix + key, status)

    def note(self, text: str) -> None:
        self.inner.note(text)


class Puller:
    """Pulls references into ``client``'s namespace (see the module docstring)."""

    def __init__(self, client: Client, registry: Registry, *,
                 progress: Progress | None = None) -> None:
        self.client = client
        self.registry = registry
        self.progress = progress or Progress()
        self._downloads: dict[str, BlobDownload] = {}

    def interrupt(self) -> None:
        """Stop this pull's downloads now (see :func:`interrupt_all`)."""
        for dl in list(self._downloads.values()):
            dl.interrupt()

    def pull(self, text: str, opts: PullOptions | None = None) -> PullResult:
        """Pull ``text`` (a reference). Raises the fetch errors of :mod:`.api`, NotFound for
        a platform the image lacks, IntegrityError for content that does not match its
        digest, and unpack's errors. Repeating a pull fetches nothing new.
        """
        opts = opts or PullOptions()
        t0 = time.monotonic()
        ref = Reference.parse(text)
        remote = self.registry.remote(ref)
        c = self.client
        from cargohold.metadata.content import NamespacedStore

        with c.leases.lease(expire=DEFAULT_EXPIRY, purpose=f"pull {ref.name}") as lease:
            leased = NamespacedStore(c.db, c.store, c.namespace, lease=lease,
                                     ingest_expiry=c.content.ingest_expiry)
            # Partial layer downloads live outside the lease (see the module docstring).
            loose = NamespacedStore(c.db, c.store, c.namespace,
                                    ingest_expiry=c.content.ingest_expiry)
            target, ep = remote.resolve()
            res = PullResult(ref.name, target, ep.url)
            source = {f"{LABEL_DISTRIBUTION_SOURCE}{ref.registry}": ref.repository}
            walk = _Walk(remote, leased, lease, c, source)
            matcher = plat.Matcher(opts.platforms or None, all_platforms=opts.all_platforms)
            found = walk.manifests(target, matcher, ref.name)
            res.manifests = [(str(p) if p else "", m.digest) for m, p in found]
            layers = walk.layers(found)
            keep = self._resume_lease(ref.name, layers)
            self._fetch_and_unpack(remote, leased, loose, lease, walk, found, layers, opts,
                                   res)
            res.image = self._write_image(ref.name, target, opts.labels)
            # The image holds everything now; a failure above leaves ``keep`` to expire.
            with contextlib.suppress(CargoholdError):
                c.leases.delete(keep)
        res.seconds = time.monotonic() - t0
        return res

    def _resume_lease(self, name: str, layers: list[Descriptor]) -> str:
        """The owner-less lease that keeps this image's finished layers for a retry.

        The pull's own lease names this process, so once it dies GC may take what that
        lease held; partial layers survive as ingests with their own expiry, and finished
        ones would be downloaded again. This lease (id ``pull-<hash of the name>``, label
        ``cargohold.io/pull=<name>``) holds their digests for ``[gc] ingest_expiry`` — the
        same time a partial layer is kept — and a successful pull deletes it.
        """
        from cargohold._sha import sha256_hex
        from cargohold.metadata import leases as lease_records
        from cargohold.types import LABEL_GC_EXPIRE, format_time, now_ns

        c = self.client
        lid = "pull-" + sha256_hex(f"{c.namespace}/{name}".encode())[:20]
        labels = {"cargohold.io/pull": name,
                  LABEL_GC_EXPIRE: format_time(now_ns() + c.content.ingest_expiry)}
        with c.db.update() as tx:
            if lease_records.exists(tx, c.namespace, lid):
                lease_records.delete(tx, c.namespace, lid)
            lease_records.create(tx, c.namespace, lid, labels)
            for d in layers:
                lease_records.add_resource(tx, c.namespace, lid, Resource("content", d.digest))
        return lid

    def _fetch_and_unpack(self, remote: Remote, leased: NamespacedStore,
                          loose: NamespacedStore, lease: str, walk: _Walk,
                          found: list[tuple[Descriptor, Platform | None]],
                          layers: list[Descriptor], opts: PullOptions,
                          res: PullResult) -> None:
        c = self.client
        with c.db.update() as tx:
            from cargohold.metadata import leases as lease_records

            for d in layers:
                lease_records.add_resource(tx, c.namespace, lease, Resource("content", d.digest))
        cancel = threading.Event()
        total = sum(d.size for d in layers)
        self.progress.start("total", f"total ({len(layers)} layers)", total)
        downloads = {d.digest: BlobDownload(remote, loose, d, labels=walk.source,
                                            progress=self.progress, total_key="total",
                                            chunk=opts.chunk_size,
                                            parts=opts.max_concurrent_downloads,
                                            cancel=cancel, backoff=self.registry.backoff)
                     for d in layers}
        pool = ThreadPoolExecutor(max(1, opts.max_concurrent_downloads),
                                  thread_name_prefix="cargohold-pull")
        failed: BaseException | None = None
        self._downloads = downloads
        with _ACTIVE_MU:
            _ACTIVE.add(self)
        try:
            for dl in downloads.values():
                pool.submit(dl.run)
            if opts.unpack:
                self._unpack(FollowingStore(leased, downloads), lease, found, opts, res)
            for dl in downloads.values():
                dl.wait()
        except BaseException as exc:
            failed = exc
            for dl in downloads.values():
                dl.interrupt()  # a Ctrl-C must not wait for a silent registry's timeout
            raise
        finally:
            pool.shutdown(wait=True)
            with _ACTIVE_MU:
                _ACTIVE.discard(self)
            self.progress.done("total", "failed" if failed else "done")
            for dl in downloads.values():
                if dl.status == "exists":
                    res.existing += 1
                elif dl.fetched or dl.status == "done":
                    res.fetched += 1
                res.bytes += dl.fetched
                res.resumed += dl.resumed_from
            if failed is not None:
                first = next((dl.error for dl in downloads.values()
                              if dl.error is not None and not _is_cancel(dl.error)), None)
                if first is not None and first is not failed:
                    raise first from failed

    def _unpack(self, store: FollowingStore, lease: str,
                found: list[tuple[Descriptor, Platform | None]], opts: PullOptions,
                res: PullResult) -> None:
        from cargohold.images.unpack import Unpacker

        u = Unpacker(self.client, store, snapshotter=opts.snapshotter or None, lease=lease,
                     progress=_Prefixed(self.progress, "unpack:"))
        try:
            for m, _p in _to_unpack(found, opts):
                res.unpacked[m.digest] = u.unpack(m, what=f"image {res.name}")
        finally:
            u.close()

    def _write_image(self, name: str, target: Descriptor, labels: dict[str, str]) -> str:
        from cargohold.metadata import images as records
        from cargohold.metadata.images import Image

        c = self.client
        t = Descriptor(target.media_type, target.digest, target.size)
        with c.db.update() as tx:
            try:
                cur = records.get(tx, c.namespace, name)
            except NotFound:
                cur = None
            if (cur is not None and cur.target.digest == t.digest
                    and cur.target.media_type == t.media_type
                    and all(cur.labels.get(k) == v for k, v in labels.items())):
                return "unchanged"
            records.upsert(tx, c.namespace, Image(name, t, dict(labels)))
        return "created" if cur is None else "updated"


def _is_cancel(exc: BaseException) -> bool:
    from cargohold.fetch.download import Cancelled

    return isinstance(exc, Cancelled)


def _to_unpack(found: list[tuple[Descriptor, Platform | None]], opts: PullOptions
               ) -> list[tuple[Descriptor, Platform | None]]:
    """As import: each explicit platform's best match; --all-platforms: every one the host
    runs; default: this host's best.
    """
    if opts.platforms and not opts.all_platforms:
        out = []
        for p in opts.platforms:
            pm = plat.Matcher([p])
            hits = sorted((f for f in found if pm.match(f[1])), key=lambda f: pm.rank(f[1]))
            out.extend(h for h in hits[:1] if h not in out)
        return out
    host = plat.Matcher()
    hits = sorted((f for f in found if host.match(f[1])), key=lambda f: host.rank(f[1]))
    return hits if opts.all_platforms else hits[:1]


class _Walk:
    """Fetches and stores the index/manifest/config tree under a target."""

    def __init__(self, remote: Remote, store: NamespacedStore, lease: str, client: Client,
                 source: dict[str, str]) -> None:
        self.remote = remote
        self.store = store
        self.lease = lease
        self.client = client
        self.source = source

    def put(self, desc: Descriptor, data: bytes, labels: dict[str, str]) -> None:
        """Commit a small verified blob with ``labels`` (added when it exists already)."""
        import io

        from cargohold.store.api import copy_into

        labels = {**labels, **self.source}
        kind = "index" if mt.is_index(desc.media_type) else (
            "manifest" if mt.is_manifest(desc.media_type) else "config")
        w = open_writer(self.store, f"{kind}-{desc.digest}", desc)
        if w is None:
            add_labels(self.store, desc.digest, labels)
            return
        try:
            if self._shared(desc.digest):
                w.commit(desc.size, desc.digest, labels)  # another namespace has the bytes
            else:
                copy_into(w, io.BytesIO(data), size=desc.size, expected=desc.digest,
                          labels=labels)
        except AlreadyExists:
            add_labels(self.store, desc.digest, labels)

    def _doc(self, desc: Descriptor) -> tuple[bytes, dict[str, Any]]:
        data = self._have(desc) or self.remote.fetch_bytes(desc, manifest=True)
        try:
            doc = loads(data)
        except ValueError as exc:
            from cargohold.fetch.api import RegistryError

            raise RegistryError(f"{desc.media_type} {desc.digest}: not valid JSON") from exc
        return data, doc if isinstance(doc, dict) else {}

    def _shared(self, digest: str) -> bool:
        try:
            self.store.backend.info(digest)
            return True
        except NotFound:
            return False

    def _have(self, desc: Descriptor) -> bytes | None:
        """The blob's bytes when this store (or, shared, another namespace) has them."""
        for src in (self.store, self.store.backend):
            try:
                with src.reader(desc.digest) as r:
                    data = r.read()
            except NotFound:
                continue
            return data if len(data) == desc.size else None
        return None

    def manifests(self, target: Descriptor, matcher: plat.Matcher, what: str
                  ) -> list[tuple[Descriptor, Platform | None]]:
        """Fetch ``target`` and, for an index, the matching children; return the image
        manifests with their platforms, best first. NotFound when no platform matches.
        """
        out: list[tuple[Descriptor, Platform | None]] = []
        self._visit(target, matcher, what, out, 0)
        if not out:
            raise NotFound(f"image {what}: no manifest for platform {matcher.describe()}",
                           hint="choose one of the image's platforms with --platform, or "
                                "use --all-platforms")
        out.sort(key=lambda f: matcher.rank(f[1]))
        return out

    def _visit(self, desc: Descriptor, matcher: plat.Matcher, what: str,
               out: list[tuple[Descriptor, Platform | None]], depth: int) -> None:
        from cargohold.errors import Unsupported
        from cargohold.images.manifest import descriptors

        mt.refuse_schema1(desc.media_type, f"image {what}")
        data, doc = self._doc(desc)
        if mt.is_index(desc.media_type):
            kids = [k for k in descriptors(doc, "manifests", f"index {desc.digest}")
                    if (mt.is_index(k.media_type) or mt.is_manifest(k.media_type))
                    and matcher.match(k.platform)]
            if depth > 4:
                raise Unsupported(f"image {what}: indexes nested too deep")
            self.put(desc, data, child_gc_labels(desc, kids))
            for k in kids:
                self._visit(k, matcher, what, out, depth + 1)
            return
        if not mt.is_manifest(desc.media_type):
            raise Unsupported(f"image {what}: {desc.digest} has media type "
                              f"{desc.media_type!r}, not an image manifest or index",
                              hint="only OCI and Docker images can be pulled")
        m = parse_manifest_doc(desc, doc)
        self.put(desc, data, child_gc_labels(desc, [m.config, *m.layers]))
        cfg = self._have(m.config) or self.remote.fetch_bytes(m.config, manifest=False)
        self.put(m.config, cfg, {})
        platform = desc.platform or config_platform(self.store, m)
        if desc.platform is None and platform is not None and not matcher.match(platform):
            return  # a manifest listed without a platform whose config says otherwise
        out.append((desc, platform))

    def layers(self, found: list[tuple[Descriptor, Platform | None]]) -> list[Descriptor]:
        """Every layer (and other non-config blob) of the manifests, deduplicated, in order."""
        out: dict[str, Descriptor] = {}
        for m, _p in found:
            for layer in parse_manifest(self.store, m).layers:
                out.setdefault(layer.digest, layer)
        return list(out.values())


def parse_manifest_doc(desc: Descriptor, doc: dict[str, Any]) -> Any:
    """A :class:`~cargohold.images.manifest.Manifest` from already-parsed JSON."""
    from cargohold.errors import InvalidArgument
    from cargohold.images.manifest import Manifest, descriptors

    where = f"manifest {desc.digest}"
    if "config" not in doc:
        raise InvalidArgument(f"{where}: has no config")
    return Manifest(desc, Descriptor.from_json(doc["config"]), descriptors(doc, "layers", where),
                    desc.platform, dict(doc.get("annotations") or {}))

