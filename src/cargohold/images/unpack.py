"""Unpack: an image manifest's layer chain becomes committed snapshots named by chain ID.

For each layer ``n`` (chain IDs from the config's ``rootfs.diff_ids``):

1. a snapshot named ``chainID[n]`` already exists → skip it (an earlier import, another
   image sharing the base layers);
2. otherwise take the cross-process lock ``<root>/locks/unpack/<chainid-hex>`` and look again:
   a concurrent import of the same image may have unpacked it meanwhile, so two imports at
   once apply each layer once;
3. ``prepare("extract-<unique> <chainID>", chainID[n-1])`` with ``containerd.io/snapshot.ref``,
   apply the layer with the differ (straight into the overlay upper directory), which checks
   the diffID against the config and, with ``sync=True``, makes the files durable;
4. ``commit(chainID[n], key)``: a layer is committed only once its files are on disk. Any
   failure removes the extract snapshot, so nothing half-applied is ever visible.

Then the layer blob is labelled ``containerd.io/uncompressed=<diffID>`` and the config
``containerd.io/gc.ref.snapshot.<snapshotter>=<top chainID>`` (so the image keeps its
snapshots alive through its config, as in containerd).

Everything created runs inside the caller's lease; a crash leaves an extract snapshot (active,
leased) that GC removes once the lease expires or is deleted. Overlap: while layer ``n`` is
applied (its decompression already runs on the differ's own thread), the blob of layer
``n+1`` is read ahead into the page cache.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING, Any

from cargohold import _fsutil
from cargohold.errors import AlreadyExists, CargoholdError, InvalidArgument, NotFound
from cargohold.images import mediatypes as mt
from cargohold.images.manifest import chain_ids, diff_ids, parse_manifest, snapshot_gc_label
from cargohold.images.progress import Progress
from cargohold.leases.manager import random_id
from cargohold.metadata.leases import Resource
from cargohold.store.api import Info, Store
from cargohold.types import LABEL_SNAPSHOT_REF, LABEL_UNCOMPRESSED, Descriptor

if TYPE_CHECKING:
    from cargohold.client import Client


class Unpacker:
    """Unpacks manifests onto one snapshotter of ``client``'s namespace.

    ``store`` is the (leased) content store to read blobs from; ``lease`` receives the
    snapshots (created here, or found and reused), so GC cannot take them before the caller
    writes the image record.
    """

    def __init__(self, client: Client, store: Store, *, snapshotter: str | None = None,
                 lease: str | None = None, progress: Progress | None = None) -> None:
        from cargohold.metadata.snapshotter import NamespacedSnapshotter

        self.client = client
        self.store = store
        self.name = snapshotter or client.config.snapshotter
        self.lease = lease
        self.progress = progress or Progress()
        self.sn = NamespacedSnapshotter(client.db, client.backend_snapshotter(self.name),
                                        client.namespace, self.name, lease=lease)
        self.lock_dir = _fsutil.makedirs(os.path.join(client.root, "locks", "unpack"))
        self.applied = 0  # layers applied by this unpacker (the rest were found)

    def exists(self, chain: str) -> bool:
        try:
            self.sn.stat(chain)
            return True
        except NotFound:
            return False

    def unpack(self, desc: Descriptor, *, what: str = "") -> str:
        """Unpack manifest ``desc``; return its top chain ID. Repeating it applies nothing.

        Raises IntegrityError (diffID mismatch), LayerError (a bad layer), NotFound (a missing
        blob), Unsupported (a non-layer media type), each naming the image and the layer.
        """
        what = what or f"manifest {desc.digest}"
        m = parse_manifest(self.store, desc, what)
        ids = diff_ids(self.store, m.config, what)
        layers = list(m.layers)
        if len(ids) != len(layers):
            raise InvalidArgument(f"{what}: config {m.config.digest} lists {len(ids)} diff IDs "
                                  f"for {len(layers)} layers",
                                  hint="the image is malformed; rebuild or export it again")
        for i, layer in enumerate(layers):
            if not mt.is_layer(layer.media_type):
                raise InvalidArgument(f"{what}: layer {i + 1} {layer.digest}: unknown media "
                                      f"type {layer.media_type!r}",
                                      hint="only tar, tar+gzip and tar+zstd layers unpack")
        chains = chain_ids(ids)
        if not chains:
            return ""
        prefetch = _ReadAhead(self.store)
        try:
            for i, layer in enumerate(layers):
                if i + 1 < len(layers):
                    prefetch.want(layers[i + 1].digest)
                self._layer(layer, ids[i], chains[i], chains[i - 1] if i else "",
                            f"{what}: layer {i + 1}/{len(layers)}")
        finally:
            prefetch.stop()
        _add_labels(self.store, m.config.digest, snapshot_gc_label(self.name, chains[-1]))
        return chains[-1]

    def _layer(self, layer: Descriptor, diff_id: str, chain: str, parent: str,
               what: str) -> None:
        if self.exists(chain):
            self._lease_existing(chain)
        else:
            lock = _fsutil.FileLock(os.path.join(self.lock_dir, chain.split(":", 1)[-1]),
                                    f"unpack of {chain}")
            lock.acquire(wait=True)
            try:
                if self.exists(chain):  # a concurrent unpack finished it while we waited
                    self._lease_existing(chain)
                else:
                    self._apply(layer, diff_id, chain, parent, what)
            finally:
                lock.release()
        _add_labels(self.store, layer.digest, {LABEL_UNCOMPRESSED: diff_id})

    def _lease_existing(self, chain: str) -> None:
        if not self.lease:
            return
        with contextlib.suppress(CargoholdError):
            self.client.leases.add_resource(self.lease, Resource(f"snapshots/{self.name}",
                                                                 chain))

    def _apply(self, layer: Descriptor, diff_id: str, chain: str, parent: str,
               what: str) -> None:
        from cargohold.differ.apply import apply

        key = f"extract-{random_id()} {chain}"
        labels = {LABEL_SNAPSHOT_REF: chain}
        mounts = self.sn.prepare(key, parent, labels=labels)
        pkey = layer.digest
        self.progress.start(pkey, f"unpack {layer.digest.split(':', 1)[-1][:12]}", layer.size)
        try:
            with self.store.reader(layer.digest) as r:
                apply(layer, mounts, reader=r, expected_diff_id=diff_id, sync=True,
                      progress=lambda n: self.progress.advance(pkey, n))
            try:
                self.sn.commit(chain, key, labels=labels)
            except AlreadyExists:
                self.sn.remove(key)  # another namespace user committed the same chain
            self.applied += 1
        except BaseException as exc:
            self.progress.done(pkey, "failed")
            with contextlib.suppress(Exception):
                self.sn.remove(key)
            if isinstance(exc, CargoholdError) and not exc.message.startswith(what):
                exc.message = f"{what}: {exc.message}"
                exc.args = (exc.message,)
            raise
        self.progress.done(pkey)

    def close(self) -> None:
        self.sn.close()


class _ReadAhead:
    """Reads the next layer's blob into the page cache while the current one is applied."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def want(self, digest: str) -> None:
        t = threading.Thread(target=self._read, args=(digest,), daemon=True,
                             name=f"read ahead {digest[7:19]}")
        t.start()
        self._threads.append(t)

    def _read(self, digest: str) -> None:
        with contextlib.suppress(Exception), self.store.reader(digest) as r:
            fd = r.fileno()
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            # fadvise is a hint; reading makes sure (and costs no copy we keep).
            off = 0
            while not self._stop.is_set():
                chunk = os.pread(fd, 4 << 20, off)
                if not chunk:
                    break
                off += len(chunk)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)


def _add_labels(store: Store, digest: str, labels: dict[str, str]) -> None:
    cur = store.info(digest).labels
    new = {k: v for k, v in labels.items() if cur.get(k) != v}
    if new:
        store.update(Info(digest, 0, labels=new), [f"labels.{k}" for k in new])


def unpack_image(client: Client, name: str, *, snapshotter: str | None = None,
                 platform: Any = None, progress: Progress | None = None) -> str:
    """Unpack the image record ``name`` for ``platform`` (default: this host) under a fresh
    lease; returns the top chain ID. Used by mount and by ``hold images unpack``-like callers.
    """
    from cargohold.images.manifest import manifests
    from cargohold.images.platforms import Matcher
    from cargohold.metadata import images as records

    with client.db.view() as tx:
        img = records.get(tx, client.namespace, name)
    matcher = Matcher([platform] if platform is not None else None)
    found = manifests(client.content, img.target, matcher, f"image {name}")
    if not found:
        raise NotFound(f"image {name}: no manifest for platform {matcher.describe()}",
                       hint="check the platforms with 'hold images check'; choose one "
                            "with --platform")
    ctx = (contextlib.nullcontext(client.lease) if client.lease
           else client.leases.lease(expire=3600 * 10**9))
    with ctx as lease:
        from cargohold.metadata.content import NamespacedStore

        store = NamespacedStore(client.db, client.store, client.namespace, lease=lease)
        u = Unpacker(client, store, snapshotter=snapshotter, lease=lease, progress=progress)
        try:
            return u.unpack(found[0], what=f"image {name}")
        finally:
            u.close()

