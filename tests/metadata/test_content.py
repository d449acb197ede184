"""The namespaced content store: isolation, sharing without a second copy, leases, ingests."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from cargohold.errors import AlreadyExists, IntegrityError, NotFound
from cargohold.metadata import leases as lease_records
from cargohold.metadata.content import NamespacedStore
from cargohold.metadata.db import open_db
from cargohold.store.api import copy_into
from cargohold.store.local import LocalStore


def dg(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def parts(root):
    db = open_db(root)
    store = LocalStore(os.path.join(root, "content"))
    yield db, store
    db.close()


def ns(parts, name, lease=None):
    db, store = parts
    return NamespacedStore(db, store, name, lease=lease)


def put(s, data, ref="r"):
    w = s.writer(ref)
    return copy_into(w, io.BytesIO(data))


def test_a_namespace_sees_only_what_it_committed(parts):
    a, b = ns(parts, "a"), ns(parts, "b")
    d = put(a, b"only in a")
    assert a.info(d).size == 9
    with pytest.raises(NotFound, match="not found"):
        b.info(d)
    with pytest.raises(NotFound):
        b.reader(d)
    seen = []
    b.walk(seen.append)
    assert seen == []


def test_sharing_needs_no_bytes_and_no_second_copy(parts):
    a, b = ns(parts, "a"), ns(parts, "b")
    data = b"shared blob" * 1000
    d = put(a, data)
    w = b.writer("claim", expected=d)
    assert w.commit(len(data), d) == d
    assert b.info(d).size == len(data)
    _db, store = parts
    assert os.listdir(os.path.join(store.root, "blobs", "sha256")) == [d.split(":")[1]]
    # Deleting in one namespace leaves the other's view intact.
    a.delete(d)
    with pytest.raises(NotFound):
        a.info(d)
    with b.reader(d) as r:
        assert r.read() == data


def test_expected_digest_already_in_namespace_is_already_exists(parts):
    a = ns(parts, "a")
    d = put(a, b"x")
    with pytest.raises(AlreadyExists):
        a.writer("again", expected=d)


def test_commit_of_same_bytes_twice_in_a_namespace(parts):
    a = ns(parts, "a")
    put(a, b"twice", "r1")
    with pytest.raises(AlreadyExists):
        put(a, b"twice", "r2")
    assert a.list_statuses() == []


def test_wrong_digest_names_both_and_shows_nothing(parts):
    a = ns(parts, "a")
    w = a.writer("bad")
    w.write(b"abc")
    wrong = dg(b"xyz")
    with pytest.raises(IntegrityError) as ei:
        w.commit(3, wrong)
    assert wrong in str(ei.value) and dg(b"abc") in str(ei.value)
    assert "a/bad" not in str(ei.value)
    with pytest.raises(NotFound):
        a.info(dg(b"abc"))


def test_ingest_visible_with_offset_then_resume(parts):
    a = ns(parts, "a")
    w = a.writer("big", total=6)
    w.write(b"abc")
    w.close()
    [st] = a.list_statuses()
    assert (st.ref, st.offset, st.total) == ("big", 3, 6)
    w = a.writer("big", total=6)
    assert w.status().offset == 3
    w.write(b"def")
    assert w.commit(6, dg(b"abcdef")) == dg(b"abcdef")
    assert a.list_statuses() == []


def test_lease_collects_ingest_then_content(parts):
    db, _ = parts
    with db.update() as tx:
        lease_records.create(tx, "a", "L")
    a = ns(parts, "a", lease="L")
    w = a.writer("leased")
    with db.view() as tx:
        assert [str(r) for r in lease_records.list_resources(tx, "a", "L")] == [
            "ingests:leased"]
    w.write(b"leased data")
    d = w.commit()
    with db.view() as tx:
        assert [str(r) for r in lease_records.list_resources(tx, "a", "L")] == [f"content:{d}"]


def test_missing_lease_is_a_clear_error(parts):
    a = ns(parts, "a", lease="nope")
    with pytest.raises(NotFound, match="lease nope"):
        a.writer("x")


def test_abort_removes_record_and_data(parts):
    a = ns(parts, "a")
    w = a.writer("gone")
    w.write(b"123")
    w.close()
    a.abort("gone")
    assert a.list_statuses() == []
    _db, store = parts
    assert store.list_statuses() == []
    with pytest.raises(NotFound):
        a.abort("gone")


def test_labels_update(parts):
    from cargohold.store.api import Info

    a = ns(parts, "a")
    d = put(a, b"lbl")
    a.update(Info(d, 0, labels={"x": "1", "y": "2"}), ["labels"])
    info = a.update(Info(d, 0, labels={"y": ""}), ["labels.y"])
    assert info.labels == {"x": "1"}
