"""The task layer's shared vocabulary: where a task's files live, its states, its records.

A task is the running instance of a container (one per container, as in containerd; the task
id is the container id). Everything about it lives in one directory, ``<state>/tasks/<ns>/<id>/``
(DESIGN.md §2), and in ``runc``'s own state under ``<state>/runc/<ns>/`` (never the system's
``/run/runc``)::

    <state>/tasks/<ns>/<id>/
      bundle/config.json     the OCI runtime spec of the container record
      bundle/rootfs/         the container's snapshot, mounted here while the task exists
      shim.json              what the shim was asked to do (written before it starts)
      shim.pid               "<pid> <start ticks>" of the shim (written by the shim)
      shim.log               the shim's own diagnostics
      init.pid               the container's init, as runc writes it (--pid-file)
      runc.log               runc's log for create and start (JSON lines)
      attach.sock            the shim's socket: start, stdin, resize, signals, output
      exit.json              {"status": N, "exited_at": ns, "pid": P, "runc_deleted": B},
                             written by the shim at the exit (B once runc's state is gone)
      log, log.1             the task's output in the CRI log format, size-capped (see logs)
      execs/<exec-id>.pid    processes started with 'hold tasks exec', while they run

Importing this module loads only the standard library and :mod:`cargohold._record`.
"""

from __future__ import annotations

import enum
import json
import os
from typing import Any

from cargohold._record import field, record

#: the OCI runtime this layer drives (the container record's ``runtime`` field)
RUNTIME = "runc"
#: the output of a task is rotated when its log passes this size (one older file is kept)
DEFAULT_LOG_SIZE_MAX = 8 << 20


def settings(config: Any) -> tuple[str, int]:
    """(runc binary, log size cap) from the ``[tasks]`` section of a
    :class:`cargohold.config.Config`.
    """
    sec = config.section("tasks")
    return (str(sec.get("runtime_binary") or "runc"),
            int(sec.get("log_size_max", DEFAULT_LOG_SIZE_MAX)))


class Status(enum.Enum):
    """A task's state, as ``hold tasks ls`` prints it (containerd's names)."""

    CREATED = "CREATED"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    STOPPED = "STOPPED"
    UNKNOWN = "UNKNOWN"  # a start that never got as far as runc create (a crash)


@record(frozen=True)
class TaskPaths:
    """The files of task ``id`` in namespace ``ns`` under state directory ``state``."""

    state: str
    ns: str
    id: str

    @property
    def dir(self) -> str:
        return os.path.join(self.state, "tasks", self.ns, self.id)

    def file(self, name: str) -> str:
        return os.path.join(self.dir, name)

    @property
    def bundle(self) -> str:
        return self.file("bundle")

    @property
    def rootfs(self) -> str:
        return os.path.join(self.bundle, "rootfs")

    @property
    def runc_root(self) -> str:
        return runc_root(self.state, self.ns)


def runc_root(state: str, ns: str) -> str:
    """runc's ``--root`` for namespace ``ns``: container ids are unique per root."""
    return os.path.join(state, "runc", ns)


def cgroup_parent(state: str) -> str:
    """``/cargohold`` for the default state directory; another state directory (a test, a
    second root) gets ``/cargohold-<hash>`` so that two of them never share a cgroup.
    """
    import hashlib

    from cargohold.config import default_state

    real = os.path.realpath(state)
    if real == os.path.realpath(default_state()):
        return "/cargohold"
    return "/cargohold-" + hashlib.sha256(real.encode()).hexdigest()[:8]


def cgroups_path(state: str, ns: str, cid: str) -> str:
    """The spec's ``linux.cgroupsPath``: ``<parent>/<ns>/<id>``."""
    return f"{cgroup_parent(state)}/{ns}/{cid}"


def task_ids(state: str, ns: str) -> list[str]:
    """The ids of every task directory of namespace ``ns``, sorted."""
    try:
        names = os.listdir(os.path.join(state, "tasks", ns))
    except FileNotFoundError:
        return []
    return sorted(n for n in names if not n.startswith("."))


def read_json_file(path: str) -> dict[str, Any] | None:
    """A small JSON file, or None when it is missing or half-written (not an error)."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def read_pid(path: str) -> int:
    """The first number in ``path`` (a pid file), or 0."""
    try:
        with open(path, "rb") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def start_ticks(pid: int) -> int:
    """When ``pid`` started (field 22 of ``/proc/<pid>/stat``, as a lease owner's start is
    recorded), or -1 when it is gone or a zombie (it has exited; only its parent has yet to
    reap it).
    """
    from cargohold.leases.owner import PROC, stat_fields

    st = stat_fields(pid, PROC)
    return -1 if st is None or st[0] == "Z" else st[1]


def process_alive(pid: int, ticks: int | None = None) -> bool:
    """Whether ``pid`` runs and, given ``ticks``, is the same process (no reused pid)."""
    if pid <= 0:
        return False
    t = start_ticks(pid)
    return t >= 0 and (ticks is None or t == ticks)


def shim_alive(paths: TaskPaths) -> tuple[int, bool]:
    """``(pid, alive)`` of the task's shim according to ``shim.pid``."""
    try:
        with open(paths.file("shim.pid"), "rb") as f:
            pid_s, ticks_s = f.read().split()[:2]
        pid, ticks = int(pid_s), int(ticks_s)
    except (OSError, ValueError):
        return 0, False
    return pid, process_alive(pid, ticks)


@record(frozen=True)
class Exit:
    """How a task's init ended: ``status`` is the exit code, or 128 + the signal."""

    status: int
    exited_at: int  # ns since the epoch
    pid: int = 0
    runc_deleted: bool = False  # the shim deleted runc's container after the exit


def read_exit(paths: TaskPaths) -> Exit | None:
    doc = read_json_file(paths.file("exit.json"))
    if doc is None:
        return None
    return Exit(int(doc.get("status", -1)), int(doc.get("exited_at", 0)),
                int(doc.get("pid", 0)), bool(doc.get("runc_deleted")))


@record(frozen=True)
class TaskInfo:
    """One row of ``hold tasks ls``."""

    id: str
    namespace: str
    status: Status
    pid: int = 0
    exit: Exit | None = None
    shim_pid: int = 0
    shim_alive: bool = False
    tty: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def exit_status(self) -> int | None:
        return self.exit.status if self.exit else None

    def describe(self) -> str:
        """``RUNNING``, or ``RUNNING (shim gone)`` with what is unusual about it."""
        return self.status.value + (f" ({'; '.join(self.notes)})" if self.notes else "")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "namespace": self.namespace, "status": self.status.value,
                "pid": self.pid, "exit_status": self.exit_status,
                "exited_at": self.exit.exited_at if self.exit else None,
                "shim_pid": self.shim_pid, "shim": "alive" if self.shim_alive else "gone",
                "tty": self.tty, "notes": list(self.notes)}
