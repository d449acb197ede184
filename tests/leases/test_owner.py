"""Lease owners: labels that name this process, and how a recorded owner is judged, against
real processes (a running child, a reaped one, a zombie) and forged labels (another boot,
another start time, another pid namespace, garbage)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cargohold.leases import owner
from cargohold.leases.owner import (
    LABEL_OWNER_BOOT,
    LABEL_OWNER_PID,
    LABEL_OWNER_PIDNS,
    LABEL_OWNER_PURPOSE,
    LABEL_OWNER_START,
    State,
)


def _labels_of(pid: int) -> dict[str, str]:
    """The owner labels a process ``pid`` would have written (read from /proc as it runs)."""
    text = open(f"/proc/{pid}/stat").read()
    start = text[text.rindex(")") + 1:].split()[19]
    return {LABEL_OWNER_PID: str(pid), LABEL_OWNER_START: start,
            LABEL_OWNER_BOOT: owner.boot_id(), LABEL_OWNER_PIDNS: os.readlink("/proc/self/ns/pid")}


@pytest.fixture
def child():
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                         stdin=subprocess.PIPE)
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


def test_this_process_owns_what_it_labels():
    labels = owner.owner_labels("images import x.tar")
    assert labels[LABEL_OWNER_PID] == str(os.getpid())
    assert labels[LABEL_OWNER_BOOT] == open("/proc/sys/kernel/random/boot_id").read().strip()
    assert labels[LABEL_OWNER_PURPOSE] == "images import x.tar"
    assert labels == {**_labels_of(os.getpid()), LABEL_OWNER_PURPOSE: "images import x.tar"}
    assert owner.state(labels) is State.ALIVE
    assert all(k.startswith("cargohold.owner/") for k in labels)


def test_a_running_child_is_alive_and_dead_once_reaped(child):
    labels = _labels_of(child.pid)
    assert owner.state(labels) is State.ALIVE
    child.stdin.close()
    child.wait()
    assert owner.state(labels) is State.DEAD
    assert "of dead process" in owner.dead_lease_text("L", labels)


def test_a_zombie_is_dead(child):
    labels = _labels_of(child.pid)
    child.stdin.close()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    assert os.path.exists(f"/proc/{child.pid}/stat")
    assert owner.state(labels) is State.DEAD


def test_a_reused_pid_is_not_the_owner():
    labels = _labels_of(os.getpid())
    labels[LABEL_OWNER_START] = str(int(labels[LABEL_OWNER_START]) - 1)
    assert owner.state(labels) is State.DEAD


def test_another_boot_means_dead_another_pid_namespace_means_unknown():
    labels = _labels_of(os.getpid())
    assert owner.state({**labels, LABEL_OWNER_BOOT: "0" * 8}) is State.DEAD
    assert owner.state({**labels, LABEL_OWNER_PIDNS: "pid:[1]"}) is State.UNKNOWN


@pytest.mark.parametrize("labels", [
    {LABEL_OWNER_PID: "x", LABEL_OWNER_START: "1", LABEL_OWNER_BOOT: "b"},
    {LABEL_OWNER_PID: "12"},
    {LABEL_OWNER_PID: "-1", LABEL_OWNER_START: "1"},
])
def test_unreadable_owner_labels_are_never_judged_dead(labels):
    got = owner.state({**labels, LABEL_OWNER_BOOT: labels.get(LABEL_OWNER_BOOT,
                                                              owner.boot_id())})
    assert got is State.UNKNOWN


def test_no_owner_labels_no_owner():
    assert owner.state({}) is State.NONE
    assert owner.state({"containerd.io/gc.expire": "2099-01-01T00:00:00Z"}) is State.NONE


def test_cached_check_reads_proc_once_per_owner(tmp_path, child):
    proc = tmp_path / "proc"
    (proc / "sys/kernel/random").mkdir(parents=True)
    (proc / "sys/kernel/random/boot_id").write_text(owner.boot_id() + "\n")
    (proc / "self/ns").mkdir(parents=True)
    os.symlink(os.readlink("/proc/self/ns/pid"), proc / "self/ns/pid")
    (proc / str(child.pid)).mkdir()
    stat = proc / str(child.pid) / "stat"
    stat.write_text(open(f"/proc/{child.pid}/stat").read())
    check = owner.cached_check(str(proc))
    labels = _labels_of(child.pid)
    assert check(labels) is State.ALIVE
    stat.unlink()
    assert check(labels) is State.ALIVE  # the same owner: answered from the cache
    assert owner.cached_check(str(proc))(labels) is State.DEAD
