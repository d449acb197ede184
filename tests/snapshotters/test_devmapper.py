"""devmapper by argv: exact dmsetup/mkfs/blkdiscard sequences, rollback, full pools, fsck.

This kernel has no device-mapper; the real backend runs in the conformance suite where it has.
"""

from __future__ import annotations

import os

import pytest

from cargohold.errors import FailedPrecondition, InvalidArgument, NotFound, Unsupported
from cargohold.snapshotters import devmapper, dmfsck, registry
from cargohold.snapshotters.api import Kind, Usage
from cargohold.snapshotters.devmapper import Devmapper, DevmapperError
from cargohold.snapshotters.dmpool import PoolFull, parse_pool_status, parse_size
from cargohold.snapshotters.runner import FakeRunner
from cargohold.types import Mount

SECTORS = 2097152  # 1 GiB
STATUS = "0 4194304 thin-pool 1 11/2048 30/16384 - rw discard_passdown queue_if_no_space - 1024"
TABLE = "0 4194304 thin-pool 7:1 7:2 128 32768 1 skip_block_zeroing"  # 64 KiB blocks


def dm(*args):
    return ["dmsetup", *args]


def msg(text):
    return dm("message", "pool", "0", text)


def activate(tid, sectors=SECTORS):
    return dm("create", f"pool-snap-{tid}", "--table",
              f"0 {sectors} thin /dev/mapper/pool {tid}")


def dev(tid):
    return f"/dev/mapper/pool-snap-{tid}"


MKFS = ["mkfs.ext4", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"]


def base_device(tid):
    """What a prepare without parent runs after the pool checks."""
    return [msg(f"create_thin {tid}"), activate(tid), [*MKFS, dev(tid)],
            ["debugfs", "-w", "-R", "rmdir lost+found", dev(tid)]]


def healthy(fake):
    return fake.on("dmsetup", "status", "pool", stdout=STATUS + "\n").on(
        "dmsetup", "table", "pool", stdout=TABLE + "\n")


@pytest.fixture
def fake():
    return healthy(FakeRunner())


def make(tmp_path, fake, **kw):
    kw.setdefault("base_image_size", "1GiB")
    return Devmapper(str(tmp_path / "root"), "pool", runner=fake, **kw)


@pytest.fixture
def sn(tmp_path, fake):
    s = make(tmp_path, fake)
    yield s
    s.close()


def mapped(fake, tid, sectors, times=1):
    fake.on("dmsetup", "status", f"pool-snap-{tid}",
            stdout=f"0 {SECTORS} thin {sectors} {SECTORS - 1}\n", times=times)


def inactive(fake, tid, times=1):
    fake.fail("dmsetup", "info", f"pool-snap-{tid}", stderr="Device does not exist.",
              times=times)


def committed_base(sn, fake, sectors=20480):
    sn.prepare("a")
    mapped(fake, 0, sectors)
    sn.commit("A", "a")
    fake.reset()


def test_lifecycle_argv(sn, fake):
    assert sn.prepare("a") == [Mount("ext4", dev(0), ("rw",))]
    assert fake.calls == [dm("status", "pool"), dm("table", "pool"), *base_device(0)]
    fake.reset()
    mapped(fake, 0, 20480)
    sn.commit("A", "a")
    assert fake.calls == [dm("status", "pool-snap-0"), dm("remove", "--retry", "pool-snap-0")]
    assert sn.usage("A") == Usage(20480 * 512, -1)
    fake.reset()

    inactive(fake, 0)
    assert sn.view("v", "A") == [Mount("ext4", dev(1), ("ro",))]
    assert fake.calls == [dm("status", "pool"), dm("info", "pool-snap-0"),
                          msg("create_snap 1 0"), activate(1)]
    fake.reset()
    # the origin is still loaded (say, held open): it is suspended around create_snap
    assert sn.prepare("b", "A") == [Mount("ext4", dev(2), ("rw",))]
    assert fake.calls == [dm("status", "pool"), dm("info", "pool-snap-0"),
                          dm("suspend", "pool-snap-0"), msg("create_snap 2 0"),
                          dm("resume", "pool-snap-0"), activate(2)]
    fake.reset()
    mapped(fake, 2, 20992)
    assert sn.usage("b") == Usage(512 * 512, -1), "usage excludes what the parent mapped"
    fake.reset()

    sn.remove("v")
    assert fake.calls == [dm("info", "pool-snap-1"), ["blkdiscard", dev(1)],
                          dm("remove", "--retry", "pool-snap-1"), msg("delete 1")]
    fake.reset()
    sn.remove("b")
    inactive(fake, 0)
    sn.remove("A")  # committed devices are not loaded: loaded just for the discard
    assert fake.calls[4:] == [dm("info", "pool-snap-0"), activate(0), ["blkdiscard", dev(0)],
                              dm("remove", "--retry", "pool-snap-0"), msg("delete 0")]
    with sn.ms.view() as tx:
        assert sn.pending_removals(tx) == {}


def test_without_discard_nothing_is_loaded_to_remove(tmp_path, fake):
    sn = make(tmp_path, fake, discard_blocks=False)
    committed_base(sn, fake)
    inactive(fake, 0)
    sn.remove("A")
    assert fake.calls == [dm("info", "pool-snap-0"), msg("delete 0")]
    sn.close()


def test_xfs_mkfs_and_mount_options(tmp_path, fake):
    sn = make(tmp_path, fake, fs_type="xfs", fs_options="-m reflink=0")
    assert sn.prepare("a") == [Mount("xfs", dev(0), ("rw", "nouuid"))]
    assert fake.calls[-1] == ["mkfs.xfs", "-K", "-m", "reflink=0", dev(0)]
    mapped(fake, 0, 8)
    sn.commit("A", "a")
    inactive(fake, 0)
    [m] = sn.view("v", "A")
    assert m == Mount("xfs", dev(1), ("ro", "nouuid")) and m.read_only
    sn.close()


def test_mkfs_failure_removes_the_device_and_frees_the_id(sn, fake):
    fake.fail("mkfs.ext4", stderr="mkfs.ext4: Input/output error while writing inode table",
              times=1)
    with pytest.raises(DevmapperError) as ei:
        sn.prepare("a")
    text = str(ei.value)
    assert "mkfs.ext4" in text and "Input/output error" in text
    assert text.endswith(f"dmsetup status pool: {STATUS}"), text
    assert fake.calls == [dm("status", "pool"), dm("table", "pool"), msg("create_thin 0"),
                          activate(0), [*MKFS, dev(0)],
                          dm("remove", "--retry", "pool-snap-0"), msg("delete 0"),
                          dm("status", "pool")]
    with pytest.raises(NotFound):
        sn.stat("a")
    fake.reset()
    sn.prepare("a")
    assert fake.calls[1] == msg("create_thin 0"), "the id was freed"


def test_activation_failure_deletes_the_thin_id(sn, fake):
    fake.fail("dmsetup", "create", stderr="device-mapper: reload ioctl failed: Invalid argument")
    with pytest.raises(DevmapperError, match="Invalid argument.*dmsetup status pool: 0 "):
        sn.prepare("a")
    assert fake.calls[3:5] == [activate(0), msg("delete 0")]


def test_full_pool_is_refused_before_mkfs(sn, fake):
    full = STATUS.replace("30/16384", "16000/16384")
    fake.rules.insert(0, fake.rules[0].__class__(("dmsetup", "status", "pool"), stdout=full))
    with pytest.raises(PoolFull) as ei:
        sn.prepare("a")
    text = str(ei.value)
    assert "thin pool pool: full, refusing base device for a" in text
    assert "384 free data blocks, base device for a needs 1024" in text
    assert text.endswith(f"dmsetup status pool: {full}")
    assert "lvextend" in ei.value.hint and "dmsetup reload pool" in ei.value.hint
    assert not any(c[:2] == ["dmsetup", "message"] or c[0].startswith("mkfs")
                   for c in fake.calls)
    with pytest.raises(NotFound):
        sn.stat("a")


@pytest.mark.parametrize("mode", ["out_of_data_space", "ro", "read_only"])
def test_pool_out_of_space_or_read_only_refuses_even_snapshots(sn, fake, mode):
    committed_base(sn, fake)
    bad = STATUS.replace(" rw ", f" {mode} ")
    fake.rules.insert(0, fake.rules[0].__class__(("dmsetup", "status", "pool"), stdout=bad))
    with pytest.raises(PoolFull, match=f"pool is in {mode} mode"):
        sn.prepare("b", "A")
    assert fake.calls == [dm("status", "pool")]


def test_thin_id_taken_in_the_pool_is_skipped_not_deleted(sn, fake):
    fake.fail("dmsetup", "message", "pool", "0", "create_thin 0",
              stderr="device-mapper: message ioctl on pool failed: File exists")
    sn.prepare("a")
    assert fake.calls[2:4] == [msg("create_thin 0"), msg("create_thin 1")]
    assert msg("delete 0") not in fake.calls
    assert sn.mounts("a") == [Mount("ext4", dev(1), ("rw",))]


def test_mounts_reload_a_device_after_reboot(sn, fake):
    sn.prepare("a")
    fake.reset()
    inactive(fake, 0)
    assert sn.mounts("a") == [Mount("ext4", dev(0), ("rw",))]
    assert fake.calls == [dm("info", "pool-snap-0"), activate(0)]
    fake.reset()
    fake.fail("dmsetup", "status", "pool-snap-0", stderr="Device does not exist.", times=1)
    mapped(fake, 0, 64)
    sn.commit("A", "a")
    assert fake.calls[:3] == [dm("status", "pool-snap-0"), activate(0),
                              dm("status", "pool-snap-0")]


def test_failed_teardown_keeps_the_id_for_cleanup(sn, fake):
    sn.prepare("a")
    fake.reset()
    fake.fail("dmsetup", "remove", stderr="device-mapper: remove ioctl failed: Device or "
              "resource busy", times=1)
    sn.remove("a")  # the record goes; the device is still mounted somewhere
    with pytest.raises(NotFound):
        sn.stat("a")
    with sn.ms.view() as tx:
        assert sn.pending_removals(tx) == {0: SECTORS}
    fake.reset()
    sn.prepare("b")
    assert fake.calls[1] == msg("create_thin 1"), "a reserved id is not handed out"
    fake.reset()
    sn.cleanup()
    assert fake.calls == [dm("info", "pool-snap-0"), ["blkdiscard", dev(0)],
                          dm("remove", "--retry", "pool-snap-0"), msg("delete 0")]
    with sn.ms.view() as tx:
        assert sn.pending_removals(tx) == {}


def test_commit_of_a_view_and_remove_of_a_parent_run_no_device_command(sn, fake):
    committed_base(sn, fake)
    inactive(fake, 0)
    sn.view("v", "A")
    fake.reset()
    with pytest.raises(FailedPrecondition):
        sn.commit("x", "v")
    with pytest.raises(FailedPrecondition, match="children"):
        sn.remove("A")
    assert fake.calls == []


def test_fsck_both_ways_and_repair(sn, fake, monkeypatch):
    committed_base(sn, fake)             # A: thin 0
    inactive(fake, 0)
    sn.view("v", "A")                    # v: thin 1, will be missing from the pool
    sn.prepare("b")                      # b: thin 2
    fake.fail("dmsetup", "remove", stderr="busy", times=1)
    sn.remove("b")                       # thin 2: removal pending
    monkeypatch.setattr(devmapper, "_have", lambda cmd: True)
    fake.on("dmsetup", "ls", "--target", "thin",
            stdout="pool-snap-1\t(253:3)\npool-snap-5\t(253:9)\nother\t(253:1)\n")
    fake.on("thin_ls", stdout="0\n2\n5\n7\n")
    fake.reset()
    want = [
        "device /dev/mapper/pool-snap-5: loaded, but no snapshot owns thin id 5",
        "thin id 7 in pool pool: no snapshot owns it",
        "snapshot v: its thin id 1 is not in pool pool",
        "thin id 2: removal not finished (device not torn down)",
    ]
    assert sn.fsck() == want
    assert fake.calls == [dm("status", "pool"), dm("ls", "--target", "thin"),
                          msg("reserve_metadata_snap"),
                          ["thin_ls", "--metadata-snap", "-o", "DEV", "--no-headers",
                           "/dev/block/7:1"],
                          msg("release_metadata_snap")]
    fake.reset()
    assert sn.fsck(repair=True) == want
    repairs = [c for c in fake.calls if c[:2] != ["dmsetup", "status"]
               and c[:2] != ["dmsetup", "ls"] and c[0] != "thin_ls"
               and "metadata_snap" not in c[-1]]
    assert repairs == [
        dm("remove", "--retry", "pool-snap-5"), msg("delete 5"),
        dm("remove", "--retry", "pool-snap-7"), msg("delete 7"),
        dm("info", "pool-snap-2"), ["blkdiscard", dev(2)], dm("remove", "--retry", "pool-snap-2"),
        msg("delete 2"),
    ]
    with pytest.raises(NotFound):
        sn.stat("v")
    assert sn.stat("A").kind == Kind.COMMITTED
    with sn.ms.view() as tx:
        assert sn.pending_removals(tx) == {}
        assert dmfsck._owners(sn, tx) == {0: "1"}


def test_fsck_reports_an_unhealthy_pool(sn, fake):
    bad = STATUS.replace(" rw ", " out_of_data_space ")
    fake.rules.insert(0, fake.rules[0].__class__(("dmsetup", "status", "pool"), stdout=bad))
    assert sn.fsck()[0].startswith("thin pool pool: not healthy (mode out_of_data_space)")


def test_a_root_stays_bound_to_its_pool(tmp_path, fake):
    make(tmp_path, fake).close()
    with pytest.raises(FailedPrecondition, match="made for pool 'pool'"):
        Devmapper(str(tmp_path / "root"), "other", runner=fake)


def test_parsers():
    st = parse_pool_status(STATUS)
    assert (st.mode, st.free_blocks, st.meta_used, st.needs_check) == ("rw", 16354, 11, False)
    assert parse_pool_status("0 8 thin-pool Fail").mode == "Fail"
    assert parse_pool_status(STATUS.replace("- 1024", "needs_check 1024")).needs_check
    with pytest.raises(InvalidArgument):
        parse_pool_status("0 8 linear 7:1 0")
    assert parse_size("10GB") == 10 << 30 == parse_size("10GiB") == parse_size("10g")
    assert parse_size("512MiB") == 512 << 20 and parse_size(1 << 30) == 1 << 30
    for bad in ("ten", "10XB", "512"):
        with pytest.raises(InvalidArgument):
            parse_size(bad)


def test_check_support_reasons(tmp_path, monkeypatch):
    sec = {"pool_name": "pool", "base_image_size": "1GB", "fs_type": "ext4"}
    monkeypatch.setattr(devmapper, "SYS_MODULE", str(tmp_path / "nope"))
    with pytest.raises(Unsupported, match=r"kernel has no device-mapper \(dm_mod not loaded; "
                                          r".*missing\)"):
        Devmapper.check_support(str(tmp_path), sec)
    monkeypatch.setattr(devmapper, "SYS_MODULE", str(tmp_path))
    have = {"dmsetup", "mkfs.ext4", "debugfs", "blkdiscard"}
    monkeypatch.setattr(devmapper, "_have", lambda cmd: cmd in have)
    with pytest.raises(Unsupported, match=r"no \[snapshotters.devmapper\] pool_name"):
        Devmapper.check_support(str(tmp_path), {**sec, "pool_name": ""})
    with pytest.raises(InvalidArgument, match="not a size"):
        Devmapper.check_support(str(tmp_path), {**sec, "base_image_size": "big"})
    with pytest.raises(InvalidArgument, match="fs_type 'zfs'"):
        Devmapper.check_support(str(tmp_path), {**sec, "fs_type": "zfs"})
    with pytest.raises(Unsupported, match=r"mkfs.xfs not found \(apt-get install xfsprogs\)"):
        Devmapper.check_support(str(tmp_path), {**sec, "fs_type": "xfs"})
    missing = FakeRunner().fail("dmsetup", "status", stderr="Device does not exist.")
    with pytest.raises(Unsupported, match=r"thin pool pool not found \(create it with "
                                          r"dmsetup create pool --table .*thin-pool"):
        Devmapper.check_support(str(tmp_path), sec, runner=missing)
    linear = FakeRunner().on("dmsetup", "status", stdout="0 8 linear\n")
    with pytest.raises(Unsupported, match="not a thin pool"):
        Devmapper.check_support(str(tmp_path), sec, runner=linear)
    have.discard("dmsetup")
    with pytest.raises(Unsupported, match=r"dmsetup command not found"):
        Devmapper.check_support(str(tmp_path), sec)
    have.add("dmsetup")
    sn = Devmapper.from_config(str(tmp_path / "r"), sec, runner=healthy(FakeRunner()))
    assert (sn.sectors, sn.fs_type, sn.discard) == (SECTORS, "ext4", True)
    sn.close()


@pytest.mark.skipif(os.path.exists("/sys/module/dm_mod"), reason="this kernel has dm")
def test_plugins_probe_says_why_here(tmp_path):
    status, reason = registry.probe("devmapper", str(tmp_path / "d"), {"pool_name": "pool"})
    assert status == "skip" and reason.startswith("kernel has no device-mapper"), reason
