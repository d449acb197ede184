"""``hold tasks start|ls|attach|logs|kill|stop|exec|ps|pause|resume|rm|metrics``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from cargohold.cli.app import App
from cargohold.cli.containers import ARGV_SETTINGS
from cargohold.cli.groups import Group
from cargohold.cli.names import VERB_ALIASES
from cargohold.cli.output import emit_json, table
from cargohold.cli.params import format_option, quiet_option

if TYPE_CHECKING:
    from cargohold.tasks.control import Tasks


def _tasks(app: App) -> Tasks:
    from cargohold.tasks.control import Tasks

    return Tasks.of(app.config, app.namespace)


def stdin_fd() -> int | None:
    """Standard input's file descriptor, or None when there is none (shared with hold run)."""
    try:
        return sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return None


def require_terminal(stdin: int | None) -> None:
    """``-t`` attached needs a terminal on standard input: a terminal's input never ends, so
    piped input would leave the process waiting for ever (ctr refuses this too).
    """
    import os

    from cargohold.errors import InvalidArgument

    if stdin is not None and not os.isatty(stdin):
        raise InvalidArgument("--tty: standard input is not a terminal",
                              hint="drop -t to pipe input to the process, or run it from a "
                                   "terminal (or detach with -d and attach from one)")


def _exit(status: int) -> None:
    """Leave ``hold`` with the task's exit status (0 falls through to the usual exit)."""
    if status:
        raise SystemExit(status)


@click.group("tasks", cls=Group, aliases={**VERB_ALIASES, "metrics": ("metric",)})
def tasks() -> None:
    """Tasks: running containers, supervised by a shim each (ctr tasks, plus stop and logs)."""


@tasks.command("start")
@click.option("--detach", "-d", is_flag=True, help="Do not wait: return once it runs.")
@click.argument("tid", metavar="ID")
@click.pass_obj
def start(app: App, detach: bool, tid: str) -> None:
    """Start the task of container ID.

    Attached (the default), its output and exit status become hold's, stdin and signals are
    passed to it; hold may exit or be killed without touching the task.
    """
    from cargohold.tasks.run import start as start_task

    status = start_task(app.client, tid, detach=detach, stdin=stdin_fd())
    if status is not None:
        _exit(status)


@tasks.command("ls")
@quiet_option
@format_option
@click.pass_obj
def ls(app: App, quiet: bool, fmt: str) -> None:
    """List tasks: id, pid, RUNNING / PAUSED / STOPPED / CREATED, exit status."""
    found = _tasks(app).list()
    if quiet:
        for i in found:
            click.echo(i.id)
    elif fmt == "json":
        emit_json([i.to_json() for i in found])
    else:
        table(["TASK", "PID", "STATUS", "EXIT"],
              [[i.id, i.pid or "-", i.describe(),
                "-" if i.exit is None else i.exit.status] for i in found])


@tasks.command("attach")
@click.argument("tid", metavar="ID")
@click.pass_obj
def attach_cmd(app: App, tid: str) -> None:
    """Attach to the running task ID: its output from now on, stdin and signals to it; exit
    with its status when it exits. Earlier output is in 'hold tasks logs'.
    """
    _exit(_tasks(app).attach(tid, stdin=stdin_fd()))


@tasks.command("logs")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until it exits.")
@click.option("--timestamps", is_flag=True, help="Prefix each line with its time.")
@click.argument("tid", metavar="ID")
@click.pass_obj
def logs(app: App, follow: bool, timestamps: bool, tid: str) -> None:
    """Print the output of task ID (kept by its shim, also after a detach): stdout to
    stdout, stderr to stderr.
    """
    records = _tasks(app).logs(tid, follow=follow)
    out, err = sys.stdout.buffer, sys.stderr.buffer
    at_start = {"stdout": True, "stderr": True}
    for rec in records:
        f = err if rec.stream == "stderr" else out
        if timestamps and at_start[rec.stream]:
            f.write(rec.time.encode() + b" ")
        f.write(rec.data)
        at_start[rec.stream] = rec.data.endswith(b"\n")
        if follow:
            f.flush()
    out.flush()


@tasks.command("kill")
@click.option("--signal", "-s", "sig", default="TERM", show_default=True, metavar="SIGNAL",
              help="Signal name or number.")
@click.option("--all", "-a", "all_", is_flag=True, help="Signal every process of the task.")
@click.argument("tid", metavar="ID")
@click.pass_obj
def kill(app: App, sig: str, all_: bool, tid: str) -> None:
    """Send a signal to task ID (its init; --all: every process in it)."""
    from cargohold.tasks.control import parse_signal

    _tasks(app).kill(tid, parse_signal(sig), all=all_)


@tasks.command("stop")
@click.option("--timeout", "-t", "timeout", type=click.FloatRange(min=0), default=10.0,
              show_default=True, metavar="SECONDS",
              help="Wait this long after SIGTERM before SIGKILL (0: SIGKILL at once).")
@format_option
@click.argument("tid", metavar="ID")
@click.pass_obj
def stop(app: App, timeout: float, fmt: str, tid: str) -> None:
    """Stop task ID: SIGTERM, then SIGKILL to every process after --timeout, then wait."""
    from cargohold.types import format_time

    res = _tasks(app).stop(tid, timeout)
    if fmt == "json":
        emit_json(res.to_json())
        return
    for t, what in res.events:
        click.echo(f"{format_time(t)}  {what}")
    status = "unknown (its shim is gone)" if res.exit is None else res.exit.status
    click.echo(f"{tid}: stopped, exit status {status}")


@tasks.command("exec", context_settings=ARGV_SETTINGS)
@click.option("--exec-id", default="", metavar="ID", help="Name of the process [generated].")
@click.option("--tty", "-t", is_flag=True, help="Give the process a terminal.")
@click.argument("tid", metavar="TASK")
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="CMD [ARGS]...")
@click.pass_obj
def exec_cmd(app: App, exec_id: str, tty: bool, tid: str, args: tuple[str, ...]) -> None:
    """Run CMD in the running task TASK, attached; exit with its status. Everything after
    TASK is its argv, dashes included.
    """
    from cargohold.tasks.execs import run_exec

    stdin = stdin_fd()
    if tty:
        require_terminal(stdin)
    _exit(run_exec(_tasks(app), tid, list(args), exec_id=exec_id, tty=tty,
                   stdin=0 if stdin is None else stdin))


@tasks.command("ps")
@format_option
@click.argument("tid", metavar="ID")
@click.pass_obj
def ps(app: App, fmt: str, tid: str) -> None:
    """List the processes of task ID (host pids)."""
    procs = _tasks(app).ps(tid)
    if fmt == "json":
        emit_json([{"pid": p.pid, "command": p.command, "exec_id": p.exec_id or None,
                    "init": p.init} for p in procs])
        return
    table(["PID", "EXEC", "COMMAND"],
          [[p.pid, "init" if p.init else (p.exec_id or "-"), p.command] for p in procs])


@tasks.command("pause")
@click.argument("tid", metavar="ID")
@click.pass_obj
def pause(app: App, tid: str) -> None:
    """Freeze every process of task ID."""
    _tasks(app).pause(tid)


@tasks.command("resume")
@click.argument("tid", metavar="ID")
@click.pass_obj
def resume(app: App, tid: str) -> None:
    """Thaw the paused task ID."""
    _tasks(app).resume(tid)


@tasks.command("rm")
@click.option("--force", "-f", is_flag=True, help="Kill a running task first.")
@click.argument("tids", nargs=-1, required=True, metavar="ID...")
@click.pass_obj
def rm(app: App, force: bool, tids: tuple[str, ...]) -> None:
    """Remove stopped tasks (their rootfs unmounted, runc state, cgroup and files gone);
    prints each id and its exit status. The container stays.
    """
    t = _tasks(app)
    for tid in tids:
        info = t.rm(tid, force=force)
        st = "-" if info.exit is None else info.exit.status
        click.echo(f"{tid}\t{st}")


@tasks.command("metrics")
@format_option
@click.argument("tid", metavar="ID")
@click.pass_obj
def metrics(app: App, fmt: str, tid: str) -> None:
    """CPU, memory, pids and I/O of task ID's cgroup, read from the kernel now."""
    m = _tasks(app).metrics(tid)
    doc = m.to_json()
    if fmt == "json":
        emit_json({"id": tid, **doc})
        return
    table(["METRIC", "VALUE"], [[k, "-" if v is None else v] for k, v in doc.items()])
