"""Unpack: an image manifest's layer chain becomes committed snapshots named by chain ID.

For each layer ``n`` (chain IDs from the config's ``rootfs.diff_ids``):

1. a snapshot named ``chainID[n]`` already exists → skip it (an earlier import, another
   image sharing the base layers);
2. otherwise take the cross-process lock of that chain ID (a byte range of
   ``<root>/locks/unpack.lock``, so no per-layer lock files pile up) and look again:
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

Pipeline: just before layer ``n`` is applied, when ``chainID[n+1]`` does not exist yet, layer
``n+1``'s blob is opened and its :class:`~cargohold.differ.compression.PlainStream` started,
so it reads, decompresses and hashes on its own thread while layer ``n`` is extracted, synced
and committed (one layer ahead, no more). At most ``prefetch`` plain bytes wait for their turn
(the worker then waits; never more); when the turn comes the cap drops to the differ's usual
buffer and ``apply(stream=...)`` consumes the running stream. Layer ``n+1``'s snapshot is
still prepared only on committed ``n``, and nothing of it is written before its turn: what
runs early is read-only. An error in ``n+1``'s data (corrupt, truncated, wrong diffID) waits
in its stream and is reported against ``n+1`` at its turn; layer ``n`` never sees it. When the
turn finds ``chainID[n+1]`` made meanwhile by another process, or an earlier layer fails, the
stream is stopped and dropped: every thread and descriptor is released on every path. The
sync of layer ``n`` itself overlaps with its extraction (the differ writes back in the
background), so its commit waits only for the last of its data.

Everything created runs inside the caller's lease. A failure (Ctrl-C and SIGTERM included)
removes the extract snapshot before it propagates; a crash (kill -9) leaves it, active and
leased, and since internal leases name their owner process (:mod:`cargohold.leases.owner`), GC
removes it as soon as that process is gone, ``hold fsck`` reports it as an interrupted unpack,
and a later unpack of the same image simply prepares a fresh one (extract keys are unique)
and reuses the layers the dead one committed. Use an :class:`Unpacker` as a context manager.

Progress: each layer applied is one item, keyed by its digest, that advances by the plain
(uncompressed) bytes the extractor takes from the stream — at most one chunk ahead of the files
written — so it ends when the extraction does. (Compressed bytes read are no measure of that:
the decompressor reads ahead by its input buffer, and a few MiB of well-compressed gzip are
gigabytes of files.) The item's total is the plain size where that is known before the end:
a plain tar's blob is its plain stream, so its size is the total. A compressed layer's plain
size is not known until its end (gzip records it modulo 4 GiB, for its last member only;
zstd frames need not carry it), so its item has no total: it counts the bytes extracted, and
its label gives the compressed size it comes from, ``unpack 1a2b3c4d5e6f (88.1 MB gzip)``.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from cargohold import _fsutil
from cargohold.differ.api import Compression, compression_for
from cargohold.differ.compression import BUFFER, PlainStream
from cargohold.errors import (
    AlreadyExists,
    CargoholdError,
    InvalidArgument,
    MalformedData,
    NotFound,
)
from cargohold.images import mediatypes as mt
from cargohold.images.manifest import chain_ids, diff_ids, parse_manifest, snapshot_gc_label
from cargohold.images.progress import Progress, human_bytes
from cargohold.leases.manager import random_id
from cargohold.metadata.leases import Resource
from cargohold.store.api import Info, Store
from cargohold.types import LABEL_SNAPSHOT_REF, LABEL_UNCOMPRESSED, Descriptor

if TYPE_CHECKING:
    from collections.abc import Callable

    from cargohold.client import Client

#: plain bytes of the next layer decompressed ahead while the current one is applied
PREFETCH = 64 << 20


class Unpacker:
    """Unpacks manifests onto one snapshotter of ``client``'s namespace.

    ``store`` is the (leased) content store to read blobs from; ``lease`` receives the
    snapshots (created here, or found and reused), so GC cannot take them before the caller
    writes the image record. ``prefetch`` caps the plain bytes of the next layer decompressed
    while the current one is applied (0: no early start).
    """

    def __init__(self, client: Client, store: Store, *, snapshotter: str | None = None,
                 lease: str | None = None, progress: Progress | None = None,
                 prefetch: int = PREFETCH) -> None:
        from cargohold.metadata.snapshotter import NamespacedSnapshotter

        self.client = client
        self.store = store
        self.name = snapshotter or client.config.snapshotter
        self.lease = lease
        self.progress = progress or Progress()
        self.prefetch = prefetch
        self.sn = NamespacedSnapshotter(client.db, client.backend_snapshotter(self.name),
                                        client.namespace, self.name, lease=lease)
        self.locks = _fsutil.RangeLocks(os.path.join(
            _fsutil.makedirs(os.path.join(client.root, "locks")), "unpack.lock"), "layer")
        self.applied = 0  # layers applied by this unpacker (the rest were found)
        self.early = 0  # of those, layers whose stream started while the one before applied

    def __enter__(self) -> Unpacker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exists(self, chain: str) -> bool:
        try:
            self.sn.stat(chain)
            return True
        except NotFound:
            return False

    def _claim(self, chain: str) -> bool:
        """Whether snapshot ``chain`` exists, and if so hold it in this unpacker's lease.

        It is looked at again once leased: until then only someone else's lease (perhaps of
        a dead process) or nothing held it, and GC may have taken it in between. Adding the
        lease bumps the metadata epoch, so a collection marked before it sweeps nothing.
        """
        if not self.exists(chain):
            return False
        if not self.lease:
            return True
        self.client.leases.add_resource(self.lease, Resource(f"snapshots/{self.name}", chain))
        return self.exists(chain)

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
            raise MalformedData(f"{what}: config {m.config.digest} lists {len(ids)} diff IDs "
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
        early: _Early | None = None
        for i, layer in enumerate(layers):
            nxt = (layers[i + 1], chains[i + 1]) if i + 1 < len(layers) else None
            early = self._layer(layer, ids[i], chains[i], chains[i - 1] if i else "",
                                f"{what}: layer {i + 1}/{len(layers)}", early, nxt)
        _add_labels(self.store, m.config.digest, snapshot_gc_label(self.name, chains[-1]))
        return chains[-1]

    def _layer(self, layer: Descriptor, diff_id: str, chain: str, parent: str, what: str,
               early: _Early | None, nxt: tuple[Descriptor, str] | None) -> _Early | None:
        """Unpack one layer (from ``early`` when its stream was started, which this closes);
        return the next layer's stream when it started one, which the caller then owns.
        """
        ahead: _Early | None = None
        try:
            if not self._claim(chain):
                with self.locks.hold(chain):
                    # A concurrent unpack may have finished it while we waited.
                    if not self._claim(chain):
                        if nxt is not None and self.prefetch > 0 and not self.exists(nxt[1]):
                            ahead = _Early.start(self.store, nxt[0], self.prefetch)
                        self._apply(layer, diff_id, chain, parent, what, early)
            _add_labels(self.store, layer.digest, {LABEL_UNCOMPRESSED: diff_id})
        except BaseException:
            if ahead is not None:
                ahead.close()
            raise
        finally:
            if early is not None:
                early.close()  # consumed by apply, or dropped: the chain was found
        return ahead

    def _apply(self, layer: Descriptor, diff_id: str, chain: str, parent: str,
               what: str, early: _Early | None) -> None:
        from cargohold.differ.apply import apply

        key = f"extract-{random_id()} {chain}"
        labels = {LABEL_SNAPSHOT_REF: chain}
        mounts = self.sn.prepare(key, parent, labels=labels)
        pkey = layer.digest

        def report(n: int) -> None:
            self.progress.advance(pkey, n)
        try:
            compression = compression_for(layer.media_type)
            self._start_progress(pkey, layer, compression)
            if early is not None:
                early.claim(report)
                apply(layer, mounts, stream=early.stream, expected_diff_id=diff_id, sync=True)
            else:
                with self.store.reader(layer.digest) as r:
                    stream = _CountedStream(r, compression, layer.digest)
                    stream.report = report
                    apply(layer, mounts, stream=stream, expected_diff_id=diff_id, sync=True)
            try:
                self.sn.commit(chain, key, labels=labels)
            except AlreadyExists:
                self.sn.remove(key)  # another namespace user committed the same chain
            self.applied += 1
            self.early += early is not None
        except BaseException as exc:
            self.progress.done(pkey, "failed")
            try:
                self.sn.remove(key)
            except Exception as rm_exc:  # noqa: BLE001 - never instead of the layer's error
                # Not fatal: the snapshot is active and held only by this run's lease, so
                # the collection after a failed import (or the next 'hold gc') removes it.
                exc.add_note(f"extract snapshot {key} was left behind: {rm_exc}")
            if isinstance(exc, CargoholdError) and not exc.message.startswith(what):
                exc.message = f"{what}: {exc.message}"
                exc.args = (exc.message,)
            raise
        self.progress.done(pkey)

    def _start_progress(self, key: str, layer: Descriptor, compression: Compression) -> None:
        """Start the layer's item: the plain size is its total only for a plain tar (see the
        module docstring).
        """
        short = layer.digest.split(":", 1)[-1][:12]
        if compression is Compression.NONE:
            self.progress.start(key, f"unpack {short}", layer.size)
        else:
            self.progress.start(key, f"unpack {short} ({human_bytes(layer.size)} "
                                     f"{compression.value})")

    def close(self) -> None:
        """Release the snapshotter view; closing twice is fine (locks are per hold)."""
        self.sn.close()


class _CountedStream(PlainStream):
    """A :class:`PlainStream` that reports each plain chunk as the extractor takes it.

    ``report``, once set (at the layer's turn), receives the size of every chunk handed out,
    the ones the differ drains after the end-of-archive marker included, so a finished layer
    has reported exactly its plain size. Chunks decompressed ahead are reported only when
    taken: a stream dropped before its turn reports nothing.
    """

    report: Callable[[int], None] | None = None

    def next_chunk(self) -> bytes:
        chunk = super().next_chunk()
        if chunk and self.report is not None:
            self.report(len(chunk))
        return chunk


class _Early:
    """A layer's blob reader and its :class:`PlainStream`, started before the layer's turn.

    Progress is reported from :meth:`claim` (the layer's turn) on, as the extractor takes
    the plain bytes. :meth:`close` stops the stream and closes the reader.
    """

    def __init__(self, reader: Any, layer: Descriptor, prefetch: int) -> None:
        self.reader = reader
        self.stream = _CountedStream(reader, compression_for(layer.media_type), layer.digest,
                                     buffer=prefetch)

    @classmethod
    def start(cls, store: Store, layer: Descriptor, prefetch: int) -> _Early | None:
        """Open ``layer``'s blob and start decompressing it into at most ``prefetch`` bytes.

        Returns None when that cannot start (a missing blob, say): the layer's turn opens it
        again and reports the problem against the right layer.
        """
        try:
            reader = store.reader(layer.digest)
        except (CargoholdError, OSError):
            return None
        try:
            early = cls(reader, layer, prefetch)
        except BaseException as exc:
            reader.close()
            if isinstance(exc, CargoholdError):
                return None
            raise
        try:
            early.stream.start()
        except BaseException as exc:
            early.close()
            if isinstance(exc, RuntimeError):  # no thread to spare: it starts at its turn
                return None
            raise
        return early

    def claim(self, report: Callable[[int], None]) -> None:
        """The layer's turn: report progress from now on, and buffer only the usual amount."""
        self.stream.resize(min(self.stream.buffer, BUFFER))
        self.stream.report = report

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            self.reader.close()


def _add_labels(store: Store, digest: str, labels: dict[str, str]) -> None:
    cur = store.info(digest).labels
    new = {k: v for k, v in labels.items() if cur.get(k) != v}
    if new:
        store.update(Info(digest, 0, labels=new), [f"labels.{k}" for k in new])


def unpack_image(client: Client, name: str, *, snapshotter: str | None = None,
                 platform: Any = None, progress: Progress | None = None) -> str:
    """Unpack the image record ``name`` for ``platform`` (default: this host) under a fresh
    lease; returns the top chain ID. Used by ``hold images mount`` for images not unpacked yet.
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
           else client.leases.lease(expire=3600 * 10**9, purpose=f"unpack {name}"))
    with ctx as lease:
        from cargohold.metadata.content import NamespacedStore

        store = NamespacedStore(client.db, client.store, client.namespace, lease=lease)
        with Unpacker(client, store, snapshotter=snapshotter, lease=lease,
                      progress=progress) as u:
            return u.unpack(found[0], what=f"image {name}")

