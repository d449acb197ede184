"""Metadata records: namespaces, images, leases, containers, the snapshot index, migrations."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cargohold.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unsupported,
)
from cargohold.metadata import containers, images, leases, namespaces, schema
from cargohold.metadata import snapshot_records as snapshots
from cargohold.metadata.db import epoch, open_db
from cargohold.metadata.images import Image
from cargohold.metadata.leases import Resource
from cargohold.metadata.snapshot_records import SnapshotRecord
from cargohold.types import Descriptor

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


@pytest.fixture
def db(root):
    d = open_db(root)
    yield d
    d.close()


def test_fresh_db_has_schema_version_and_epoch_moves(db):
    with db.view() as tx:
        assert int(tx.get(schema.VERSION_KEY)) == schema.SCHEMA_VERSION
        e0 = epoch(tx)
    with db.update() as tx:
        namespaces.create(tx, "a")
    with db.update() as tx:
        pass  # a transaction that writes nothing does not bump the epoch
    with db.view() as tx:
        assert epoch(tx) == e0 + 1


def test_newer_schema_is_refused(root):
    db = open_db(root)
    with db.update() as tx:
        tx.put(schema.VERSION_KEY, b"99")
    with db.update() as tx, pytest.raises(FailedPrecondition, match="newer"):
        schema.migrate(tx)
    db.close()


def test_migrations_run_in_order(db, monkeypatch):
    ran = []
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + [
        (3, "add x", lambda tx: ran.append(3)), (4, "add y", lambda tx: ran.append(4))])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 4)
    with db.update() as tx:
        assert schema.migrate(tx) == [3, 4]
        assert schema.migrate(tx) == []
    assert ran == [3, 4]


def test_namespaces_lifecycle_and_refusal_names_what_is_left(db):
    with db.update() as tx:
        namespaces.create(tx, "team-a", {"owner": "ops"})
        with pytest.raises(AlreadyExists):
            namespaces.create(tx, "team-a")
        with pytest.raises(InvalidArgument):
            namespaces.create(tx, "bad name!")
        images.create(tx, "team-a", Image("x:1", Descriptor("application/json", D1, 10)))
        leases.create(tx, "team-a", "l1")
    with db.update() as tx:
        assert namespaces.list_all(tx) == ["team-a"]
        assert namespaces.get_labels(tx, "team-a") == {"owner": "ops"}
        with pytest.raises(FailedPrecondition) as ei:
            namespaces.delete(tx, "team-a")
    assert "1 images" in str(ei.value) and "1 leases" in str(ei.value)
    with db.update() as tx:
        images.delete(tx, "team-a", "x:1")
        leases.delete(tx, "team-a", "l1")
        namespaces.delete(tx, "team-a")
        assert namespaces.list_all(tx) == []
        with pytest.raises(NotFound):
            namespaces.delete(tx, "team-a")


def test_images_crud_filters_and_names_with_slashes(db):
    t = Descriptor("application/vnd.oci.image.index.v1+json", D1, 100)
    with db.update() as tx:
        images.create(tx, "ns", Image("docker.io/library/alpine:3", t, {"a": "1"}))
        images.create(tx, "ns", Image("docker.io/library/alpine:3.1", t))
        with pytest.raises(AlreadyExists):
            images.create(tx, "ns", Image("docker.io/library/alpine:3", t))
        with pytest.raises(InvalidArgument):
            images.create(tx, "ns", Image("zero", Descriptor("x", D1, 0)))
    with db.view() as tx:
        names = [i.name for i in images.list_images(tx, "ns")]
        assert names == ["docker.io/library/alpine:3", "docker.io/library/alpine:3.1"]
        got = images.list_images(tx, "ns", ['labels."a"==1'])
        assert [i.name for i in got] == ["docker.io/library/alpine:3"]
        assert images.list_images(tx, "ns", ["name~=3\\.1$"])[0].name.endswith("3.1")
    with db.update() as tx:
        new = images.update(tx, "ns", Image("docker.io/library/alpine:3",
                                             Descriptor(t.media_type, D2, 5), {"b": "2"}),
                            ["target", "labels.b"])
        assert new.target.digest == D2 and new.labels == {"a": "1", "b": "2"}
        with pytest.raises(InvalidArgument):
            images.update(tx, "ns", new, ["createdat"])
        images.delete(tx, "ns", "docker.io/library/alpine:3")
        with pytest.raises(NotFound):
            images.get(tx, "ns", "docker.io/library/alpine:3")


def test_leases_resources(db):
    with db.update() as tx:
        leases.create(tx, "ns", "l1", {"containerd.io/gc.expire": "2099-01-01T00:00:00Z"})
        leases.add_resource(tx, "ns", "l1", Resource("content", D1))
        leases.add_resource(tx, "ns", "l1", Resource("snapshots/overlayfs", "a/b"))
        leases.add_resource(tx, "ns", "l1", Resource("ingests", "ref-1"))
        with pytest.raises(Unsupported):
            leases.add_resource(tx, "ns", "l1", Resource("bogus", "x"))
        with pytest.raises(InvalidArgument):
            leases.add_resource(tx, "ns", "l1", Resource("content", "not-a-digest"))
        with pytest.raises(NotFound):
            leases.add_resource(tx, "ns", "nope", Resource("content", D1))
    with db.view() as tx:
        rs = leases.list_resources(tx, "ns", "l1")
        assert set(map(str, rs)) == {f"content:{D1}", "snapshots/overlayfs:a/b",
                                     "ingests:ref-1"}
        lease = leases.get(tx, "ns", "l1")
        assert not lease.expired(0)
        assert lease.expired(5_000_000_000 * 10**9)


def test_containers(db):
    with db.update() as tx:
        containers.create(tx, "ns", containers.Container(
            "c1", image="img", snapshotter="overlayfs", snapshotkey="c1-snap"))
        with pytest.raises(AlreadyExists):
            containers.create(tx, "ns", containers.Container("c1"))
        with pytest.raises(InvalidArgument):
            containers.create(tx, "ns", containers.Container("c2", snapshotter="overlayfs"))
        c = containers.update(tx, "ns", containers.Container("c1", labels={"x": "y"}),
                              ["labels.x"])
        assert c.labels == {"x": "y"} and c.snapshotkey == "c1-snap"
    with db.view() as tx:
        assert [c.id for c in containers.list_containers(tx, "ns", ["image==img"])] == ["c1"]


def test_snapshot_index_tree(db):
    with db.update() as tx:
        base = snapshots.next_name(tx, "ns", "overlayfs", "base")
        snapshots.create(tx, "ns", SnapshotRecord("overlayfs", "base", base))
        snapshots.create(tx, "ns", SnapshotRecord("overlayfs", "child", "n2", "base"))
        with pytest.raises(NotFound):
            snapshots.create(tx, "ns", SnapshotRecord("overlayfs", "x", "n3", "missing"))
        with pytest.raises(FailedPrecondition, match="child"):
            snapshots.remove(tx, "ns", "overlayfs", "base")
        assert snapshots.keys(tx, "ns", "overlayfs") == ["base", "child"]
        assert snapshots.next_name(tx, "ns", "overlayfs", "k") == "ns/2/k"
        snapshots.remove(tx, "ns", "overlayfs", "child")
        snapshots.remove(tx, "ns", "overlayfs", "base")
        assert snapshots.keys(tx, "ns", "overlayfs") == []


def test_too_long_names_are_clear_errors(db):
    with db.update() as tx, pytest.raises(InvalidArgument, match="too long"):
        images.create(tx, "ns", Image("x" * 600, Descriptor("a/b", D1, 1)))


WRITER = """
import sys
from cargohold.metadata.db import open_db
from cargohold.metadata import images
from cargohold.metadata.images import Image
from cargohold.types import Descriptor
db = open_db(sys.argv[1])
for i in range(40):
    with db.update() as tx:
        images.create(tx, "ns", Image(f"p{sys.argv[2]}-{i}",
                      Descriptor("application/json", "sha256:" + "1" * 64, 1)))
"""


def test_several_processes_writing_at_once_all_succeed(root):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, root, str(n)]) for n in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    db = open_db(root)
    with db.view() as tx:
        assert len(images.list_images(tx, "ns")) == 160
    db.close()
