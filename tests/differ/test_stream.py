"""PlainStream's bounded buffer, early start and release; apply(stream=)."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest
from treeutil import MEDIA, bind, desc, diff_id, gz, tar_bytes

from cargohold.differ.api import MEDIA_TYPE_TAR, Compression, LayerError
from cargohold.differ.apply import apply
from cargohold.differ.compression import PlainStream
from cargohold.errors import InvalidArgument

KIB = 1 << 10


def _ours() -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name.startswith(("unpack ", "writeback "))]


def _until(cond, what: str, limit: float = 20.0) -> None:
    """Wait for a state (not a duration): fail after ``limit`` seconds without it."""
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture(autouse=True)
def no_threads_left():
    yield
    assert _ours() == []


def _plain_stream(data: bytes, *, buffer: int, chunk: int = 64 * KIB):
    read: list[int] = []
    s = PlainStream(io.BytesIO(data), Compression.NONE, "sha256:" + "a" * 64,
                    progress=read.append, chunk=chunk, buffer=buffer)
    return s, read


def test_a_full_buffer_holds_the_worker():
    data = os.urandom(4 << 20)
    s, read = _plain_stream(data, buffer=256 * KIB)
    with s:
        _until(lambda: s.buffered == 256 * KIB, "a full buffer")
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
    _until(lambda: s.buffered == 128 * KIB, "a full buffer")
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
        _until(lambda: not s.alive, "the worker to meet the corruption")
        assert s.next_chunk()  # what came before the damage is still delivered first
        with pytest.raises(LayerError, match="sha256:b{64}: reading the gzip stream failed"):
            s.drain()


def test_resize_lowers_the_cap_once_the_consumer_catches_up():
    data = os.urandom(4 << 20)
    s, _ = _plain_stream(data, buffer=1 << 20)
    with s:
        _until(lambda: s.buffered == 1 << 20, "a full buffer")
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
    _until(lambda: s.buffered or not s.alive, "early chunks")
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
