"""LocalStore: the shared conformance suite plus what only the local backend promises."""

from __future__ import annotations

import json
import os
import stat

import pytest

from cargohold.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from cargohold.store.api import Info, Store, walk_all
from cargohold.store.local import LocalStore
from cargohold.store.testing import ALL_CHECKS, digest_of, ingest


@pytest.fixture
def make(tmp_path):
    n = [0]

    def _make() -> LocalStore:
        n[0] += 1
        return LocalStore(str(tmp_path / f"content{n[0]}"))

    return _make


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_conformance(check, make):
    check(make)


def test_is_a_store(make):
    assert isinstance(make(), Store)


def test_layout_and_modes(make):
    s = make()
    d = ingest(s, "x", b"payload", labels={"k": "v"})
    path = s.blob_path(d)
    assert path == os.path.join(s.root, "blobs", "sha256", d.split(":")[1])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    with open(os.path.join(s.root, "labels", "sha256", d.split(":")[1])) as f:
        assert json.load(f) == {"k": "v"}
    assert os.listdir(os.path.join(s.root, "ingest")) == []
    s.delete(d)
    assert not os.path.exists(os.path.join(s.root, "labels", "sha256", d.split(":")[1]))


def test_ingest_files(make):
    s = make()
    w = s.writer("docker.io/library/alpine:latest", total=9, expected=digest_of(b"123456789"))
    w.write(b"1234")
    w.close()
    (d,) = os.listdir(os.path.join(s.root, "ingest"))
    p = os.path.join(s.root, "ingest", d)
    assert sorted(os.listdir(p)) == ["data", "expected", "lock", "ref", "startedat", "total",
                                     "updatedat"]
    assert open(os.path.join(p, "ref")).read() == "docker.io/library/alpine:latest"
    assert open(os.path.join(p, "total")).read() == "9"
    assert int(open(os.path.join(p, "startedat")).read()) > 0
    st = s.status("docker.io/library/alpine:latest")
    assert (st.offset, st.total, st.expected) == (4, 9, digest_of(b"123456789"))
    assert s.ingest_refs() == ["docker.io/library/alpine:latest"]


def test_resume_total_conflict(make):
    s = make()
    s.writer("t", total=10).close()
    with pytest.raises(Exception, match="total 11 differs"):
        s.writer("t", total=11)
    s.writer("t").close()  # lock was released by the failed open


def test_broken_ingest_is_recreated_truncated(make):
    s = make()
    w = s.writer("broken")
    w.write(b"stale bytes that must not survive")
    w.close()
    p = os.path.join(s.root, "ingest", os.listdir(os.path.join(s.root, "ingest"))[0])
    os.unlink(os.path.join(p, "startedat"))  # unreadable status
    w = s.writer("broken")
    assert w.status().offset == 0
    w.write(b"new")
    assert w.commit(expected=digest_of(b"new")) == digest_of(b"new")


def test_holder_shown_while_open(make):
    s = make()
    w = s.writer("held")
    assert str(os.getpid()) in s.status("held").holder
    assert s.list_statuses(["ref==held"])[0].holder
    with pytest.raises(Unavailable, match="ingest held: locked by pid"):
        s.abort("held")
    w.close()
    assert s.status("held").holder == ""
    s.abort("held")


def test_delete_check(make):
    s = make()
    d = ingest(s, "c", b"conditional")
    seen = []
    s.delete(d, check=lambda dg: seen.append(dg) or False)
    assert seen == [d] and s.info(d).size == len(b"conditional")
    s.delete(d, check=lambda dg: True)
    with pytest.raises(NotFound, match=f"content digest {d}: not found"):
        s.info(d)


def test_commit_then_hook_failure_leaves_orphan_blob(make):
    s = make()
    w = s.writer("hook")
    w.write(b"hooked")

    def boom(digest, existed):
        raise RuntimeError("record failed")

    with pytest.raises(RuntimeError):
        w.commit(then=boom)
    assert s.info(digest_of(b"hooked")).size == 6  # committed; GC will judge it
    assert s.ingest_refs() == []


def test_walk_skips_junk(make):
    s = make()
    d = ingest(s, "j", b"real")
    junk = os.path.join(s.root, "blobs", "sha256")
    open(os.path.join(junk, "not-a-digest"), "w").close()
    open(os.path.join(junk, "A" * 64), "w").close()
    os.makedirs(os.path.join(s.root, "blobs", "md5"))
    assert [i.digest for i in walk_all(s)] == [d]


def test_bad_inputs(make):
    s = make()
    with pytest.raises(InvalidArgument):
        s.info("sha256:xyz")
    with pytest.raises(InvalidArgument):
        s.writer("r", expected="md5:00")
    with pytest.raises(InvalidArgument):
        s.update(Info(digest_of(b"a"), 0, labels={"": "x"}), ["labels"])


def test_expected_then_exists_removes_ingest(make):
    s = make()
    data = b"dup"
    w = s.writer("a")
    w.write(data)
    w.close()
    ingest(s, "b", data)
    w = s.writer("a")
    with pytest.raises(AlreadyExists):
        w.commit(expected=digest_of(data))
    assert s.ingest_refs() == []
    assert len(os.listdir(os.path.join(s.root, "blobs", "sha256"))) == 1
