"""``LeaseManager.lease()``: an owned lease for a block, deleted after it, and cleanup failures
that are reported instead of swallowed (faults injected by overriding one method)."""

from __future__ import annotations

import pytest

from cargohold.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from cargohold.leases import owner
from cargohold.leases.manager import LeaseManager
from cargohold.metadata.db import open_db


@pytest.fixture
def mgr(tmp_path):
    db = open_db(str(tmp_path))
    collected = []
    m = LeaseManager(db, "default", collect=lambda: collected.append(1))
    m.collected = collected
    yield m
    db.close()


def test_the_block_runs_in_an_owned_lease_that_goes_afterwards(mgr):
    with mgr.lease(purpose="images import a.tar") as lid:
        labels = mgr.get(lid).labels
        assert labels[owner.LABEL_OWNER_PURPOSE] == "images import a.tar"
        assert owner.state(labels) is owner.State.ALIVE
        assert "containerd.io/gc.expire" in labels
    with pytest.raises(NotFound):
        mgr.get(lid)
    assert mgr.collected == []


def test_a_user_lease_has_no_owner(mgr):
    lease = mgr.create("mine", labels={"team": "a"})
    assert owner.state(lease.labels) is owner.State.NONE


def test_an_error_deletes_the_lease_collects_and_propagates_unchanged(mgr):
    with pytest.raises(InvalidArgument) as err:
        with mgr.lease(collect_on_error=True) as lid:
            raise InvalidArgument("bad thing", hint="do this")
    assert err.value.hint == "do this"
    assert mgr.list() == [] and mgr.collected == [1]
    with pytest.raises(KeyboardInterrupt):
        with mgr.lease(collect_on_error=True) as lid:
            raise KeyboardInterrupt
    assert mgr.list() == [] and mgr.collected == [1, 1]
    del lid


def test_a_lease_deleted_meanwhile_is_fine(mgr):
    with mgr.lease() as lid:
        mgr.delete(lid)
    assert mgr.list() == []


def test_a_failed_delete_after_an_error_is_added_to_that_error(mgr, monkeypatch):
    def broken(id, *, sync=False):
        raise FailedPrecondition(f"lease {id}: mdb_txn_commit: No space left on device")

    monkeypatch.setattr(mgr, "delete", broken)
    with pytest.raises(InvalidArgument) as err:
        with mgr.lease(collect_on_error=True) as lid:
            raise InvalidArgument("layer 2: bad gzip", hint="export it again")
    assert err.value.message == "layer 2: bad gzip"
    assert err.value.hint.startswith("export it again; ")
    assert f"lease {lid} was left behind" in err.value.hint and "No space" in err.value.hint
    assert mgr.collected == []  # nothing to collect while the lease still holds it all
    with pytest.raises(KeyboardInterrupt) as kb:
        with mgr.lease():
            raise KeyboardInterrupt
    assert any("was left behind" in n for n in kb.value.__notes__)


def test_a_failed_delete_after_success_is_an_error_that_says_the_work_is_done(mgr,
                                                                           monkeypatch):
    def broken(id, *, sync=False):
        raise FailedPrecondition(f"lease {id}: cannot write")

    monkeypatch.setattr(mgr, "delete", broken)
    with pytest.raises(FailedPrecondition, match="could not be deleted after the work") as err:
        with mgr.lease():
            pass
    assert "in place" in err.value.hint and "'hold gc'" in err.value.hint


def test_a_busy_collector_after_an_error_is_fine(mgr):
    def busy():
        raise Unavailable("gc: locked by pid 1")

    mgr._collect = busy
    with pytest.raises(InvalidArgument) as err:
        with mgr.lease(collect_on_error=True):
            raise InvalidArgument("x")
    assert err.value.hint is None and mgr.list() == []
