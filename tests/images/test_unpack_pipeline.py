"""Unpack pipeline: layer n+1 decompresses while layer n is applied, within a memory cap,
its errors wait for its turn, and nothing (thread, stream, snapshot) is left behind.

Images are written straight into the content store (no peers needed); snapshots are real
overlayfs, so these run as root.
"""

from __future__ import annotations

import io
import json
import os
import threading

import pytest
from tests.differ.treeutil import bind, diff_id, gz, pipeline_threads, tar_bytes, wait_until
from tests.images.imagekit import merged_tree, tree, tree_diff

from cargohold.differ.api import LayerError
from cargohold.differ.apply import apply
from cargohold.differ.compression import PlainStream
from cargohold.errors import CargoholdError, IntegrityError
from cargohold.images import mediatypes as mt
from cargohold.images.manifest import chain_ids
from cargohold.images.pack import write_blob
from cargohold.images.progress import Progress
from cargohold.images.unpack import Unpacker
from cargohold.types import Descriptor

MIB = 1 << 20


@pytest.fixture(autouse=True)
def _root_and_nothing_left():
    """Set up before (so torn down after) the client: every thread and descriptor is gone."""
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mounts for the snapshots)")
    fds = sorted(os.listdir("/proc/self/fd"))
    yield
    assert pipeline_threads() == []
    assert sorted(os.listdir("/proc/self/fd")) == fds


def _layers(big: int = 6 * MIB) -> list[bytes]:
    return [tar_bytes(x) for x in (
        [("etc", "dir"), ("etc/a", "file", {"data": b"a"}), ("gone", "dir"),
         ("gone/x", "file"), ("bin", "dir"), ("bin/big", "file", {"data": os.urandom(big)})],
        [("etc/b", "file", {"data": b"b" * 5000}), (".wh.gone", "file"), ("lib", "dir"),
         ("lib/old", "file"), ("lib/blob", "file", {"data": os.urandom(big)})],
        [("etc/.wh.a", "file"), ("etc/c", "sym", {"target": "b"}), ("lib", "dir"),
         ("lib/.wh..wh..opq", "file"), ("lib/new", "file", {"data": b"n"}),
         ("bin/tool", "file", {"data": b"tool"}),
         ("bin/tool-link", "link", {"target": "bin/tool"})],
        [(f"srv/d{i // 50}/f{i}", "file", {"data": str(i).encode() * i}) for i in range(300)],
    )]


def _image(client, plains: list[bytes], *, damage: dict | None = None,
           ids: list[str] | None = None) -> tuple[Descriptor, list[Descriptor], list[str]]:
    """Store an OCI image of ``plains`` (gzip layers, ``damage[i]`` applied to blob i);
    return its manifest, layer descriptors and chain IDs.
    """
    store = client.content
    layers = []
    for i, plain in enumerate(plains):
        blob = gz(plain)
        if damage and i in damage:
            blob = damage[i](blob)
        layers.append(write_blob(store, blob, mt.OCI_LAYER_GZIP, {}))
    ids = ids or [diff_id(p) for p in plains]
    cfg = write_blob(store, json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": ids}}).encode(), mt.OCI_CONFIG, {})
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
           "config": {"mediaType": cfg.media_type, "digest": cfg.digest, "size": cfg.size},
           "layers": [{"mediaType": d.media_type, "digest": d.digest, "size": d.size}
                      for d in layers]}
    return write_blob(store, json.dumps(doc).encode(), mt.OCI_MANIFEST, {}), layers, \
        chain_ids(ids)


def _snapshots(client) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    client.snapshotter().walk(lambda i: out.append((i.name, i.kind.name)))
    return sorted(out)


@pytest.fixture
def started(monkeypatch):
    """Every PlainStream started, by layer digest, in order; also logged as events."""
    log: list[tuple[str, str]] = []
    streams: dict[str, list[PlainStream]] = {}
    real = PlainStream.start

    def start(self):
        if not self._started:
            log.append(("start", self.layer))
            streams.setdefault(self.layer, []).append(self)
        return real(self)
    monkeypatch.setattr(PlainStream, "start", start)
    return log, streams


def _on_commit(monkeypatch, u: Unpacker, after) -> None:
    real = u.sn.commit

    def commit(name, key, **kw):
        real(name, key, **kw)
        after(name)
    monkeypatch.setattr(u.sn, "commit", commit)


def test_tree_is_the_same_as_applying_layer_after_layer(client, tmp_path, started):
    plains = _layers()
    desc, _, chains = _image(client, plains)
    u = Unpacker(client, client.content)
    try:
        assert u.unpack(desc) == chains[-1]
    finally:
        u.close()
    assert (u.applied, u.early) == (4, 3)
    ref = tmp_path / "ref"
    ref.mkdir()
    for p in plains:  # the plain sequential path, real whiteouts in a directory
        apply(Descriptor(mt.OCI_LAYER_GZIP, "", 0), bind(ref), reader=io.BytesIO(gz(p)))
    merged = merged_tree(client, chains[-1])
    assert "lib/old" not in merged and "etc/a" not in merged and "gone" not in merged
    assert merged["bin/tool-link"][8] == "bin/tool" and merged["bin/big"][4] == 6 * MIB
    assert tree_diff(tree(str(ref)), merged) == []
    # and with no early start at all (another root, so nothing is shared)
    from tests.peers import open_client

    (tmp_path / "root2").mkdir()
    other = open_client(str(tmp_path / "root2"))
    try:
        v = Unpacker(other, other.content, prefetch=0)
        try:
            desc2, _, _ = _image(other, plains)
            assert v.unpack(desc2) == chains[-1] and (v.applied, v.early) == (4, 0)
        finally:
            v.close()
        assert tree_diff(merged_tree(other, chains[-1]), merged) == []
    finally:
        other.close()


def test_next_layer_starts_before_this_one_is_committed(client, started, monkeypatch):
    log, streams = started
    desc, layers, chains = _image(client, _layers())
    u = Unpacker(client, client.content)
    _on_commit(monkeypatch, u, lambda name: log.append(("commit", name)))
    try:
        u.unpack(desc)
    finally:
        u.close()
    for i in range(len(layers) - 1):
        assert log.index(("start", layers[i + 1].digest)) < log.index(("commit", chains[i]))
    assert [len(streams[d.digest]) for d in layers] == [1, 1, 1, 1]  # each one stream


def _flip(blob: bytes) -> bytes:
    b = bytearray(blob)
    b[12:40] = b"\xff" * 28  # inside the first deflate block: fails at once
    return bytes(b)


@pytest.mark.parametrize("how, error, says", [
    ("corrupt", LayerError, "reading the gzip stream failed"),
    ("truncated", LayerError, "truncated gzip stream"),
    ("diff_id", IntegrityError, "does not match the expected"),
])
def test_bad_layer_2_of_3_fails_at_its_turn_and_keeps_layer_1(client, started, monkeypatch,
                                                               how, error, says):
    _, streams = started
    plains = _layers()[:3]
    damage, ids = None, None
    if how == "corrupt":
        damage = {1: _flip}
    elif how == "truncated":
        damage = {1: lambda b: b[:len(b) // 2]}
    else:
        ids = [diff_id(p) for p in plains]
        ids[1] = "sha256:" + "1" * 64
    desc, layers, chains = _image(client, plains, damage=damage, ids=ids)
    u = Unpacker(client, client.content)
    seen: list[str] = []

    def after(name: str) -> None:
        if name == chains[0]:
            # layer 2's worker has already read all of it (and met the damage, if any)
            # while layer 1 is being committed; layer 1 must not care
            [s] = streams[layers[1].digest]
            wait_until(lambda: not s.alive, "layer 2's worker to finish")
        seen.append(name)
    _on_commit(monkeypatch, u, after)
    try:
        with pytest.raises(error) as ei:
            u.unpack(desc, what="image bad:1")
    finally:
        u.close()
    msg = str(ei.value)
    assert msg.startswith("image bad:1: layer 2/3: ") and layers[1].digest in msg and says in msg
    assert seen == [chains[0]] and u.applied == 1
    assert _snapshots(client) == [(chains[0], "COMMITTED")]  # no layer 2 or 3, no extract-*
    [s3] = streams[layers[2].digest]  # started as layer 2's turn came, then dropped
    assert not s3.alive and s3.buffered == 0


def test_layer_found_after_its_early_start_drops_the_stream(client, started, monkeypatch):
    _, streams = started
    desc, layers, chains = _image(client, _layers()[:3])

    class Seen(Progress):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[tuple[str, str]] = []

        def _on_start(self, item) -> None:
            self.events.append(("start", item.key))

        def _on_done(self, item, status: str) -> None:
            self.events.append((status, item.key))

    progress = Seen()
    u = Unpacker(client, client.content, progress=progress)

    def another_process(name: str) -> None:
        if name == chains[0]:  # someone else unpacks layer 2 once layer 1 is committed
            sn = client.snapshotter()
            sn.prepare("other", chains[0])
            sn.commit(chains[1], "other")
    _on_commit(monkeypatch, u, another_process)
    real_exists, asked = u.exists, []

    def exists(chain: str) -> bool:
        asked.append(chain)
        if chain == chains[1] and asked.count(chain) == 2:
            return False  # the look before the lock misses it; the one under the lock sees it
        return real_exists(chain)
    monkeypatch.setattr(u, "exists", exists)
    try:
        assert u.unpack(desc) == chains[-1]
    finally:
        u.close()
    assert asked.count(chains[1]) == 3
    [s] = streams[layers[1].digest]
    assert not s.alive and s.buffered == 0  # started early, then stopped and dropped
    assert (u.applied, u.early) == (2, 0)  # layers 1 and 3; 3 had nobody to overlap
    assert progress.events == [("start", layers[0].digest), ("done", layers[0].digest),
                               ("start", layers[2].digest), ("done", layers[2].digest)]


def test_the_prefetch_cap_holds_the_next_layer(client, started, monkeypatch):
    _, streams = started
    plains = _layers(big=12 * MIB)
    desc, layers, chains = _image(client, plains)
    cap = 2 * MIB
    u = Unpacker(client, client.content, prefetch=cap)

    def full(name: str) -> None:
        if name == chains[0]:
            [s] = streams[layers[1].digest]
            wait_until(lambda: s.buffered == cap, "layer 2's buffer to fill")
            assert s.alive and s.high_water == cap  # it waits, with 10 MiB still to go
    _on_commit(monkeypatch, u, full)
    try:
        assert u.unpack(desc) == chains[-1]
    finally:
        u.close()
    for d in layers[1:]:
        [s] = streams[d.digest]
        assert s.high_water <= cap
    assert (u.applied, u.early) == (4, 3)


def test_a_failure_leaves_no_thread_behind_even_mid_prefetch(client, started, monkeypatch):
    _, streams = started
    desc, layers, chains = _image(client, _layers(big=12 * MIB))
    u = Unpacker(client, client.content, prefetch=MIB)

    def boom(name: str) -> None:
        [s] = streams[layers[1].digest]
        wait_until(lambda: s.buffered == MIB, "layer 2's buffer to fill")
        raise CargoholdError("injected: the metadata store went away")
    _on_commit(monkeypatch, u, boom)
    try:
        with pytest.raises(CargoholdError, match="layer 1/4: injected"):
            u.unpack(desc)
    finally:
        u.close()
    [s] = streams[layers[1].digest]
    assert not s.alive  # the waiting worker was stopped; the fixture checks every thread


def test_no_thread_for_the_early_start_means_it_starts_at_its_turn(client, monkeypatch):
    desc, layers, chains = _image(client, _layers())
    real, refused = threading.Thread.start, []

    def start(self):
        if self.name == f"unpack {layers[1].digest[:19]}" and not refused:
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        return real(self)
    monkeypatch.setattr(threading.Thread, "start", start)
    u = Unpacker(client, client.content)
    try:
        assert u.unpack(desc) == chains[-1]
    finally:
        u.close()
    assert refused and (u.applied, u.early) == (4, 2)  # layer 2 started at its turn instead
