"""``hold run`` on real runc: output and exit status, argv, signals, cleanup, a killed hold."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.tasks.conftest import (
    IMAGE,
    need_runc,
    read_line,
    state_of,
    tasks_json,
    wait_for,
)

pytestmark = pytest.mark.peer


@pytest.fixture(autouse=True)
def _runc():
    need_runc()


def leftovers(hold, root: str, cid: str) -> list[str]:
    """What a removed container/task may not leave: mounts, snapshot, cgroups, state."""
    from cargohold.tasks import cgroups
    from cargohold.tasks.api import cgroups_path

    state = state_of(root)
    out = []
    with open("/proc/self/mountinfo") as f:
        out += [f"mount {line.split()[4]}" for line in f if root in line.split()[4]]
    keys = [s["name"] for s in json.loads(hold("snapshots", "ls", "--format", "json").stdout)]
    out += [f"snapshot {k}" for k in keys if k == cid]
    out += [f"cgroup {d}" for d in cgroups.exists_anywhere(cgroups_path(state, "default", cid))]
    if os.path.exists(os.path.join(state, "tasks", "default", cid)):
        out.append("task directory")
    if hold("containers", "ls", "-q").stdout.split().count(cid.encode()):
        out.append("container record")
    if cid in tasks_json(hold):
        out.append("task")
    return out


def test_output_and_exit_status_and_nothing_left(hold, image, root):
    p = hold("run", "--rm", IMAGE, "t1", "sh", "-c", "echo out; echo err >&2; exit 7",
             check=False)
    assert p.returncode == 7, p.stderr
    assert p.stdout == b"out\n"
    assert p.stderr == b"err\n"
    assert leftovers(hold, root, "t1") == []


def test_argv_after_the_id_is_the_process_argv_dashes_included(hold, image):
    p = hold("run", "--rm", IMAGE, "t1", "sh", "-c", 'echo "$0|$1|$2"', "--rm", "-d",
             check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"--rm|-d|\n"


def test_stdin_is_forwarded_and_closed_at_its_end(hold, image):
    p = hold("run", "--rm", IMAGE, "t1", "sh", "-c", "tr a-z A-Z; echo done",
             input=b"hello\nworld\n")
    assert p.stdout == b"HELLO\nWORLD\ndone\n"


def test_signals_to_hold_reach_the_task(hold_bg, image):
    script = 'trap "echo got USR1; exit 3" USR1; trap "echo got TERM; exit 4" TERM; ' \
             "echo ready; while :; do sleep 0.05; done"
    p = hold_bg("run", "--rm", IMAGE, "t1", "sh", "-c", script)
    assert read_line(p.stdout) == b"ready\n"
    p.send_signal(signal.SIGUSR1)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 3, err
    assert out == b"got USR1\n"


def test_sigterm_to_hold_is_forwarded_not_fatal_to_hold(hold_bg, image):
    script = 'trap "echo got TERM; exit 4" TERM; echo ready; while :; do sleep 0.05; done'
    p = hold_bg("run", "--rm", IMAGE, "t1", "sh", "-c", script)
    assert read_line(p.stdout) == b"ready\n"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert (p.returncode, out) == (4, b"got TERM\n"), err


def test_hold_killed_with_9_leaves_the_task_running(hold, hold_bg, image, root):
    marker = os.path.join(root, "go")
    os.makedirs(marker)
    script = "echo started; while [ ! -e /go/now ]; do sleep 0.05; done; echo done"
    p = hold_bg("run", "--mount", f"type=bind,src={marker},dst=/go", IMAGE, "t1",
                "sh", "-c", script)
    assert read_line(p.stdout) == b"started\n"
    p.kill()
    p.wait(30)
    info = tasks_json(hold)["t1"]
    assert info["status"] == "RUNNING" and info["shim"] == "alive"
    open(os.path.join(marker, "now"), "w").close()
    wait_for(lambda: tasks_json(hold)["t1"]["status"] == "STOPPED", what="the task's exit")
    assert tasks_json(hold)["t1"]["exit_status"] == 0
    assert hold("tasks", "logs", "t1").stdout == b"started\ndone\n"
    hold("tasks", "rm", "t1")
    hold("containers", "rm", "t1")
    assert leftovers(hold, root, "t1") == []


def test_tasks_rm_force_while_run_rm_waits_both_succeed(hold, hold_bg, image, root):
    p = hold_bg("run", "--rm", IMAGE, "t1", "sh", "-c",
                "echo ready; while :; do sleep 0.05; done")
    assert read_line(p.stdout) == b"ready\n"
    r = hold("tasks", "rm", "--force", "t1", check=False)
    # Either remover may finish first; neither fails, and only one of them may not have
    # seen the exit recorded.
    assert r.returncode == 0, r.stderr
    assert r.stdout in (b"t1\t137\n", b"t1\t-\n")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 137, err
    assert leftovers(hold, root, "t1") == []


def test_detached_run_then_logs_after_the_detach(hold, image):
    hold("run", "-d", IMAGE, "t1", "sh", "-c", "echo one; echo two >&2; echo three")
    wait_for(lambda: tasks_json(hold)["t1"]["status"] == "STOPPED", what="the exit")
    p = hold("tasks", "logs", "t1")
    assert p.stdout == b"one\nthree\n" and p.stderr == b"two\n"
    stamped = hold("tasks", "logs", "--timestamps", "t1").stdout.splitlines()
    assert [line.split(b" ", 1)[1] for line in stamped] == [b"one", b"three"]
    assert all(line[:4].isdigit() and b"T" in line.split(b" ")[0] for line in stamped)


def test_rm_and_detach_together_are_refused(hold, image):
    p = hold("run", "--rm", "-d", IMAGE, "t1", "true", check=False)
    assert p.returncode == 2
    assert b"--rm and --detach" in p.stderr
    assert b"t1" not in hold("containers", "ls", "-q").stdout


def test_the_image_command_and_config_are_used(hold, client, busybox_rootfs, root):
    from cargohold.images.pack import PackOptions, pack

    pack(client, busybox_rootfs, "test/app:1",
         PackOptions(entrypoint=["sh", "-c"], cmd=['echo "$GREETING from $(pwd) as $(id -un)"'],
                     env=["GREETING=hello"], workdir="/tmp", user="app"))
    p = hold("run", "--rm", "test/app:1", "t1")
    assert p.stdout == b"hello from /tmp as app\n"
    p = hold("run", "--rm", "--env", "GREETING=hi", "--cwd", "/", "--user", "root",
             "test/app:1", "t1", "sh", "-c", 'echo "$GREETING from $(pwd) as $(id -un)"')
    assert p.stdout == b"hi from / as root\n"
