"""MetaStore: ids, back-links, commit, removal, update and walk on the bookkeeping alone."""

from __future__ import annotations

import os

import pytest

from cargohold.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from cargohold.snapshotters.api import Info, Kind, Usage
from cargohold.snapshotters.native import Native
from cargohold.snapshotters.storage import MetaStore


@pytest.fixture
def ms(tmp_path):
    s = MetaStore(str(tmp_path / "metadata"))
    yield s
    s.close()


def test_ids_are_never_reused_and_chains_list_nearest_first(ms):
    with ms.update() as tx:
        a = ms.create(tx, Kind.ACTIVE, "a")
        ms.commit_active(tx, "a", "A", Usage(10, 2))
        b = ms.create(tx, Kind.ACTIVE, "b", "A")
        ms.commit_active(tx, "b", "B", Usage())
        c = ms.create(tx, Kind.VIEW, "c", "B")
    assert (a.id, b.id, c.id) == ("1", "2", "3")
    assert c.parent_ids == ("2", "1") and c.kind == Kind.VIEW
    with ms.update() as tx:
        assert ms.remove(tx, "c") == ("3", Kind.VIEW)
        d = ms.create(tx, Kind.ACTIVE, "c", "B")
    assert d.id == "4"
    with ms.view() as tx:
        assert ms.id_map(tx) == {"1": "A", "2": "B", "4": "c"}
        sid, info, usage = ms.get_info(tx, "A")
        assert (sid, info.kind, usage) == ("1", Kind.COMMITTED, Usage(10, 2))


def test_commit_keeps_the_id_and_moves_the_back_link(ms):
    with ms.update() as tx:
        ms.create(tx, Kind.ACTIVE, "p")
        ms.commit_active(tx, "p", "P", Usage())
        ms.create(tx, Kind.ACTIVE, "k", "P", {"x": "1"})
        sid = ms.commit_active(tx, "k", "N", Usage(5, 1), {"y": "2"})
        assert sid == "2"
        with pytest.raises(FailedPrecondition):
            ms.remove(tx, "P")
        ms.remove(tx, "N")
        assert ms.remove(tx, "P") == ("1", Kind.COMMITTED)
        assert ms.id_map(tx) == {}


def test_errors_follow_the_contract(ms):
    with ms.update() as tx:
        ms.create(tx, Kind.ACTIVE, "a")
        with pytest.raises(AlreadyExists):
            ms.create(tx, Kind.VIEW, "a")
        with pytest.raises(NotFound):
            ms.create(tx, Kind.ACTIVE, "x", "missing")
        with pytest.raises(InvalidArgument):
            ms.create(tx, Kind.ACTIVE, "x", "a")
        with pytest.raises(InvalidArgument):
            ms.create(tx, Kind.COMMITTED, "x")
        with pytest.raises(InvalidArgument):
            ms.create(tx, Kind.ACTIVE, "")
        with pytest.raises(InvalidArgument):
            ms.create(tx, Kind.ACTIVE, "k" * 500)
        ms.create(tx, Kind.VIEW, "v")
        with pytest.raises(FailedPrecondition):
            ms.commit_active(tx, "v", "n", Usage())
        with pytest.raises(NotFound):
            ms.remove(tx, "nope")


def test_get_snapshot_refuses_committed(ms):
    with ms.update() as tx:
        ms.create(tx, Kind.ACTIVE, "a")
        ms.commit_active(tx, "a", "A", Usage())
        with pytest.raises(FailedPrecondition):
            ms.get_snapshot(tx, "A")


def test_update_fieldpaths(ms):
    with ms.update() as tx:
        ms.create(tx, Kind.ACTIVE, "a", labels={"k": "v", "j": "w"})
        info = ms.update_info(tx, Info("a", Kind.ACTIVE, labels={"k": "new"}), ["labels.k"])
        assert info.labels == {"k": "new", "j": "w"}
        info = ms.update_info(tx, Info("a", Kind.ACTIVE, labels={"only": "1"}), ["labels"])
        assert info.labels == {"only": "1"}
        with pytest.raises(InvalidArgument):
            ms.update_info(tx, info, ["kind"])


def test_an_aborted_transaction_leaves_nothing(ms):
    with pytest.raises(RuntimeError):
        with ms.update() as tx:
            ms.create(tx, Kind.ACTIVE, "a")
            raise RuntimeError("boom")
    with ms.view() as tx:
        assert ms.id_map(tx) == {}


# --- crash recovery of the directory frame, through the native backend ---------------------
def test_failed_create_leaves_no_directory_and_no_record(tmp_path, monkeypatch):
    sn = Native(str(tmp_path / "n"))

    def broken(path, kind, parent_ids):
        os.mkdir(path)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sn, "_create", broken)
    with pytest.raises(FailedPrecondition, match="No space"):
        sn.prepare("a")
    assert os.listdir(sn.snapshots_dir) == []
    with pytest.raises(NotFound):
        sn.stat("a")
    sn.close()


def test_stale_directory_under_a_reissued_id_is_replaced(tmp_path):
    sn = Native(str(tmp_path / "n"))
    os.makedirs(os.path.join(sn.snapshots_dir, "1", "junk"))  # a crash before the commit
    sn.prepare("a")
    assert os.listdir(sn.path("1")) == []
    sn.close()


def test_cleanup_restores_a_remove_that_crashed_before_commit(tmp_path):
    sn = Native(str(tmp_path / "n"))
    sn.prepare("a")
    open(os.path.join(sn.path("1"), "f"), "w").close()
    os.rename(sn.path("1"), os.path.join(sn.snapshots_dir, "rm-1"))  # the crash window
    os.mkdir(os.path.join(sn.snapshots_dir, "new-dead"))
    os.mkdir(os.path.join(sn.snapshots_dir, "7"))
    sn.cleanup()
    assert sorted(os.listdir(sn.snapshots_dir)) == ["1"]
    assert os.listdir(sn.path("1")) == ["f"]
    sn.close()


def test_closed_snapshotter_refuses_work(tmp_path):
    sn = Native(str(tmp_path / "n"))
    sn.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        sn.prepare("a")


def test_fsck_reports_and_repairs_divergence(tmp_path):
    sn = Native(str(tmp_path / "n"))
    sn.prepare("p-a")
    sn.commit("p", "p-a")
    sn.prepare("lost", "p")
    sn.prepare("parked")
    os.rmdir(sn.path("2"))  # "lost" loses its directory
    os.rename(sn.path("3"), os.path.join(sn.snapshots_dir, "rm-3"))
    os.mkdir(os.path.join(sn.snapshots_dir, "99"))
    problems = sn.fsck()
    assert problems == [
        "object snapshots/99: no snapshot record owns it",
        "snapshot parked: object parked as rm-3 by an interrupted remove",
        "snapshot lost: its object snapshots/2 is missing",
    ]
    assert sn.fsck(repair=True) == problems
    assert sn.fsck() == []
    with pytest.raises(NotFound):
        sn.stat("lost")
    assert sn.stat("parked").kind == Kind.ACTIVE
    sn.close()
