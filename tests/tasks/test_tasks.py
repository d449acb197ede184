"""``hold tasks``: detach and attach, exec, stop escalation, kill, pause/resume, rm, a dead
shim — on real runc, each task cleaned up by the ``reap`` fixture even when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest

from tests.tasks.conftest import IMAGE, need_runc, read_line, state_of, tasks_json, wait_for

pytestmark = pytest.mark.peer

LOOP = "while :; do sleep 0.05; done"


@pytest.fixture(autouse=True)
def _runc():
    need_runc()


def logs(hold, tid: str) -> bytes:
    return hold("tasks", "logs", tid).stdout


def started(hold, tid: str, text: bytes = b"ready\n") -> None:
    wait_for(lambda: text in logs(hold, tid), what=f"{text!r} in the log of {tid}")


def test_create_then_start_detached_and_attached(hold, image):
    hold("containers", "create", IMAGE, "c1", "sh", "-c", "echo hello; exit 5")
    assert tasks_json(hold) == {}
    p = hold("tasks", "start", "c1", check=False)
    assert (p.returncode, p.stdout) == (5, b"hello\n")
    p = hold("tasks", "start", "c1", check=False)
    assert p.returncode == 1 and b"task c1: already exists (STOPPED" in p.stderr
    assert b"hold tasks rm c1" in p.stderr
    hold("tasks", "rm", "c1")
    hold("tasks", "start", "-d", "c1")
    wait_for(lambda: tasks_json(hold)["c1"]["status"] == "STOPPED", what="exit")
    assert tasks_json(hold)["c1"]["exit_status"] == 5
    assert logs(hold, "c1") == b"hello\n"


def test_attach_from_a_new_process_and_detach_by_dying(hold, hold_bg, image):
    hold("run", "-d", IMAGE, "t1", "sh", "-c",
         'echo ready; while read line; do echo "got $line"; done; echo eof')
    started(hold, "t1")
    a = hold_bg("tasks", "attach", "t1", stdin=subprocess.PIPE)
    a.stdin.write(b"one\n")
    a.stdin.flush()
    assert read_line(a.stdout) == b"got one\n"
    a.kill()  # the attached client dies: the task must not notice
    a.wait(30)
    assert tasks_json(hold)["t1"]["status"] == "RUNNING"
    b = hold_bg("tasks", "attach", "t1", stdin=subprocess.PIPE)
    b.stdin.write(b"two\n")
    b.stdin.flush()
    assert read_line(b.stdout) == b"got two\n"
    b.stdin.close()  # the end of an attach's input is not the end of the task's
    assert tasks_json(hold)["t1"]["status"] == "RUNNING"
    hold("tasks", "kill", "--signal", "KILL", "t1")
    assert b.wait(60) == 137
    assert logs(hold, "t1") == b"ready\ngot one\ngot two\n"


def test_logs_follow_until_the_exit(hold, image):
    hold("run", "-d", IMAGE, "t1", "sh", "-c",
         "for i in 1 2 3; do echo line $i; sleep 0.2; done; echo last >&2")
    p = hold("tasks", "logs", "-f", "t1")
    assert p.stdout == b"line 1\nline 2\nline 3\n" and p.stderr == b"last\n"
    assert tasks_json(hold)["t1"]["status"] == "STOPPED"


def test_exec_status_output_and_id_in_ps(hold, hold_bg, image):
    hold("run", "-d", IMAGE, "t1", "sh", "-c", f"echo ready; {LOOP}")
    started(hold, "t1")
    p = hold("tasks", "exec", "t1", "sh", "-c", "echo in; echo err >&2; exit 3", check=False)
    assert (p.returncode, p.stdout, p.stderr) == (3, b"in\n", b"err\n")
    e = hold_bg("tasks", "exec", "--exec-id", "sleeper", "t1", "sh", "-c",
                "echo up; exec sleep 100")
    assert read_line(e.stdout) == b"up\n"
    procs = json.loads(hold("tasks", "ps", "--format", "json", "t1").stdout)
    assert [p["exec_id"] for p in procs if p["command"].startswith("sleep 100")] == ["sleeper"]
    assert sum(p["init"] for p in procs) == 1
    again = hold("tasks", "exec", "--exec-id", "sleeper", "t1", "true", check=False)
    assert again.returncode == 1 and b"exec sleeper of task t1: is running" in again.stderr
    g = hold_bg("tasks", "exec", "t1", "sh", "-c", "echo up; exec sleep 101")
    assert read_line(g.stdout) == b"up\n"
    procs = json.loads(hold("tasks", "ps", "--format", "json", "t1").stdout)
    generated = [p["exec_id"] for p in procs if p["command"].startswith("sleep 101")]
    assert len(generated) == 1 and re.fullmatch("[0-9a-f]{12}", generated[0]), generated
    e.send_signal(signal.SIGTERM)  # forwarded through runc to the exec'd sleep
    assert e.wait(60) == 143
    g.send_signal(signal.SIGTERM)
    assert g.wait(60) == 143
    nosuch = hold("tasks", "exec", "t1", "no-such-binary", check=False)
    assert nosuch.returncode == 1
    assert b"task t1: exec failed: " in nosuch.stderr and b"no-such-binary" in nosuch.stderr
    assert b"exec failed: exec failed" not in nosuch.stderr
    assert b"runc --root" in nosuch.stderr  # the command that failed


def test_stop_sends_term_then_kill_after_the_timeout_in_that_order(hold, image):
    hold("run", "-d", IMAGE, "t1", "sh", "-c", f'trap "echo term" TERM; echo ready; {LOOP}')
    started(hold, "t1")
    res = json.loads(hold("tasks", "stop", "--timeout", "1", "--format", "json", "t1").stdout)
    events = [e["event"] for e in res["events"]]
    assert events == ["sent SIGTERM", "still running after 1s", "sent SIGKILL", "exited"]
    times = [e["time"] for e in res["events"]]
    assert times == sorted(times)
    assert times[2] - times[0] >= 1_000_000_000  # KILL only after the whole timeout
    assert res["exit_status"] == 137 and res["killed"] is True
    # The task saw the TERM (and ignored it) between the TERM and the KILL.
    stamped = hold("tasks", "logs", "--timestamps", "t1").stdout.splitlines()
    term = [line.split(b" ")[0].decode() for line in stamped if line.endswith(b"term")]
    from cargohold.types import parse_time

    assert len(term) == 1 and times[0] <= parse_time(term[0]) <= times[2]
    assert tasks_json(hold)["t1"]["exit_status"] == 137


def test_stop_of_a_task_that_obeys_term_needs_no_kill(hold, image):
    hold("run", "-d", IMAGE, "t1", "sh", "-c", f'trap "exit 0" TERM; echo ready; {LOOP}')
    started(hold, "t1")
    res = json.loads(hold("tasks", "stop", "--format", "json", "t1").stdout)
    assert [e["event"] for e in res["events"]] == ["sent SIGTERM", "exited"]
    assert res["exit_status"] == 0 and res["killed"] is False


def test_kill_default_term_named_signals_and_all(hold, image):
    hold("run", "-d", IMAGE, "t1", "sh", "-c", f'trap "exit 9" TERM; echo ready; {LOOP}')
    started(hold, "t1")
    hold("tasks", "kill", "t1")
    wait_for(lambda: tasks_json(hold)["t1"]["status"] == "STOPPED", what="exit")
    assert tasks_json(hold)["t1"]["exit_status"] == 9
    p = hold("tasks", "kill", "t1", check=False)
    assert p.returncode == 1 and b"task t1: not running (STOPPED, exit status 9)" in p.stderr
    hold("run", "-d", IMAGE, "t2", "sh", "-c", f"sleep 1000 & echo ready; {LOOP}")
    started(hold, "t2")
    hold("tasks", "kill", "--all", "--signal", "SIGKILL", "t2")
    wait_for(lambda: tasks_json(hold)["t2"]["status"] == "STOPPED", what="exit")
    assert tasks_json(hold)["t2"]["exit_status"] == 137
    bad = hold("tasks", "kill", "--signal", "NOPE", "t2", check=False)
    assert bad.returncode == 2 and b"signal 'NOPE': unknown" in bad.stderr


def test_pause_and_resume_freeze_for_real(hold, image, root):
    from cargohold.tasks import cgroups
    from cargohold.tasks.api import cgroups_path

    hold("run", "-d", IMAGE, "t1", "sh", "-c", f"echo ready; {LOOP}")
    started(hold, "t1")
    hold("tasks", "pause", "t1")
    assert tasks_json(hold)["t1"]["status"] == "PAUSED"
    cg = cgroups_path(state_of(root), "default", "t1")
    freezer = [d for d in cgroups.exists_anywhere(cg) if "/freezer/" in d]
    v2 = [d for d in cgroups.exists_anywhere(cg) if os.path.exists(f"{d}/cgroup.freeze")]
    if freezer:
        assert open(f"{freezer[0]}/freezer.state").read().strip() == "FROZEN"
    else:
        assert v2 and open(f"{v2[0]}/cgroup.freeze").read().strip() == "1"
    pid = tasks_json(hold)["t1"]["pid"]
    state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    assert state in ("D", "S", "T")  # frozen tasks sleep in the freezer
    again = hold("tasks", "pause", "t1", check=False)
    assert again.returncode == 1 and b"is PAUSED, not RUNNING" in again.stderr
    hold("tasks", "resume", "t1")
    assert tasks_json(hold)["t1"]["status"] == "RUNNING"
    if freezer:
        assert open(f"{freezer[0]}/freezer.state").read().strip() == "THAWED"
    # A paused task stops too: it is thawed first.
    hold("tasks", "pause", "t1")
    res = json.loads(hold("tasks", "stop", "-t", "0", "--format", "json", "t1").stdout)
    assert [e["event"] for e in res["events"]] == ["resumed", "sent SIGKILL", "exited"]


def test_rm_refuses_a_running_task_and_force_removes_everything(hold, image, root):
    from tests.tasks.test_run import leftovers

    hold("run", "-d", IMAGE, "t1", "sh", "-c", f"echo ready; {LOOP}")
    started(hold, "t1")
    p = hold("tasks", "rm", "t1", check=False)
    assert p.returncode == 1 and b"task t1: is RUNNING" in p.stderr
    assert b"hold tasks rm --force t1" in p.stderr
    p = hold("containers", "rm", "t1", check=False)
    assert p.returncode == 1 and b"container t1: has a task" in p.stderr
    assert hold("tasks", "rm", "--force", "t1").stdout == b"t1\t137\n"
    assert b"t1" in hold("containers", "ls", "-q").stdout  # the container stays
    hold("containers", "rm", "t1")
    assert leftovers(hold, root, "t1") == []
    assert subprocess.run(["runc", "--root", f"{state_of(root)}/runc/default", "list", "-q"],
                          capture_output=True, text=True).stdout == ""
    p = hold("tasks", "rm", "t1", check=False)
    assert p.returncode == 1 and b"task t1: not found" in p.stderr


def test_a_killed_shim_is_reported_and_its_task_still_killable(hold, image, root):
    from tests.tasks.test_run import leftovers

    hold("run", "-d", IMAGE, "t1", "sh", "-c", f"echo ready; {LOOP}")
    started(hold, "t1")
    info = tasks_json(hold)["t1"]
    os.kill(info["shim_pid"], signal.SIGKILL)
    wait_for(lambda: tasks_json(hold)["t1"]["shim"] == "gone", what="the shim's death")
    info = tasks_json(hold)["t1"]
    assert info["status"] == "RUNNING" and "shim gone" in info["notes"]
    assert b"RUNNING (shim gone)" in hold("tasks", "ls").stdout
    a = hold("tasks", "attach", "t1", check=False)
    assert a.returncode == 1 and b"its shim does not answer" in a.stderr
    assert b"ready" in logs(hold, "t1")  # what was written before stays readable
    hold("tasks", "kill", "--signal", "KILL", "t1")
    wait_for(lambda: tasks_json(hold)["t1"]["status"] == "STOPPED", what="the kill")
    info = tasks_json(hold)["t1"]
    assert info["exit_status"] is None and "exit status unknown" in info["notes"]
    assert hold("tasks", "rm", "t1").stdout == b"t1\t-\n"
    hold("containers", "rm", "t1")
    assert leftovers(hold, root, "t1") == []


def test_the_log_is_capped_as_configured(hold, image, root):
    with open(os.path.join(root, "_no_config.toml"), "w") as f:
        f.write("[tasks]\nlog_size_max = 4096\n")
    # Printed faster than the shim reads: each read holds many lines.
    hold("run", "-d", IMAGE, "t1", "sh", "-c",
         "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done")
    wait_for(lambda: tasks_json(hold)["t1"]["status"] == "STOPPED", what="exit")
    d = os.path.join(state_of(root), "tasks", "default", "t1")
    assert os.path.getsize(os.path.join(d, "log")) <= 4096
    assert os.path.getsize(os.path.join(d, "log.1")) <= 4096
    kept = logs(hold, "t1").splitlines()
    numbers = [int(line.split()[1]) for line in kept]
    assert numbers[-1] == 1999 and numbers == list(range(numbers[0], 2000))


def test_metrics_are_read_from_the_cgroup(hold, image, root):
    from cargohold.tasks import cgroups
    from cargohold.tasks.api import cgroups_path

    # Three processes that stay: the figures can be checked against the kernel's.
    hold("run", "-d", IMAGE, "t1", "sh", "-c",
         "sleep 1000 & sleep 1000 & echo ready; i=0; while [ $i -lt 20000 ]; do "
         "i=$((i+1)); done; wait")
    started(hold, "t1")
    m = json.loads(hold("tasks", "metrics", "--format", "json", "t1").stdout)
    cg = cgroups_path(state_of(root), "default", "t1")
    assert m["id"] == "t1" and m["cgroup_version"] in (1, 2) and m["cgroup"].endswith(cg)
    assert m["pids_current"] == len(json.loads(hold("tasks", "ps", "--format", "json",
                                                    "t1").stdout)) == 3
    assert 0 < m["memory_current"] <= m["memory_peak"]
    # CPU time only grows: the kernel's own counter, read after, is at least as large.
    if m["cgroup_version"] == 1:
        acct = cgroups.cgroup_dirs(tasks_json(hold)["t1"]["pid"])[1]["cpuacct"]
        later = int(open(f"{acct}/cpuacct.usage").read()) // 1000
    else:
        stat = open(f"{m['cgroup']}/cpu.stat").read().split()
        later = int(stat[stat.index("usage_usec") + 1])
    assert 0 < m["cpu_usage_usec"] <= later
    table = hold("tasks", "metrics", "t1").stdout.decode()
    assert "memory_current" in table and "pids_current" in table


def on_terminal(hold_bg, *args: str, lines: int | None = None,
                size: tuple[int, int] | None = None) -> tuple[int, list[bytes]]:
    """Run ``hold *args`` with a new terminal as its stdio (``size``: rows, cols) and read it:
    to its end, or (``lines``) until hold has exited and that many lines are in. Returns
    hold's exit status and the lines, without carriage returns.
    """
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    if size:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    try:
        p = hold_bg(*args, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        slave = -1
        out = b""
        while lines is None or p.poll() is None or out.count(b"\n") < lines:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        status = p.wait(60)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return status, out.replace(b"\r", b"").split(b"\n")


def test_tty_task_gets_a_terminal_with_the_window_size(hold, hold_bg, image):
    status, lines = on_terminal(hold_bg, "run", "-t", "--rm", IMAGE, "t1", "sh", "-c",
                                "tty; stty size; echo $TERM", lines=3, size=(33, 101))
    assert status == 0
    assert lines[0].startswith(b"/dev/pts/")
    assert lines[1] == b"33 101"
    assert lines[2] == b"xterm"


def test_a_created_task_starts_later_and_is_removable(hold, client, image):
    from cargohold.tasks import containers
    from cargohold.tasks.launch import launch
    from cargohold.tasks.spec import SpecOptions

    containers.create(client, IMAGE, "c1", containers.CreateOptions(
        spec=SpecOptions(args=["sh", "-c", "echo late"])))
    ready = launch(client, "c1", start=False)  # as a start that hold died in the middle of
    assert ready["ok"] and ready["started"] is False
    assert tasks_json(hold)["c1"]["status"] == "CREATED"
    assert b"CREATED" in hold("tasks", "ls").stdout
    hold("tasks", "start", "-d", "c1")  # the waiting shim starts it
    wait_for(lambda: tasks_json(hold)["c1"]["status"] == "STOPPED", what="exit")
    assert logs(hold, "c1") == b"late\n"
    hold("tasks", "rm", "c1")
    launch(client, "c1", start=False)
    assert hold("tasks", "rm", "c1").stdout == b"c1\t137\n"  # a created task goes at once


def test_exec_with_a_terminal(hold, hold_bg, image):
    hold("run", "-d", IMAGE, "t1", "sh", "-c", f"echo ready; {LOOP}")
    started(hold, "t1")
    status, lines = on_terminal(hold_bg, "tasks", "exec", "-t", "t1", "sh", "-c",
                                "tty; echo $TERM; exit 6")
    assert status == 6
    assert lines[0].startswith(b"/dev/pts/") and lines[1] == b"xterm"


def test_namespaces_keep_tasks_apart(hold, image):
    hold("run", "-d", IMAGE, "t1", "sh", "-c", f"echo ready; {LOOP}")
    started(hold, "t1")
    assert hold("-n", "other", "tasks", "ls", "-q").stdout == b""
    p = hold("-n", "other", "tasks", "kill", "t1", check=False)
    assert p.returncode == 1 and b"not found in namespace other" in p.stderr
    table = hold("tasks", "ls").stdout.decode().splitlines()
    assert table[0].split() == ["TASK", "PID", "STATUS", "EXIT"]
    assert table[1].split()[0] == "t1" and table[1].split()[2:] == ["RUNNING", "-"]


def test_tty_with_piped_input_is_refused_before_anything_is_made(hold, image):
    """A terminal's input never ends, so `-t` attached with piped input would wait for ever:
    refused (as ctr does), with nothing created; detached, or without -t, it runs."""
    for argv in (["run", "-t", IMAGE, "t1", "cat"], ["run", "--rm", "-t", IMAGE, "t1", "cat"]):
        p = hold(*argv, input=b"x\n", check=False, timeout=30)
        assert p.returncode == 2, p.stderr
        assert p.stderr.decode().splitlines()[0] == \
            "hold: --tty: standard input is not a terminal"
        assert hold("containers", "ls", "-q").stdout == b"" and tasks_json(hold) == {}
    p = hold("run", "--rm", IMAGE, "t1", "cat", input=b"x\n", timeout=30)
    assert p.stdout == b"x\n"
    hold("run", "-d", IMAGE, "t2", "sh", "-c", f"echo ready; {LOOP}")
    started(hold, "t2")
    p = hold("tasks", "exec", "-t", "t2", "cat", input=b"x\n", check=False, timeout=30)
    assert p.returncode == 2 and b"--tty: standard input is not a terminal" in p.stderr
    hold("tasks", "rm", "--force", "t2")
    hold("containers", "rm", "t2")
