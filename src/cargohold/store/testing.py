"""The blob store conformance suite: every :class:`~cargohold.store.api.Store` must pass it.

Each ``check_*(make)`` takes a factory returning a fresh, empty store and uses only the
protocol, so the same checks run against ``LocalStore`` and the namespaced metadata store.
Bind them in a test module with::

    @pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
    def test_store(check, tmp_path): check(lambda: MyStore(...))

A failing check raises AssertionError (or the store's own error) with a message that names
what differed.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable

from cargohold.errors import (
    AlreadyExists,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from cargohold.store.api import Info, Store, copy_into, walk_all

Make = Callable[[], Store]


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """``alg:hex`` of ``data``."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def ingest(store: Store, ref: str, data: bytes, **commit: object) -> str:
    """Write ``data`` under ``ref`` in a few chunks and commit; return the digest."""
    w = store.writer(ref)
    for i in range(0, len(data), 3000):
        w.write(data[i:i + 3000])
    return w.commit(**commit)  # type: ignore[arg-type]


def read_all(store: Store, digest: str) -> bytes:
    """The whole blob through ``reader``."""
    with store.reader(digest) as r:
        return r.read()


def _raises(exc: type[BaseException], fn: Callable[[], object]) -> BaseException:
    try:
        fn()
    except exc as e:
        return e
    raise AssertionError(f"expected {exc.__name__} from {fn}")


def _digests(store: Store, filters: list[str] | None = None) -> set[str]:
    return {i.digest for i in walk_all(store, filters or [])}


def _assert_invisible(store: Store, digest: str) -> None:
    _raises(NotFound, lambda: store.info(digest))
    _raises(NotFound, lambda: store.reader(digest))
    assert digest not in _digests(store), f"{digest} listed by walk"


# --- writing and committing ------------------------------------------------------------------

def check_write_commit_read(make: Make) -> None:
    s = make()
    data = os.urandom(100_000)
    d = ingest(s, "ref-1", data, size=len(data), expected=digest_of(data))
    assert d == digest_of(data)
    assert read_all(s, d) == data
    info = s.info(d)
    assert (info.digest, info.size) == (d, len(data))
    assert info.created_at > 0 and info.updated_at >= info.created_at
    _raises(NotFound, lambda: s.status("ref-1"))  # the ingest is gone after commit


def check_large_blob_across_buffers(make: Make) -> None:
    s = make()
    data = os.urandom(9 * (1 << 20) + 12345)
    w = s.writer("big")
    pos = 0
    for n in (1, 4095, 1 << 20, 5 << 20, 333, 3 << 20):
        w.write(data[pos:pos + n])
        pos += n
    w.write(memoryview(data)[pos:])
    assert w.digest() == digest_of(data)
    assert w.commit(len(data), digest_of(data)) == digest_of(data)
    assert read_all(s, digest_of(data)) == data


def check_caller_may_reuse_buffer(make: Make) -> None:
    s = make()
    buf = bytearray(300_000)
    parts = []
    w = s.writer("reuse")
    for i in range(20):
        buf[:] = bytes([i]) * len(buf)
        parts.append(bytes(buf))
        w.write(buf)
    buf[:] = b"\xff" * len(buf)  # scribbling after the last write must not matter
    data = b"".join(parts)
    assert w.commit(len(data), digest_of(data)) == digest_of(data)
    assert read_all(s, digest_of(data)) == data


def check_empty_blob(make: Make) -> None:
    s = make()
    d = s.writer("empty").commit(0, digest_of(b""))
    assert d == digest_of(b"")
    assert s.info(d).size == 0
    with s.reader(d) as r:
        assert r.size == 0 and r.read() == b"" and r.read_at(10, 0) == b""


def check_sha512(make: Make) -> None:
    s = make()
    data = b"sha512 content " * 1000
    d512 = digest_of(data, "sha512")
    w = s.writer("s512", expected=d512)
    w.write(data)
    assert w.commit(len(data), d512) == d512
    assert read_all(s, d512) == data and s.info(d512).size == len(data)
    # the algorithm of commit's ``expected`` wins, even for a writer opened without one
    w = s.writer("s512-late")
    w.write(data + b"!")
    assert w.commit(0, digest_of(data + b"!", "sha512")) == digest_of(data + b"!", "sha512")


def check_commit_existing(make: Make) -> None:
    s = make()
    data = b"same bytes twice"
    d = ingest(s, "first", data)
    e = _raises(AlreadyExists, lambda: ingest(s, "second", data))
    assert d in str(e), f"message {e} does not name {d}"
    assert [i.digest for i in walk_all(s)] == [d], "a second copy is listed"
    _raises(NotFound, lambda: s.status("second"))  # the duplicate ingest was removed
    calls: list[tuple[str, bool]] = []
    w = s.writer("third")
    w.write(data)
    assert w.commit(then=lambda dg, existed: calls.append((dg, existed))) == d
    assert calls == [(d, True)]
    calls.clear()
    other = b"new bytes"
    w = s.writer("fourth")
    w.write(other)
    w.commit(then=lambda dg, existed: calls.append((dg, existed)))
    assert calls == [(digest_of(other), False)]


def check_expected_fast_path(make: Make) -> None:
    s = make()
    d = ingest(s, "orig", b"known")
    _raises(AlreadyExists, lambda: s.writer("again", expected=d))
    _raises(NotFound, lambda: s.status("again"))
    assert _digests(s) == {d}


def check_resume_after_close(make: Make) -> None:
    s = make()
    data = os.urandom(3 * (1 << 20) + 7)
    cut = (1 << 20) + 3
    w = s.writer("resume", total=len(data))
    w.write(data[:cut])
    w.close()
    w.close()  # closing twice is fine
    assert s.status("resume").offset == cut
    assert s.status("resume").total == len(data)
    w = s.writer("resume", total=len(data))
    assert w.status().offset == cut
    w.write(data[cut:])
    assert w.commit(len(data), digest_of(data)) == digest_of(data)
    assert read_all(s, digest_of(data)) == data


def check_resume_with_copy_into(make: Make) -> None:
    s = make()
    data = os.urandom(500_000)
    w = s.writer("copy")
    w.write(data[:123_456])
    w.close()
    w = s.writer("copy")
    got = copy_into(w, io.BytesIO(data), size=len(data), expected=digest_of(data))
    assert got == digest_of(data)
    assert read_all(s, got) == data


def check_truncate_restart(make: Make) -> None:
    s = make()
    w = s.writer("trunc")
    w.write(b"garbage that must go" * 100)
    w.truncate(0)
    assert w.status().offset == 0
    w.write(b"good")
    assert w.commit(4, digest_of(b"good")) == digest_of(b"good")
    w = s.writer("trunc2")
    _raises(InvalidArgument, lambda: w.truncate(5))
    w.close()


def check_size_mismatch(make: Make) -> None:
    s = make()
    w = s.writer("short")
    w.write(b"1234567")
    e = _raises(IntegrityError, lambda: w.commit(10))
    assert "10" in str(e) and "7" in str(e), f"message {e!r} does not name both sizes"
    _assert_invisible(s, digest_of(b"1234567"))
    assert s.status("short").offset == 7, "the ingest must stay after a failed commit"
    w = s.writer("short")  # commit closed it; it can be reopened and fixed
    w.truncate(0)
    w.write(b"1234567890")
    assert w.commit(10) == digest_of(b"1234567890")


def check_digest_mismatch(make: Make) -> None:
    s = make()
    wrong = digest_of(b"something else")
    w = s.writer("bad")
    w.write(b"actual")
    e = _raises(IntegrityError, lambda: w.commit(0, wrong))
    assert wrong in str(e) and digest_of(b"actual") in str(e), f"message {e!r}"
    assert isinstance(e, FailedPrecondition)
    _assert_invisible(s, digest_of(b"actual"))
    _assert_invisible(s, wrong)
    assert s.status("bad").offset == 6
    s.abort("bad")


def check_second_writer_unavailable(make: Make) -> None:
    s = make()
    w = s.writer("busy")
    w.write(b"x")
    e = _raises(Unavailable, lambda: s.writer("busy"))
    assert str(os.getpid()) in str(e), f"message {e!r} does not name the holder"
    w.close()
    s.writer("busy").close()  # free again once closed


def check_writer_rejects_empty_ref(make: Make) -> None:
    _raises(InvalidArgument, lambda: make().writer(""))


def check_write_after_commit_fails(make: Make) -> None:
    s = make()
    w = s.writer("done")
    w.write(b"a")
    w.commit()
    _raises(FailedPrecondition, lambda: w.write(b"b"))


# --- labels, walk, delete -------------------------------------------------------------------

def check_labels(make: Make) -> None:
    s = make()
    d = ingest(s, "lab", b"labelled", labels={"a": "1", "b": "2"})
    assert s.info(d).labels == {"a": "1", "b": "2"}
    s.update(Info(d, 0, labels={"a": "x"}), ["labels.a"])
    assert s.info(d).labels == {"a": "x", "b": "2"}
    s.update(Info(d, 0, labels={}), ["labels.b"])  # absent in info = delete
    assert s.info(d).labels == {"a": "x"}
    got = s.update(Info(d, 0, labels={"c": "3"}), ["labels"])
    assert got.labels == {"c": "3"} and s.info(d).labels == {"c": "3"}
    _raises(InvalidArgument, lambda: s.update(Info(d, 0), ["size"]))
    missing = digest_of(b"not there")
    _raises(NotFound, lambda: s.update(Info(missing, 0, labels={"a": "1"}), ["labels"]))


def check_walk_filters(make: Make) -> None:
    s = make()
    d1 = ingest(s, "w1", b"one", labels={"kind": "config", "a.b": "dotted"})
    d2 = ingest(s, "w2", b"two two", labels={"kind": "layer"})
    d3 = ingest(s, "w3", b"three three three")
    assert _digests(s) == {d1, d2, d3}
    assert _digests(s, [f"digest=={d1}"]) == {d1}
    assert _digests(s, ["size==7"]) == {d2}
    assert _digests(s, ['labels."kind"==layer']) == {d2}
    assert _digests(s, ['labels."a.b"==dotted']) == {d1}
    assert _digests(s, ["labels.kind"]) == {d1, d2}
    assert _digests(s, [f"digest=={d1}", f"digest=={d3}"]) == {d1, d3}
    assert _digests(s, ["labels.kind==config,size==3"]) == {d1}
    assert _digests(s, ["labels.kind==config,size==4"]) == set()


def check_delete(make: Make) -> None:
    s = make()
    d = ingest(s, "del", b"to be deleted")
    keep = ingest(s, "keep", b"to be kept")
    s.delete(d)
    _assert_invisible(s, d)
    _raises(NotFound, lambda: s.delete(d))
    assert _digests(s) == {keep}
    assert ingest(s, "del-again", b"to be deleted") == d  # committable again
    assert s.info(d).labels == {}


# --- ingests -----------------------------------------------------------------------------

def check_list_statuses(make: Make) -> None:
    s = make()
    for ref in ("layer-1", "layer-2", "config-1"):
        w = s.writer(ref, total=100)
        w.write(ref.encode())
        w.close()
    assert {st.ref for st in s.list_statuses()} == {"layer-1", "layer-2", "config-1"}
    got = s.list_statuses(["ref==layer-1"])
    assert [(st.ref, st.offset, st.total) for st in got] == [("layer-1", 7, 100)]
    assert {st.ref for st in s.list_statuses(["ref~=^layer-"])} == {"layer-1", "layer-2"}
    assert {st.ref for st in s.list_statuses(["ref==config-1", "ref==layer-2"])} == {
        "config-1", "layer-2"}
    st = s.status("config-1")
    assert st.started_at > 0 and st.updated_at >= st.started_at and st.holder == ""


def check_abort(make: Make) -> None:
    s = make()
    w = s.writer("ab")
    w.write(b"partial")
    w.close()
    s.abort("ab")
    _raises(NotFound, lambda: s.status("ab"))
    _raises(NotFound, lambda: s.abort("ab"))
    assert s.list_statuses() == []
    w = s.writer("ab")  # a new ingest starts from zero
    assert w.status().offset == 0
    w.close()


def check_reader(make: Make) -> None:
    s = make()
    data = bytes(range(256)) * 40
    d = ingest(s, "rd", data)
    with s.reader(d) as r:
        assert r.size == len(data)
        assert r.read_at(10, 5) == data[5:15]
        assert r.read_at(100, len(data) - 4) == data[-4:]
        assert r.read(3) == data[:3]
        assert r.seek(1000) == 1000 and r.tell() == 1000
        assert r.read(24) == data[1000:1024]
        assert r.seek(-10, os.SEEK_END) == len(data) - 10
        b = bytearray(20)
        assert r.readinto(b) == 10 and bytes(b[:10]) == data[-10:]
        assert isinstance(r.fileno(), int)
    e = _raises(NotFound, lambda: s.reader(digest_of(b"nope")))
    assert digest_of(b"nope") in str(e)


ALL_CHECKS: list[Callable[[Make], None]] = [
    check_write_commit_read,
    check_large_blob_across_buffers,
    check_caller_may_reuse_buffer,
    check_empty_blob,
    check_sha512,
    check_commit_existing,
    check_expected_fast_path,
    check_resume_after_close,
    check_resume_with_copy_into,
    check_truncate_restart,
    check_size_mismatch,
    check_digest_mismatch,
    check_second_writer_unavailable,
    check_writer_rejects_empty_ref,
    check_write_after_commit_fails,
    check_labels,
    check_walk_filters,
    check_delete,
    check_list_statuses,
    check_abort,
    check_reader,
]
