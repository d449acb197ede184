"""zfs by argv: the exact command sequence of every operation, failures midway, probing, fsck.

This kernel has no ZFS; the real backend runs in the conformance suite where it has.
"""

from __future__ import annotations

import contextlib
import errno
import os

import pytest

from cargohold.errors import FailedPrecondition, NotFound, Unsupported
from cargohold.snapshotters import registry, zfs
from cargohold.snapshotters.api import Kind, Usage
from cargohold.snapshotters.runner import FakeRunner
from cargohold.snapshotters.zfs import ZFS
from cargohold.types import Mount

DS = "tank/ch"
GONE = "cannot open 'tank/ch/{}': dataset does not exist"


@pytest.fixture
def fake():
    return FakeRunner()


@pytest.fixture
def sn(tmp_path, fake):
    s = ZFS(str(tmp_path / "root"), DS, runner=fake)
    yield s
    s.close()


def own(sn):
    return f"cargohold:root={sn.root}"


def create(sn, id, *extra):
    return ["zfs", "create", "-o", "mountpoint=legacy", "-o", own(sn), *extra, f"{DS}/{id}"]


def clone(sn, id, parent, *extra):
    return ["zfs", "clone", "-o", "mountpoint=legacy", "-o", own(sn), *extra,
            f"{DS}/{parent}@snapshot", f"{DS}/{id}"]


def used(id):
    return ["zfs", "get", "-Hp", "-o", "value", "used", f"{DS}/{id}"]


def commit(sn, fake, name, key, size=4096):
    fake.on("zfs", "get", "-Hp", stdout=f"{size}\n", times=1)
    sn.commit(name, key)


def test_lifecycle_argv(sn, fake):
    assert sn.prepare("a") == [Mount("zfs", f"{DS}/1", ("rw",))]
    assert fake.calls == [create(sn, 1)]
    fake.reset()
    commit(sn, fake, "A", "a", 12345)
    assert fake.calls == [used(1), ["zfs", "snapshot", f"{DS}/1@snapshot"]]
    fake.reset()
    assert sn.usage("A") == Usage(12345, -1)  # stored at commit: no command
    assert sn.view("v", "A") == [Mount("zfs", f"{DS}/2", ("ro",))]
    assert sn.prepare("b", "A") == [Mount("zfs", f"{DS}/3", ("rw",))]
    assert sn.mounts("v") == [Mount("zfs", f"{DS}/2", ("ro",))]
    assert fake.calls == [clone(sn, 2, 1, "-o", "readonly=on"), clone(sn, 3, 1)]
    fake.reset()
    fake.on("zfs", "get", stdout="777\n")
    assert sn.usage("b") == Usage(777, -1)
    assert fake.calls == [used(3)]
    fake.reset()
    for key in ("v", "b", "A"):
        sn.remove(key)
    assert fake.calls == [
        ["zfs", "destroy", f"{DS}/2"],
        ["zfs", "destroy", f"{DS}/3"],
        ["zfs", "destroy", f"{DS}/1@snapshot"],
        ["zfs", "destroy", f"{DS}/1"],
    ]
    sn.cleanup()
    assert len(fake.calls) == 4, "cleanup runs no command"


def test_view_without_parent_is_read_only(sn, fake):
    [m] = sn.view("v")
    assert m.read_only and m.options == ("ro",)
    assert fake.calls == [create(sn, 1, "-o", "readonly=on")]


def test_clone_failure_leaves_no_record(sn, fake):
    sn.prepare("a")
    commit(sn, fake, "A", "a")
    fake.fail("zfs", "clone", stderr="cannot create 'tank/ch/2': out of space")
    with pytest.raises(FailedPrecondition) as ei:
        sn.prepare("b", "A")
    msg = str(ei.value)
    assert "zfs clone" in msg and "exit status 1" in msg and "out of space" in msg
    with pytest.raises(NotFound):
        sn.stat("b")
    fake.rules.clear()
    fake.reset()
    sn.prepare("b", "A")
    assert fake.calls == [clone(sn, 2, 1)], "the id of the failed prepare is handed out again"


@contextlib.contextmanager
def failing_commit(sn):
    """Make the next bookkeeping write transaction fail at its commit, after its body ran."""
    real = sn.ms.update

    @contextlib.contextmanager
    def update():
        with real() as tx:
            yield tx
            raise OSError(errno.EIO, "simulated disk failure")

    sn.ms.update = update
    try:
        yield
    finally:
        sn.ms.update = real


def test_bookkeeping_failure_after_create_destroys_the_dataset(sn, fake):
    with failing_commit(sn), pytest.raises(OSError):
        sn.prepare("a")
    assert fake.calls == [create(sn, 1), ["zfs", "destroy", "-r", f"{DS}/1"]]
    with pytest.raises(NotFound):
        sn.stat("a")


def test_bookkeeping_failure_after_snapshot_destroys_it(sn, fake):
    sn.prepare("a")
    fake.reset()
    fake.on("zfs", "get", stdout="1\n")
    with failing_commit(sn), pytest.raises(OSError):
        sn.commit("A", "a")
    assert fake.calls == [used(1), ["zfs", "snapshot", f"{DS}/1@snapshot"],
                          ["zfs", "destroy", f"{DS}/1@snapshot"]]
    assert sn.stat("a").kind == Kind.ACTIVE


def test_snapshot_failure_keeps_the_snapshot_active(sn, fake):
    sn.prepare("a")
    fake.on("zfs", "get", stdout="1\n").fail("zfs", "snapshot", stderr="pool is suspended")
    with pytest.raises(FailedPrecondition, match="pool is suspended"):
        sn.commit("A", "a")
    assert sn.stat("a").kind == Kind.ACTIVE
    with pytest.raises(NotFound):
        sn.stat("A")


def test_leftover_of_a_crashed_prepare_is_replaced(sn, fake):
    fake.fail("zfs", "create", stderr="cannot create 'tank/ch/1': dataset already exists",
              times=1)
    fake.on("zfs", "get", "-H", "-o", "value", "cargohold:root", stdout=sn.root + "\n")
    sn.prepare("a")
    assert fake.calls == [
        create(sn, 1),
        ["zfs", "get", "-H", "-o", "value", "cargohold:root", f"{DS}/1"],
        ["zfs", "destroy", "-r", f"{DS}/1"],
        create(sn, 1),
    ]


def test_a_dataset_of_another_root_is_never_destroyed(sn, fake):
    fake.fail("zfs", "create", stderr="cannot create 'tank/ch/1': dataset already exists")
    fake.on("zfs", "get", stdout="/other/root\n")
    with pytest.raises(FailedPrecondition, match="belongs to /other/root"):
        sn.prepare("a")
    assert not any(c[:2] == ["zfs", "destroy"] for c in fake.calls)


def test_stale_snapshot_of_a_crashed_commit_is_retaken(sn, fake):
    sn.prepare("a")
    fake.reset()
    fake.on("zfs", "get", stdout="1\n")
    fake.fail("zfs", "snapshot", stderr="cannot create snapshot 'tank/ch/1@snapshot': "
              "dataset already exists", times=1)
    sn.commit("A", "a")
    assert fake.calls == [used(1), ["zfs", "snapshot", f"{DS}/1@snapshot"],
                          ["zfs", "destroy", f"{DS}/1@snapshot"],
                          ["zfs", "snapshot", f"{DS}/1@snapshot"]]


def test_remove_tolerates_a_dataset_already_gone(sn, fake):
    sn.prepare("a")
    commit(sn, fake, "A", "a")
    sn.prepare("b")
    fake.fail("zfs", "destroy", f"{DS}/1@snapshot",
              stderr="could not find any snapshots to destroy; check snapshot names.")
    fake.fail("zfs", "destroy", f"{DS}/1", stderr=GONE.format(1))
    fake.fail("zfs", "destroy", f"{DS}/2", stderr=GONE.format(2))
    sn.remove("A")
    sn.remove("b")
    seen = []
    sn.walk(seen.append)
    assert seen == []


def test_remove_of_a_busy_dataset_puts_its_snapshot_back(sn, fake):
    sn.prepare("a")
    commit(sn, fake, "A", "a")
    fake.reset()
    fake.fail("zfs", "destroy", f"{DS}/1", stderr="cannot destroy 'tank/ch/1': dataset is busy")
    with pytest.raises(FailedPrecondition, match="dataset is busy"):
        sn.remove("A")
    assert fake.calls == [["zfs", "destroy", f"{DS}/1@snapshot"], ["zfs", "destroy", f"{DS}/1"],
                          ["zfs", "snapshot", f"{DS}/1@snapshot"]]
    assert sn.stat("A").kind == Kind.COMMITTED


def test_remove_of_a_parent_runs_no_command(sn, fake):
    sn.prepare("a")
    commit(sn, fake, "A", "a")
    sn.prepare("b", "A")
    fake.reset()
    with pytest.raises(FailedPrecondition, match="children"):
        sn.remove("A")
    assert fake.calls == []


def test_no_command_lists_every_dataset(sn, fake):
    """Only fsck lists, and only the parent's children; everything else names its dataset."""
    fake.on("zfs", "get", stdout="1\n").on("zfs", "list", stdout=f"{DS}\t-\n")
    sn.prepare("a")
    sn.commit("A", "a")
    sn.view("v", "A")
    sn.usage("v")
    sn.mounts("v")
    sn.remove("v")
    sn.remove("A")
    sn.cleanup()
    sn.fsck()
    lists = [c for c in fake.calls if c[:2] == ["zfs", "list"]]
    assert lists == [["zfs", "list", "-H", "-r", "-d", "2", "-t", "filesystem,snapshot", "-o",
                      "name,cargohold:root", DS]]
    for c in fake.calls:
        assert c[0] == "zfs" and c[-1].startswith(DS), c


def test_fsck_both_ways_and_repair(sn, fake):
    sn.prepare("a")              # 1, committed as A; its @snapshot is missing
    commit(sn, fake, "A", "a")
    sn.prepare("b", "A")         # 2, active, with a stale @snapshot
    sn.view("v", "A")            # 3, its dataset is gone
    me = sn.root
    fake.on("zfs", "list", stdout="\n".join([
        f"{DS}\t-", f"{DS}/1\t{me}", f"{DS}/2\t{me}", f"{DS}/2@snapshot\t-",
        f"{DS}/9\t{me}",            # leaked by this root
        f"{DS}/7\t/other/root",     # another root's: left alone
        f"{DS}/scratch\t-",         # not ours at all
    ]) + "\n")
    want = [
        f"dataset {DS}/7: not made by this root (cargohold:root=/other/root); left alone",
        f"dataset {DS}/scratch: not made by this root (cargohold:root=-); left alone",
        f"dataset {DS}/9: no snapshot record owns it",
        f"snapshot v: its dataset {DS}/3 is missing",
        f"snapshot b: stale {DS}/2@snapshot from an interrupted commit",
        f"snapshot A: {DS}/1@snapshot is missing",
    ]
    fake.reset()
    assert sn.fsck() == want
    assert len(fake.calls) == 1, "fsck without repair changes nothing"
    fake.reset()
    assert sn.fsck(repair=True) == want
    assert fake.calls[1:] == [
        ["zfs", "destroy", "-r", f"{DS}/9"],
        ["zfs", "destroy", f"{DS}/2@snapshot"],
        ["zfs", "snapshot", f"{DS}/1@snapshot"],
    ]
    with pytest.raises(NotFound):
        sn.stat("v")
    assert sn.stat("b").kind == Kind.ACTIVE


def test_a_root_stays_bound_to_its_dataset(tmp_path, fake):
    ZFS(str(tmp_path / "r"), DS, runner=fake).close()
    with pytest.raises(FailedPrecondition, match="made for dataset 'tank/ch'"):
        ZFS(str(tmp_path / "r"), "tank/other", runner=fake)


def test_check_support_reasons(tmp_path, monkeypatch):
    monkeypatch.setattr(zfs, "SYS_MODULE", str(tmp_path / "nope"))
    with pytest.raises(Unsupported, match=r"kernel has no ZFS \(zfs module not loaded"):
        ZFS.check_support(str(tmp_path), {"dataset": DS})
    monkeypatch.setattr(zfs, "SYS_MODULE", str(tmp_path))
    monkeypatch.setattr(zfs, "_have", lambda cmd: False)
    with pytest.raises(Unsupported, match=r"zfs command not found \(apt-get install "
                                          r"zfsutils-linux\)"):
        ZFS.check_support(str(tmp_path), {"dataset": DS})
    monkeypatch.setattr(zfs, "_have", lambda cmd: True)
    with pytest.raises(Unsupported, match=r"no \[snapshotters.zfs\] dataset configured"):
        ZFS.check_support(str(tmp_path), {"dataset": ""})
    fake = FakeRunner().fail("zfs", "list", stderr=f"cannot open '{DS}': dataset does not exist")
    with pytest.raises(Unsupported, match=f"zfs dataset {DS} not found .create it with"):
        ZFS.check_support(str(tmp_path), {"dataset": DS}, runner=fake)
    assert fake.calls == [["zfs", "list", "-H", "-o", "name", DS]]
    ZFS.check_support(str(tmp_path), {"dataset": DS}, runner=FakeRunner())
    sn = ZFS.from_config(str(tmp_path / "r"), {"dataset": DS}, runner=FakeRunner())
    assert sn.dataset == DS
    sn.close()


@pytest.mark.skipif(os.path.exists("/sys/module/zfs"), reason="this kernel has ZFS")
def test_plugins_probe_says_why_here(tmp_path):
    status, reason = registry.probe("zfs", str(tmp_path / "z"), {"dataset": DS})
    assert status == "skip" and reason.startswith("kernel has no ZFS"), reason


# --- the Runner seam both tool backends use -----------------------------------------------------
def test_runner_reports_command_status_and_stderr():
    from cargohold.errors import Unavailable
    from cargohold.snapshotters.runner import CommandFailed, Runner

    r = Runner()
    assert r.run(["sh", "-c", "echo out"]).stdout == "out\n"
    with pytest.raises(CommandFailed) as ei:
        r.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert str(ei.value) == "command sh -c 'echo boom >&2; exit 3': exit status 3: boom"
    assert ei.value.result.returncode == 3
    res = r.run(["no-such-tool-here", "x"], check=False)
    assert res.returncode == 127 and "command not found" in res.stderr
    with pytest.raises(Unavailable, match="no answer after 0.2s"):
        Runner(timeout=0.2).run(["sleep", "5"])
