"""PlainStream's bounded buffer, early start and release; apply(stream=) and its durability."""

from __future__ import annotations

import errno
import io
import os
import threading

import pytest
from tests.differ.treeutil import pipeline_threads, wait_until
from treeutil import MEDIA, bind, desc, diff_id, gz, tar_bytes

import cargohold.differ.apply as apply_mod
from cargohold.differ.api import MEDIA_TYPE_TAR, ApplyError, Compression, LayerError
from cargohold.differ.apply import apply
from cargohold.differ.compression import PlainStream
from cargohold.errors import InvalidArgument

KIB = 1 << 10


@pytest.fixture(autouse=True)
def no_threads_left():
    yield
    assert pipeline_threads() == []


def _plain_stream(data: bytes, *, buffer: int, chunk: int = 64 * KIB):
    read: list[int] = []
    s = PlainStream(io.BytesIO(data), Compression.NONE, "sha256:" + "a" * 64,
                    progress=read.append, chunk=chunk, buffer=buffer)
    return s, read


def test_a_full_buffer_holds_the_worker():
    data = os.urandom(4 << 20)
    s, read = _plain_stream(data, buffer=256 * KIB)
    with s:
        wait_until(lambda: s.buffered == 256 * KIB, "a full buffer")
        # the worker holds at most the chunk it could not queue: it stopped reading
        assert s.alive and sum(read) <= 256 * KIB + 2 * 64 * KIB < len(data)
        got = bytearray()
        while c := s.next_chunk():
            got += c
        assert bytes(got) == data and s.digest == diff_id(data)
        assert s.high_water == 256 * KIB


def test_a_cap_below_one_chunk_still_makes_progress():
    data = os.urandom(1 << 20)
    s, _ = _plain_stream(data, buffer=1)
    with s:
        assert s.drain() == len(data)
    assert s.digest == diff_id(data) and s.high_water == 64 * KIB


def test_close_while_full_stops_the_worker_and_drops_the_buffer():
    s, _ = _plain_stream(os.urandom(2 << 20), buffer=128 * KIB)
    s.start()
    wait_until(lambda: s.buffered == 128 * KIB, "a full buffer")
    s.close()
    assert not s.alive and s.buffered == 0
    s.close()  # a repeat is fine
    s.start()  # and starting a closed stream does nothing
    assert not s.alive
    with pytest.raises(RuntimeError, match="closed"):
        s.next_chunk()


def test_an_error_waits_behind_the_chunks_before_it():
    plain = os.urandom(3 << 20)
    blob = bytearray(gz(plain))
    blob[len(blob) // 2:len(blob) // 2 + 64] = b"\xff" * 64
    s = PlainStream(io.BytesIO(bytes(blob)), Compression.GZIP, "sha256:" + "b" * 64,
                    buffer=64 << 20)
    with s:
        wait_until(lambda: not s.alive, "the worker to meet the corruption")
        assert s.next_chunk()  # what came before the damage is still delivered first
        with pytest.raises(LayerError, match="sha256:b{64}: reading the gzip stream failed"):
            s.drain()


def test_resize_lowers_the_cap_once_the_consumer_catches_up():
    data = os.urandom(4 << 20)
    s, _ = _plain_stream(data, buffer=1 << 20)
    with s:
        wait_until(lambda: s.buffered == 1 << 20, "a full buffer")
        s.resize(128 * KIB)
        s.drain()
    assert s.digest == diff_id(data) and s.high_water == 1 << 20


SIMPLE = [("d", "dir"), ("d/a", "file", {"data": os.urandom(3 << 20)}),
          ("d/b", "file", {"data": b"beta"}), ("s", "sym", {"target": "d/a"})]


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_apply_consumes_a_stream_started_earlier(tmp_path, kind):
    plain = tar_bytes(SIMPLE)
    media_type, comp = MEDIA[kind]
    blob = comp(plain)
    d = desc(blob, media_type)
    s = PlainStream(io.BytesIO(blob), Compression(kind), d.digest, buffer=512 * KIB).start()
    wait_until(lambda: s.buffered or not s.alive, "early chunks")
    out = apply(d, bind(tmp_path), stream=s, expected_diff_id=diff_id(plain), sync=True)
    assert (out.media_type, out.digest, out.size) == (MEDIA_TYPE_TAR, diff_id(plain), len(plain))
    assert (tmp_path / "d/a").read_bytes() == SIMPLE[1][2]["data"]
    assert not s.alive and s.high_water <= 1 << 20


def test_apply_closes_a_stream_it_refuses(tmp_path):
    blob = gz(tar_bytes(SIMPLE))
    other = PlainStream(io.BytesIO(blob), Compression.GZIP, "sha256:" + "c" * 64).start()
    with pytest.raises(InvalidArgument, match="the stream given is of layer sha256:c"):
        apply(desc(blob), bind(tmp_path), stream=other)
    assert not other.alive
    both = PlainStream(io.BytesIO(blob), Compression.GZIP, desc(blob).digest)
    with pytest.raises(InvalidArgument, match="exactly one of reader= and stream="):
        apply(desc(blob), bind(tmp_path), reader=io.BytesIO(blob), stream=both)
    with pytest.raises(InvalidArgument, match="exactly one of reader= and stream="):
        apply(desc(blob), bind(tmp_path))


class _Gated(io.BytesIO):
    """A blob reader that stops after its first read until ``gate`` opens."""

    def __init__(self, data: bytes, gate: threading.Event) -> None:
        super().__init__(data)
        self.gate = gate
        self.reads = 0

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        if self.reads == 2 and not self.gate.wait(20):
            raise OSError(errno.ETIMEDOUT, "gate never opened")
        return super().read(n)


def _record_syncfs(monkeypatch, fail: int = 0, on_background=None):
    calls: list[str] = []
    real = apply_mod._syncfs

    def syncfs(fd: int) -> int:
        name = threading.current_thread().name
        calls.append(name)
        if name.startswith("writeback ") and on_background is not None:
            on_background()
        if fail and not name.startswith("writeback "):
            return fail
        return real(fd)
    monkeypatch.setattr(apply_mod, "_syncfs", syncfs)
    monkeypatch.setattr(apply_mod, "WRITEBACK_INTERVAL", 0.01)
    return calls


def test_sync_writes_back_while_the_layer_is_written(tmp_path, monkeypatch):
    gate = threading.Event()
    calls = _record_syncfs(monkeypatch, on_background=gate.set)
    blob = gz(tar_bytes(SIMPLE))
    # the layer cannot finish before a background flush ran: the reader waits for one
    apply(desc(blob), bind(tmp_path), reader=_Gated(blob, gate), sync=True)
    assert calls[0].startswith("writeback sha256:")
    assert calls[-1] == threading.current_thread().name  # the final flush, before returning
    assert (tmp_path / "d/b").read_bytes() == b"beta"


def test_a_failed_final_flush_fails_the_apply(tmp_path, monkeypatch):
    calls = _record_syncfs(monkeypatch, fail=errno.EIO)
    blob = gz(tar_bytes(SIMPLE))
    with pytest.raises(ApplyError, match="syncfs .*Input/output error"):
        apply(desc(blob), bind(tmp_path), reader=io.BytesIO(blob), sync=True)
    assert calls[-1] == threading.current_thread().name


def test_no_sync_no_flush(tmp_path, monkeypatch):
    calls = _record_syncfs(monkeypatch)
    blob = gz(tar_bytes(SIMPLE))
    apply(desc(blob), bind(tmp_path), reader=io.BytesIO(blob))
    assert calls == []
