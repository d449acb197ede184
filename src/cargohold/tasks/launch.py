"""Creating a task: the bundle under the state directory, the rootfs mounted, the shim started.

:func:`launch` (``hold tasks start``, ``hold run``):

0. starts the shim (:class:`ShimStarter`, unless the caller started one earlier), which
   waits for the bundle while this process prepares it;
1. reads the container record (NotFound with a hint) and checks that runc is installed;
2. claims ``<state>/tasks/<ns>/<id>`` with an exclusive ``mkdir`` (AlreadyExists, naming the
   task's state, when the task exists: one task per container, as in containerd);
3. writes ``bundle/config.json`` (the record's spec) and mounts the container's snapshot on
   ``bundle/rootfs``;
4. writes ``shim.json`` and tells the shim (:mod:`.shim`, in its own session and already
   forked away from this process) the task directory; it runs ``runc create`` (and ``runc
   start`` with ``start=True``) and reports on a pipe; this call returns what it reported.

Any failure undoes all of it (the runc container, the mount, the directory) and raises: a runc
failure as :class:`~cargohold.tasks.runc.RuncError` with runc's message and the command.
*Crash window*: a crash between the ``mkdir`` and the shim's report leaves a task directory
that ``hold tasks ls`` shows as UNKNOWN (or CREATED, shim gone) and ``hold tasks rm`` removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from cargohold.errors import AlreadyExists, CargoholdError, FailedPrecondition
from cargohold.tasks.api import TaskPaths, settings

if TYPE_CHECKING:
    from cargohold.client import Client

READY_TIMEOUT = 120.0


class ShimFailed(FailedPrecondition):
    """The shim died before it said whether the task was created."""


def shim_argv(go_fd: int, ready_fd: int) -> list[str]:
    """The command that starts a shim: this interpreter, isolated and without ``site`` (it
    needs only the standard library and this package), so it starts in a few milliseconds.
    """
    import cargohold

    src = os.path.dirname(os.path.dirname(os.path.abspath(cargohold.__file__)))
    code = (f"import sys; sys.path.insert(0, {src!r}); "
            "from cargohold.tasks.shim import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-I", "-S", "-c", code, str(go_fd), str(ready_fd)]


class ShimStarter:
    """A shim started ahead of its task: its interpreter starts while the caller prepares the
    bundle; :meth:`go` hands it the task directory and waits for its report; :meth:`cancel`
    (or leaving the ``with`` block without ``go``) makes it exit without doing anything.
    """

    def __init__(self) -> None:
        go_r, self._go = os.pipe2(os.O_CLOEXEC)
        self._ready, ready_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.proc = subprocess.Popen(
                shim_argv(go_r, ready_w), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
                start_new_session=True, pass_fds=(go_r, ready_w))
        except BaseException:
            for fd in (self._go, self._ready):
                os.close(fd)
            raise
        finally:
            os.close(go_r)
            os.close(ready_w)
        self.sent = False

    def go(self, paths: TaskPaths) -> dict[str, Any]:
        """Send the task directory (``shim.json`` and the bundle are in place) and return
        the shim's report; raise what it reported.
        """
        os.write(self._go, paths.dir.encode() + b"\n")
        self.sent = True
        os.close(self._go)
        self._go = -1
        try:
            return _wait_ready(self._ready, paths)
        finally:
            os.close(self._ready)
            self._ready = -1
            self.proc.wait()  # exited long ago: it only forks the shim proper

    def cancel(self) -> None:
        """Close the go pipe (a shim that got nothing exits) and reap the first process."""
        if self._go >= 0:
            os.close(self._go)
            self._go = -1
        self.proc.wait()  # the first process exits at once; the shim proper is not a child

    def __enter__(self) -> ShimStarter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()
        if self._ready >= 0:
            os.close(self._ready)
            self._ready = -1


def error_from_report(doc: dict[str, Any]) -> CargoholdError:
    """The error a shim reported (on its ready pipe, or in an ``R`` frame), as its class."""
    from cargohold.tasks import runc as runc_mod

    kind = doc.get("kind") or ""
    msg = str(doc.get("error") or "the shim failed")
    hint = doc.get("hint") or None
    cmd = doc.get("command")
    if kind == "RuncMissing":
        return runc_mod.RuncMissing(msg, hint=hint)
    if cmd:
        cls = runc_mod.RuncNotFound if kind == "RuncNotFound" else runc_mod.RuncFailed
        return cls(msg, cmd, hint=hint)
    return ShimFailed(msg, hint=hint)


def _wait_ready(r: int, paths: TaskPaths) -> dict[str, Any]:
    buf = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ShimFailed(f"task {paths.id}: the shim did not report within "
                             f"{READY_TIMEOUT:g}s", hint=f"see {paths.file('shim.log')}")
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            continue
        chunk = os.read(r, 65536)
        if not chunk:
            break
        buf += chunk
    if not buf.strip():
        tail = _tail(paths.file("shim.log"))
        raise ShimFailed(f"task {paths.id}: the shim exited without a report"
                         + (f": {tail}" if tail else ""),
                         hint=f"see {paths.file('shim.log')}")
    doc = json.loads(buf.splitlines()[0])
    if not doc.get("ok"):
        raise error_from_report(doc)
    return doc


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def launch(client: Client, cid: str, *, start: bool,
           shim: ShimStarter | None = None) -> dict[str, Any]:
    """Create (and with ``start`` start) the task of container ``cid``; see the module.

    ``shim``: one started ahead by the caller (``hold run`` starts it before it creates the
    container); otherwise one is started here, first. Returns the shim's report:
    ``{"ok": True, "pid": init pid, "started": bool}`` and whether the task has a terminal
    (``tty``).
    """
    # Imported here, not at the top: ``hold run`` imports this module first of all, to start
    # the shim's interpreter as early as it can.
    from cargohold import mount as kmount
    from cargohold._fsutil import makedirs
    from cargohold.metadata import containers as records
    from cargohold.tasks.runc import Runc

    if shim is None:
        with ShimStarter() as own:
            return launch(client, cid, start=start, shim=own)
    ns = client.namespace
    with client.db.view() as tx:
        c = records.get(tx, ns, cid)
    paths = TaskPaths(client.config.state, ns, cid)
    binary, cap = settings(client.config)
    rc = Runc(paths.runc_root, binary=binary)
    rc.available()
    spec = json.loads(c.spec or "{}")
    if not spec.get("process"):
        raise FailedPrecondition(f"container {cid}: has no runtime spec",
                                 hint=f"create it again with 'hold containers create' "
                                      f"(after 'hold containers rm {cid}')")
    makedirs(os.path.dirname(paths.dir), 0o711)
    makedirs(paths.runc_root, 0o700)
    try:
        os.mkdir(paths.dir, 0o711)
    except FileExistsError:
        from cargohold.tasks.control import Tasks

        info = Tasks(client.config.state, ns, runc_binary=binary).get(cid)
        raise AlreadyExists(f"task {cid}: already exists ({info.describe()})",
                            hint=f"remove it first with 'hold tasks rm {cid}'") from None
    mounted = False
    try:
        os.makedirs(paths.rootfs)
        with open(os.path.join(paths.bundle, "config.json"), "w") as f:
            json.dump(spec, f)
        mounts = client.snapshotter(c.snapshotter).mounts(c.snapshotkey)
        kmount.mount_all(mounts, paths.rootfs)
        mounted = True
        user = spec["process"].get("user") or {}
        cfg = {"id": cid, "namespace": ns, "runc_root": paths.runc_root, "runc_binary": binary,
               "bundle": paths.bundle, "tty": bool(spec["process"].get("terminal")),
               "start": start, "log_size_max": cap, "uid": int(user.get("uid", 0)),
               "gid": int(user.get("gid", 0))}
        with open(paths.file("shim.json"), "w") as f:
            json.dump(cfg, f)
        return {**shim.go(paths), "tty": cfg["tty"]}
    except BaseException:
        if shim.sent:
            with contextlib.suppress(CargoholdError):
                rc.delete(cid, force=True)
        # runc removes the container's own cgroup when create fails; the parents made for
        # the namespace go too once empty (a failed `hold run` leaves no cgroup behind).
        from cargohold.tasks import cgroups

        cgroups.remove_empty_parents(spec["linux"]["cgroupsPath"])
        if mounted:
            with contextlib.suppress(CargoholdError):
                kmount.unmount_all(paths.rootfs)
        if not kmount.is_mountpoint(paths.rootfs):
            from cargohold._fsutil import remove_tree

            remove_tree(paths.dir, ignore_errors=True)
        raise


def require_container(client: Client, cid: str) -> None:
    """NotFound (saying how to list them) unless container ``cid`` exists."""
    from cargohold.metadata import containers as records

    with client.db.view() as tx:
        records.get(tx, client.namespace, cid)
