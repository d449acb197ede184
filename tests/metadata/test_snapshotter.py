"""The per-namespace snapshotter: the shared conformance suite over real backends, namespace
isolation, leases, error translation and the cleanup of failed creations."""

from __future__ import annotations

import os

import pytest

# The loop-mounted btrfs of the snapshotter tests (its own instance in this module).
from tests.snapshotters.conftest import btrfs_mount  # noqa: F401

from cargohold.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from cargohold.metadata import leases
from cargohold.metadata.db import open_db
from cargohold.metadata.leases import Resource
from cargohold.metadata.snapshotter import NamespacedSnapshotter, inherited
from cargohold.snapshotters import testing
from cargohold.snapshotters.api import Info, Kind
from cargohold.snapshotters.registry import open_snapshotter

BACKENDS = ["overlayfs", "native", "btrfs"]


class Owned(NamespacedSnapshotter):
    """A wrapper that owns its database and backend, as the conformance factory needs."""

    def close(self) -> None:
        if not self._closed:
            super().close()
            self.backend.close()
            self.db.close()


def factory(backend: str, ns: str = "default"):
    """``make(root)``: the backend rooted at ``root`` (so its ``snapshots/`` is what the suite
    inspects) and the metadata database beside it in ``root/nsdb``."""

    def make(root: str) -> Owned:
        os.makedirs(root, exist_ok=True)
        db = open_db(os.path.join(root, "nsdb"))
        return Owned(db, open_snapshotter(backend, root, {}), ns, backend)

    return make


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    name = request.param
    if name == "btrfs":
        mnt = request.getfixturevalue("btrfs_mount")
        tmp = os.path.join(mnt, "ns-" + request.node.name.replace("/", "_")[:80])
        os.mkdir(tmp)
    else:
        tmp = str(tmp_path)
    return name, tmp


@pytest.mark.parametrize("check", list(testing.ALL_CHECKS))
def test_conformance(backend, check):
    name, tmp = backend
    testing.ALL_CHECKS[check](factory(name), tmp)


# --- isolation and mapping ---------------------------------------------------------------------
@pytest.fixture
def pair(tmp_path):
    """Namespaces a and b over one native backend and one database."""
    root = str(tmp_path / "root")
    os.makedirs(root)
    db = open_db(os.path.join(root, "nsdb"))
    be = open_snapshotter("native", root, {})
    a = NamespacedSnapshotter(db, be, "a", "native")
    b = NamespacedSnapshotter(db, be, "b", "native")
    yield a, b, be
    be.close()
    db.close()


def backend_names(be) -> dict[str, Kind]:
    out: dict[str, Kind] = {}
    be.walk(lambda i: out.__setitem__(i.name, i.kind))
    return out


def test_namespace_b_cannot_see_commit_or_remove_keys_of_a(pair):
    a, b, _ = pair
    a.prepare("k")
    a.commit("base", "k")
    a.prepare("work", "base")
    for call in (lambda: b.stat("base"), lambda: b.commit("x", "work"),
                 lambda: b.remove("base"), lambda: b.mounts("work"), lambda: b.usage("base"),
                 lambda: b.update(Info("base", Kind.COMMITTED, labels={"x": "y"}))):
        with pytest.raises(NotFound):
            call()
    with pytest.raises(NotFound, match="parent snapshot base on native: not found"):
        b.prepare("mine", "base")
    seen: list[str] = []
    b.walk(lambda i: seen.append(i.name))
    assert seen == []
    a.walk(lambda i: seen.append(i.name))
    assert sorted(seen) == ["base", "work"]


def test_same_key_in_two_namespaces_maps_to_different_backend_snapshots(pair):
    a, b, be = pair
    a.prepare("same", labels={"who": "a"})
    b.prepare("same", labels={"who": "b"})
    assert a.backend_key("same") != b.backend_key("same")
    assert a.backend_key("same").startswith("a/") and b.backend_key("same").startswith("b/")
    assert a.stat("same").labels == {"who": "a"} and b.stat("same").labels == {"who": "b"}
    assert set(backend_names(be)) == {a.backend_key("same"), b.backend_key("same")}
    a.commit("done", "same")
    assert b.stat("same").kind == Kind.ACTIVE
    b.remove("same")
    assert a.stat("done").kind == Kind.COMMITTED
    assert set(backend_names(be)) == {a.backend_key("done")}


def test_backend_names_carry_namespace_and_a_fresh_sequence(pair):
    a, _, be = pair
    a.prepare("k")
    first = a.backend_key("k")
    a.remove("k")
    a.prepare("k")
    assert first != a.backend_key("k"), "a removed key's backend name came round again"
    a.commit("n", "k")
    assert a.backend_key("n").startswith("a/") and a.backend_key("n").endswith("/n")
    assert list(backend_names(be)) == [a.backend_key("n")]


def test_errors_name_namespace_keys_not_backend_names(pair):
    a, _, _ = pair
    a.prepare("act")
    with pytest.raises(InvalidArgument) as ei:
        a.prepare("child", "act")
    assert "act" in str(ei.value) and "a/" not in str(ei.value)
    a.view("v")
    with pytest.raises(FailedPrecondition) as ei:
        a.commit("n", "v")
    assert "a/" not in str(ei.value)
    with pytest.raises(NotFound):
        a.stat("child")  # the failed prepare left no record ...
    assert len(backend_names(a.backend)) == 2  # ... and no backend snapshot


def test_remove_is_synchronous_and_refuses_parents(pair):
    a, _, be = pair
    a.prepare("p-a")
    a.commit("p", "p-a")
    a.view("v", "p")
    with pytest.raises(FailedPrecondition, match="remove the children first|child"):
        a.remove("p")
    a.remove("v")
    a.remove("p")
    assert backend_names(be) == {}
    assert os.listdir(os.path.join(be.root, "snapshots")) == []


def test_failed_record_write_removes_the_backend_snapshot(pair, monkeypatch):
    a, _, be = pair
    from cargohold.metadata import snapshot_records as snapshots

    def broken(*args, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshots, "create", broken)
    with pytest.raises(OSError):
        a.prepare("k")
    assert backend_names(be) == {}


def test_lease_receives_prepared_and_committed_keys(pair):
    a, _, _ = pair
    with a.db.update() as tx:
        leases.create(tx, "a", "L")
    leased = NamespacedSnapshotter(a.db, a.backend, "a", "native", lease="L")
    leased.prepare("k")
    leased.commit("n", "k")
    with a.db.view() as tx:
        assert set(leases.list_resources(tx, "a", "L")) == {
            Resource("snapshots/native", "k"), Resource("snapshots/native", "n")}
    missing = NamespacedSnapshotter(a.db, a.backend, "a", "native", lease="nope")
    with pytest.raises(NotFound, match="lease nope"):
        missing.prepare("x")
    assert "x" not in [k for k in backend_names(a.backend) if k.endswith("/x")]


def test_only_inherited_labels_reach_the_backend(pair):
    a, _, be = pair
    labels = {"containerd.io/snapshot/diff-id": "d", "containerd.io/snapshot.ref": "r",
              "containerd.io/gc.root": "now", "mine": "1"}
    assert inherited(labels) == {"containerd.io/snapshot/diff-id": "d",
                                 "containerd.io/snapshot.ref": "r"}
    a.prepare("k", labels=labels)
    assert a.stat("k").labels == labels
    assert be.stat(a.backend_key("k")).labels == inherited(labels)


def test_walk_shows_namespace_keys_and_parents(pair):
    a, _, _ = pair
    a.prepare("k")
    a.commit("base", "k", labels={"x": "1"})
    a.view("v", "base")
    got: list[Info] = []
    a.walk(got.append, ["parent==base"])
    assert [(i.name, i.parent, i.kind) for i in got] == [("v", "base", Kind.VIEW)]
    got.clear()
    a.walk(got.append, ['labels."x"==1', "kind==View"])
    assert sorted(i.name for i in got) == ["base", "v"]


def test_repeat_prepare_and_closed_wrapper(pair):
    a, _, _ = pair
    a.prepare("k")
    with pytest.raises(AlreadyExists):
        a.prepare("k")
    with pytest.raises(AlreadyExists):
        a.view("k")
    a.close()
    a.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        a.stat("k")
