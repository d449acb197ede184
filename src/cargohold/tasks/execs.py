"""``hold tasks exec``: one more process in a running task, in the foreground.

:func:`run_exec` writes the process (the container's own ``process`` with the new argv and,
with ``tty``, a terminal: :func:`cargohold.tasks.spec.exec_process`) to
``execs/<exec-id>.json`` and runs ``runc exec --process … --pid-file execs/<exec-id>.pid`` with
the caller's stdio: runc copies a terminal itself and waits for the process, so its exit
status is the process's. Signals that reach the caller (those of
:data:`cargohold.tasks.attach.FORWARDED`) are passed to runc, which passes them on. While it
runs, ``hold tasks ps`` shows the exec id beside the pid; both files go when it ends.

An exec id is generated when none is given; one in use by a running process raises
AlreadyExists. A task that is not running raises FailedPrecondition. runc's own failure (no
such executable, …) raises RuncError with runc's message and the command.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
from collections.abc import Callable

from cargohold.errors import AlreadyExists, FailedPrecondition
from cargohold.tasks import spec as specs
from cargohold.tasks.api import Status, read_json_file, read_pid, start_ticks
from cargohold.tasks.attach import drain, forwarding
from cargohold.tasks.control import Tasks
from cargohold.tasks.runc import RuncFailed, join_message, read_log, runc_message
from cargohold.types import validate_identifier


def run_exec(tasks: Tasks, tid: str, args: list[str], *, exec_id: str = "", tty: bool = False,
             stdin: int = 0, stdout: int = 1, stderr: int = 2) -> int:
    """Run ``args`` in task ``tid`` and return its exit status (see the module docstring)."""
    info = tasks.get(tid)
    if info.status != Status.RUNNING:
        raise FailedPrecondition(f"task {tid}: is {info.describe()}, not RUNNING",
                                 hint="exec runs only in a running task; see 'hold tasks ls'")
    exec_id = exec_id or secrets.token_hex(6)
    validate_identifier("exec id", exec_id)
    p = tasks.paths(tid)
    spec = read_json_file(os.path.join(p.bundle, "config.json")) or {}
    proc = specs.exec_process(spec, args, tty=tty)
    d = p.file("execs")
    os.makedirs(d, exist_ok=True)
    base = os.path.join(d, exec_id)
    pid_file, proc_file, log = base + ".pid", base + ".json", base + ".log"
    try:
        fd = os.open(proc_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        old = read_pid(pid_file)
        if old and start_ticks(old) >= 0:
            raise AlreadyExists(f"exec {exec_id} of task {tid}: is running (pid {old})",
                                hint="choose another --exec-id, or leave it out") from None
        os.unlink(proc_file)  # left by an exec that was killed
        fd = os.open(proc_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(proc, f)
        argv = tasks.runc.exec_argv(tid, proc_file, tty=tty, pid_file=pid_file, log=log)
        child = tasks.runc.runner.spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr)

        def send(signum: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

        with forwarding(send) as wake:
            _wait(child, wake, send)
        rc = int(child.returncode)
        if rc != 0:
            # runc's own error in its log, when runc (not the process) failed
            err = runc_message(read_log(log))
            if err:
                raise RuncFailed(join_message(f"task {tid}: exec failed", err), argv)
        return rc if rc >= 0 else 128 - rc
    finally:
        for f in (proc_file, pid_file, log):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f)


def _wait(child: subprocess.Popen[bytes], wake: int, send: Callable[[int], None]) -> None:
    """Wait for ``child``, passing the signals that arrive meanwhile to ``send``."""
    import selectors

    try:
        pidfd = os.pidfd_open(child.pid)
    except OSError:  # an old kernel: look every 50 ms
        pidfd = -1
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(wake, selectors.EVENT_READ)
            if pidfd >= 0:
                sel.register(pidfd, selectors.EVENT_READ)
            while child.poll() is None:
                for key, _ in sel.select(None if pidfd >= 0 else 0.05):
                    if key.fd == wake:
                        drain(wake, send, None)
    finally:
        if pidfd >= 0:
            os.close(pidfd)
