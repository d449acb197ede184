"""The tasks of one namespace: list, kill, stop, pause, resume, ps, wait, remove, metrics.

:class:`Tasks` needs no database: a task is its directory under the state directory
(:mod:`.api`) plus runc's state. Status comes from ``exit.json`` when the shim wrote one
(STOPPED with the exit status), else from ``runc list`` (one call for the whole namespace).
A shim that is gone is reported as such (``RUNNING (shim gone)``): its task is still found by
runc and every command here still works on it, by runc directly; only the exit status of a
task whose shim died is unknown.

Signals go through ``runc kill`` (``--all``: every process of the container). ``stop`` sends
SIGTERM, waits ``timeout`` seconds for the exit, then SIGKILL to every process and waits
again (timeout 0: SIGKILL at once, as CRI's StopContainer), and returns the events in order.
``rm`` refuses a running task unless ``force`` (then runc kills it), unmounts the rootfs,
waits for the shim (which deletes runc's container, and so its cgroup, once the exit is
recorded; ``rm`` deletes it when the shim could not) and removes the directory; a repeat
raises NotFound. Two removals at once (``hold tasks rm --force`` while ``hold run --rm``
waits for the exit) both succeed; the one that finds the exit recorded reports it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal as signals
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from cargohold._record import field, record, replace
from cargohold.errors import FailedPrecondition, InvalidArgument, NotFound
from cargohold.tasks.api import (
    Exit,
    Status,
    TaskInfo,
    TaskPaths,
    read_exit,
    read_json_file,
    read_pid,
    runc_root,
    settings,
    shim_alive,
    start_ticks,
    task_ids,
)
from cargohold.tasks.runc import Runc, RuncRunner

if TYPE_CHECKING:
    from cargohold.tasks.logs import Record

_RUNC_STATUS = {"created": Status.CREATED, "running": Status.RUNNING,
                "paused": Status.PAUSED, "pausing": Status.PAUSED, "stopped": Status.STOPPED}
POLL = 0.02
KILL_WAIT = 30.0  # how long stop waits after SIGKILL before it gives up


def parse_signal(text: str | int) -> int:
    """``TERM``, ``SIGTERM``, ``term`` or ``15`` → 15; InvalidArgument otherwise."""
    if isinstance(text, int) or str(text).isdigit():
        n = int(text)
        if 0 < n < signals.NSIG:
            return n
    else:
        name = str(text).upper()
        sig = signals.Signals.__members__.get(name if name.startswith("SIG") else "SIG" + name)
        if sig is not None:
            return int(sig)
    raise InvalidArgument(f"signal {text!r}: unknown", hint="give a name (TERM, KILL, HUP) or "
                                                           "a number")


@record
class StopResult:
    """What ``stop`` did: ``events`` are (time ns, what) in order; ``exit`` may be unknown
    (a task whose shim died).
    """

    id: str
    events: list[tuple[int, str]] = field(default_factory=list)
    exit: Exit | None = None
    killed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "events": [{"time": t, "event": e} for t, e in self.events],
                "exit_status": self.exit.status if self.exit else None,
                "exited_at": self.exit.exited_at if self.exit else None,
                "killed": self.killed}


@record(frozen=True)
class Proc:
    """One process of ``hold tasks ps``."""

    pid: int
    command: str
    exec_id: str = ""  # set for processes started by 'hold tasks exec'
    init: bool = False


class Tasks:
    """The tasks of namespace ``ns`` under state directory ``state``."""

    def __init__(self, state: str, ns: str, *, runc_binary: str = "runc",
                 runner: RuncRunner | None = None) -> None:
        self.state = state
        self.ns = ns
        self.runc = Runc(runc_root(state, ns), binary=runc_binary, runner=runner)

    @classmethod
    def of(cls, config: Any, namespace: str) -> Tasks:
        """The tasks of ``namespace`` with the state directory and runtime of ``config``."""
        return cls(config.state, namespace, runc_binary=settings(config)[0])

    def paths(self, tid: str) -> TaskPaths:
        return TaskPaths(self.state, self.ns, tid)

    # --- reading -------------------------------------------------------------------------------
    def _runc_states(self) -> dict[str, dict[str, Any]]:
        if not os.path.isdir(self.runc.root):
            return {}
        return self.runc.list()

    def _info(self, tid: str, ex: Exit | None, states: dict[str, dict[str, Any]]) -> TaskInfo:
        p = self.paths(tid)
        shim_pid, alive = shim_alive(p)
        cfg = read_json_file(p.file("shim.json")) or {}
        st = states.get(tid)
        notes: list[str] = []
        if ex is not None:
            status, pid = Status.STOPPED, ex.pid
        elif st is not None:
            status, pid = _RUNC_STATUS.get(st.get("status", ""), Status.UNKNOWN), \
                int(st.get("pid") or 0)
            if not alive:
                notes.append("shim gone")
                if status == Status.STOPPED:
                    notes.append("exit status unknown")
        else:
            status, pid = Status.UNKNOWN, read_pid(p.file("init.pid"))
            notes.append("start did not finish" if not alive else "being created")
        return TaskInfo(tid, self.ns, status, pid, ex, shim_pid, alive, bool(cfg.get("tty")),
                        tuple(notes))

    def existing(self, tid: str) -> TaskPaths:
        """The paths of task ``tid``; NotFound (with a hint) when it has no task directory."""
        p = self.paths(tid)
        if not os.path.isdir(p.dir):
            raise NotFound(f"task {tid}: not found in namespace {self.ns}",
                           hint=f"start it with 'hold tasks start {tid}', or list tasks with "
                                "'hold tasks ls'")
        return p

    def get(self, tid: str) -> TaskInfo:
        """The task ``tid``; NotFound (with a hint) when it has no task directory."""
        p = self.existing(tid)
        # A recorded exit says all there is: no need to ask runc.
        ex = read_exit(p)
        return self._info(tid, ex, {} if ex is not None else self._runc_states())

    def list(self) -> list[TaskInfo]:
        ids = task_ids(self.state, self.ns)
        if not ids:
            return []
        exits = {t: read_exit(self.paths(t)) for t in ids}
        states = self._runc_states() if None in exits.values() else {}
        return [self._info(t, ex, states) for t, ex in exits.items()]

    def _require_live(self, tid: str, what: str) -> TaskInfo:
        info = self.get(tid)
        if info.status not in (Status.RUNNING, Status.PAUSED, Status.CREATED):
            extra = f", exit status {info.exit_status}" if info.exit else ""
            raise FailedPrecondition(
                f"task {tid}: not running ({info.status.value}{extra}); cannot {what}",
                hint=f"see its output with 'hold tasks logs {tid}'; remove it with "
                     f"'hold tasks rm {tid}'")
        return info

    # --- signals -------------------------------------------------------------------------------
    def kill(self, tid: str, sig: int = signals.SIGTERM, *, all: bool = False) -> None:
        """Send ``sig`` to the task's init (``all``: every process in it)."""
        self._require_live(tid, "send a signal")
        self.runc.kill(tid, sig, all=all)

    def wait(self, tid: str, timeout: float | None = None) -> tuple[bool, Exit | None]:
        """Wait until the task has stopped: ``(True, exit)``, exit None when unknown (its
        shim died); ``(False, None)`` after ``timeout`` seconds.
        """
        p = self.paths(tid)
        deadline = None if timeout is None else time.monotonic() + timeout
        checked_runc = 0.0
        while True:
            ex = read_exit(p)
            if ex is not None:
                return True, ex
            pid, alive = shim_alive(p)
            now = time.monotonic()
            if not alive and now - checked_runc > 0.2:
                checked_runc = now
                # No shim to write the exit: runc's state is all there is.
                st = self.runc.state(tid)
                if read_exit(p) is not None:
                    continue
                if st is None or st.get("status") == "stopped":
                    return True, None
            if not os.path.isdir(p.dir):
                raise NotFound(f"task {tid}: removed while waiting for it")
            if deadline is not None and now >= deadline:
                return False, None
            time.sleep(POLL)

    def stop(self, tid: str, timeout: float = 10.0) -> StopResult:
        """SIGTERM, then SIGKILL after ``timeout`` seconds, then wait (see the module)."""
        if timeout < 0:
            raise InvalidArgument(f"timeout {timeout:g}: negative")
        info = self._require_live(tid, "stop it")
        res = StopResult(tid)
        if info.status == Status.PAUSED:
            # A frozen process cannot act on a signal (not even die): thaw it first.
            t = time.time_ns()
            self.runc.resume(tid)
            res.events.append((t, "resumed"))
        if timeout > 0:
            # Each event is stamped before the call that makes it: a signal is delivered
            # during ``runc kill``, so the task may well exit before that call returns.
            t = time.time_ns()
            self.runc.kill(tid, signals.SIGTERM)
            res.events.append((t, "sent SIGTERM"))
            done, ex = self.wait(tid, timeout)
            if done:
                res.exit = ex
                res.events.append((ex.exited_at if ex else time.time_ns(), "exited"))
                return res
            res.events.append((time.time_ns(), f"still running after {timeout:g}s"))
        t = time.time_ns()
        with contextlib.suppress(FailedPrecondition):  # it may exit just now: fine
            self.runc.kill(tid, signals.SIGKILL, all=True)
        res.killed = True
        res.events.append((t, "sent SIGKILL"))
        done, ex = self.wait(tid, KILL_WAIT)
        if not done:
            raise FailedPrecondition(f"task {tid}: still running {KILL_WAIT:g}s after SIGKILL",
                                     hint="a process may be stuck in the kernel (state D); "
                                          "see 'hold tasks ps'")
        res.exit = ex
        res.events.append((ex.exited_at if ex else time.time_ns(), "exited"))
        return res

    def pause(self, tid: str) -> None:
        info = self._require_live(tid, "pause it")
        if info.status != Status.RUNNING:
            raise FailedPrecondition(f"task {tid}: is {info.status.value}, not RUNNING",
                                     hint=f"see 'hold tasks ls'; resume a paused task with "
                                          f"'hold tasks resume {tid}'")
        self.runc.pause(tid)

    def resume(self, tid: str) -> None:
        info = self._require_live(tid, "resume it")
        if info.status != Status.PAUSED:
            raise FailedPrecondition(f"task {tid}: is {info.status.value}, not PAUSED",
                                     hint="only a task paused with 'hold tasks pause' resumes")
        self.runc.resume(tid)

    # --- processes -----------------------------------------------------------------------------
    def ps(self, tid: str) -> list[Proc]:
        info = self._require_live(tid, "list its processes")
        execs = self.exec_pids(tid)
        out = []
        for pid in self.runc.ps(tid):
            out.append(Proc(pid, _cmdline(pid), execs.get(pid, ""), pid == info.pid))
        return out

    def exec_pids(self, tid: str) -> dict[int, str]:
        """pid -> exec id of the processes 'hold tasks exec' runs in the task now."""
        d = self.paths(tid).file("execs")
        out: dict[int, str] = {}
        with contextlib.suppress(FileNotFoundError):
            for n in os.listdir(d):
                if n.endswith(".pid"):
                    pid = read_pid(os.path.join(d, n))
                    if pid and start_ticks(pid) >= 0:
                        out[pid] = n[:-4]
        return out

    def logs(self, tid: str, *, follow: bool = False) -> Iterator[Record]:
        """The task's output records (:mod:`.logs`); ``follow`` keeps yielding new ones
        until the task has exited (or its shim is gone, so nothing more can come).
        """
        from cargohold.tasks import logs as logmod

        p = self.existing(tid)  # its status is not needed: no 'runc list' for a log
        if not follow:
            return logmod.read(p.file("log"))

        def done() -> bool:
            return read_exit(p) is not None or not shim_alive(p)[1]

        return logmod.follow(p.file("log"), done)

    def attach(self, tid: str, *, stdin: int | None = 0, stdout: int = 1,
               stderr: int = 2) -> int:
        """Attach to the running task (:func:`cargohold.tasks.attach.attach`; the end of
        ``stdin`` does not close the task's) and return its exit status.
        """
        from cargohold.tasks.attach import attach

        info = self.get(tid)
        if info.exit is not None:
            raise FailedPrecondition(f"task {tid}: exited with status {info.exit.status}",
                                     hint=f"see its output with 'hold tasks logs {tid}'")
        return attach(self.paths(tid), stdin=stdin, stdout=stdout, stderr=stderr,
                      close_stdin=False, tty=info.tty)

    def metrics(self, tid: str) -> Any:
        from cargohold.tasks import cgroups

        info = self._require_live(tid, "read its metrics")
        return cgroups.read(info.pid)

    # --- removal -------------------------------------------------------------------------------
    def rm(self, tid: str, *, force: bool = False,
           meanwhile: Callable[[], object] | None = None) -> TaskInfo:
        """Remove the task (see the module docstring); returns what it was, with the exit
        status its shim recorded (also for a task killed by ``force``).

        ``meanwhile`` runs once the rootfs is unmounted, while the shim finishes (``hold run
        --rm`` removes the container and its snapshot then).
        """
        from cargohold import mount as kmount

        info = self.get(tid)
        p = self.paths(tid)
        if info.status in (Status.RUNNING, Status.PAUSED) and not force:
            raise FailedPrecondition(
                f"task {tid}: is {info.status.value}",
                hint=f"stop it first with 'hold tasks stop {tid}', or kill and remove it "
                     f"with 'hold tasks rm --force {tid}'")
        if info.status != Status.STOPPED:
            self.runc.delete(tid, force=True)  # kills it; a live shim then records the exit
        kmount.unmount_all(p.rootfs)
        if meanwhile is not None:
            meanwhile()
        self._end_shim(p)
        ex = read_exit(p)
        if ex is None or not ex.runc_deleted:
            self.runc.delete(tid, force=True)  # the shim could not (it died): do it here
        if ex is not None:
            info = replace(info, status=Status.STOPPED, exit=ex)
        spec = read_json_file(os.path.join(p.bundle, "config.json")) or {}
        cg = (spec.get("linux") or {}).get("cgroupsPath")
        if cg:
            from cargohold.tasks import cgroups

            cgroups.remove_empty_parents(cg)
        if kmount.is_mountpoint(p.rootfs):
            raise FailedPrecondition(f"task {tid}: rootfs {p.rootfs} is still mounted",
                                     hint=f"unmount it (umount {p.rootfs}) and run "
                                          f"'hold tasks rm {tid}' again")
        from cargohold._fsutil import remove_tree

        # remove_tree raises FileNotFoundError only once the directory is gone: another
        # remover got there too ('hold tasks rm --force' while 'hold run --rm' waits for the
        # exit), and so it is removed.
        with contextlib.suppress(FileNotFoundError):
            remove_tree(p.dir)
        return info

    def _end_shim(self, p: TaskPaths, timeout: float = 5.0) -> None:
        """Wait for the shim to finish on its own (it does once init is reaped and runc's
        container deleted), then make sure it is gone: nothing may write into a removed
        directory.
        """
        pid, alive = shim_alive(p)
        if not alive:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                if shim_alive(p)[1]:  # the pid is still the shim's (not reused meanwhile)
                    select.select([fd], [], [], timeout)
                    if shim_alive(p)[1]:
                        signals.pidfd_send_signal(fd, signals.SIGKILL)
            finally:
                os.close(fd)
            return
        deadline = time.monotonic() + timeout
        while shim_alive(p)[1]:
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signals.SIGKILL)
                return
            time.sleep(POLL)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    return " ".join(argv) or "?"
