"""The per-task shim: a small process that owns one task from ``runc create`` to its exit.

``hold`` starts it (:class:`cargohold.tasks.launch.ShimStarter`) as ``python -I -S -c
<bootstrap> GO_FD READY_FD`` in a new session, *before* the bundle exists, so that the
interpreter starts while ``hold`` prepares the container. It forks at once and the first
process exits, so the shim proper is re-parented away from ``hold`` (to init, or the nearest
subreaper): ``hold`` exiting, crashing or being killed never touches it, and neither does a
restart of the service. The shim then:

1. marks itself a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), so the container's
   init becomes its child once ``runc create`` exits, and waits for GO_FD to name the task
   directory (a pipe closed without it means hold gave up: the shim just exits);
2. moves into the task directory, sends its output to ``shim.log``, writes ``shim.pid`` and
   runs ``runc create`` on ``bundle`` with its own pipes as the container's stdio (owned by
   the process user, as containerd's are), or with a console socket for a terminal, from
   which it receives the pty master; then listens on ``attach.sock``;
3. with ``start`` in ``shim.json`` (``-d``) runs ``runc start`` now; otherwise the first
   client's ``S`` frame does (so an attached client is connected before any output exists);
4. reports ``{"ok": true, "pid": N}`` or ``{"error": ...}`` on READY_FD and closes it;
5. serves: every byte of output goes to the size-capped log (:mod:`.logs`) and to every
   attached client; stdin, window sizes and signals come from clients (:mod:`.proto`);
6. reaps: when init exits, the exit status (the code, or 128 + the signal) and the time go
   to ``exit.json``; output is drained (at most :data:`DRAIN` seconds), every client gets
   ``X``; then ``runc delete`` releases runc's state and the cgroup (``exit.json`` then says
   ``runc_deleted``), and the shim exits. The rootfs and the files stay for ``hold tasks rm``.

A shim killed meanwhile leaves its task running: the task is still found by runc and can be
killed; its exit status is then unknown (there is no ``exit.json``), and output written after
the shim died is lost (the pipes' reader is gone).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

from cargohold.tasks import proto
from cargohold.tasks.logs import LogWriter
from cargohold.tasks.runc import Runc

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself is not imported: the shim starts faster without it
    from typing import Any

PR_SET_CHILD_SUBREAPER = 36
DRAIN = 2.0  # seconds to read what is left in the pipes after init has exited
CLIENT_BACKLOG = 16 << 20  # a client this far behind is dropped, not waited for
STDIN_BACKLOG = 1 << 20  # clients are not read while this much stdin waits for the task
CONSOLE_TIMEOUT = 30.0


def _log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} shim {os.getpid()}: {msg}",
          file=sys.stderr, flush=True)


def _set_subreaper() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _nonblock(fd: int) -> None:
    fl = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)


def _write_json(name: str, doc: dict[str, Any]) -> None:
    # State files live on the state directory (a tmpfs as a rule): atomic, but no fsync.
    # Imported here: only the exit is recorded this way, long after the shim's start.
    from cargohold._fsutil import atomic_write

    atomic_write(name, json.dumps(doc).encode(), sync=False)


def _short(name: str, dirfd: int) -> str:
    """A path another process can use for ``name`` in the cwd, within the unix-socket limit."""
    full = os.path.join(os.getcwd(), name)
    if len(os.fsencode(full)) <= proto.SUN_PATH_MAX:
        return full
    return f"/proc/{os.getpid()}/fd/{dirfd}/{name}"


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = proto.Reader()
        self.out = bytearray()


class Shim:
    """One task, from create to exit (see the module docstring)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.id = cfg["id"]
        self.runc = Runc(cfg["runc_root"], binary=cfg.get("runc_binary") or "runc")
        self.tty = bool(cfg.get("tty"))
        self.sel = selectors.DefaultSelector()
        self.clients: dict[int, _Client] = {}
        self.streams: dict[int, str] = {}  # fd -> "stdout" / "stderr"
        self.stdin_fd = -1
        self.stdin_buf = bytearray()
        self.stdin_closing = False
        self.reading_clients = True
        self.master = -1
        self.init_pid = 0
        self.started = False
        self.status: int | None = None
        self.exited_at = 0
        self.log = LogWriter("log", int(cfg.get("log_size_max") or 0))
        self.dirfd = os.open(".", os.O_PATH | os.O_CLOEXEC)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)

    # --- create and start --------------------------------------------------------------------
    def create(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink("runc.log")
        if self.tty:
            self._create_tty()
        else:
            self._create_pipes()
        self.init_pid = int(open("init.pid").read().split()[0])
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        with contextlib.suppress(FileNotFoundError):
            os.unlink("attach.sock")
        self.listener.bind("attach.sock")
        self.listener.listen(16)
        self.listener.setblocking(False)

    def _create_argv(self, console: str | None = None) -> list[str]:
        # Full paths, so that the command an error shows can be run again from anywhere.
        return self.runc.create_argv(self.id, self.cfg["bundle"],
                                     pid_file=os.path.abspath("init.pid"),
                                     log=os.path.abspath("runc.log"), console_socket=console)

    def _create_failed(self, argv: list[str], rc: int) -> None:
        """Raise runc's own error (from its JSON log: its stderr is the task's)."""
        from cargohold.snapshotters.runner import Result
        from cargohold.tasks.runc import raise_for, read_log

        raise_for(Result(tuple(argv), rc, "", read_log("runc.log")),
                  f"task {self.id}: runc create failed")

    def _create_pipes(self) -> None:
        uid, gid = int(self.cfg.get("uid", 0)), int(self.cfg.get("gid", 0))
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
            # The process user must be able to reopen its stdio (/dev/stdout), as with
            # containerd's pipes.
            with contextlib.suppress(OSError):
                os.fchown(fd, uid, gid)
        argv = self._create_argv()
        try:
            p = self.runc.runner.spawn(argv, stdin=in_r, stdout=out_w, stderr=err_w)
            rc = p.wait()
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        if rc != 0:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            self._create_failed(argv, rc)
        self.stdin_fd = in_w
        _nonblock(in_w)
        for fd, name in ((out_r, "stdout"), (err_r, "stderr")):
            _nonblock(fd)
            self.streams[fd] = name

    def _create_tty(self) -> None:
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        with contextlib.suppress(FileNotFoundError):
            os.unlink("console.sock")
        lst.bind("console.sock")
        lst.listen(1)
        lst.settimeout(0.05)
        argv = self._create_argv(_short("console.sock", self.dirfd))
        try:
            p = self.runc.runner.spawn(argv, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            master = -1
            deadline = time.monotonic() + CONSOLE_TIMEOUT
            while master < 0 and p.poll() is None and time.monotonic() < deadline:
                try:
                    conn, _ = lst.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(CONSOLE_TIMEOUT)
                    _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
                    if fds:
                        master = fds[0]
            rc = p.wait()
        finally:
            lst.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink("console.sock")
        if rc != 0:
            if master >= 0:
                os.close(master)
            self._create_failed(argv, rc)
        if master < 0:
            raise RuntimeError("runc create sent no console")
        os.set_inheritable(master, False)
        _nonblock(master)
        self.master = master
        self.streams[master] = "stdout"
        # Input goes through a second descriptor of the master, so that reading and
        # writing are registered with the selector apart.
        self.stdin_fd = os.dup(master)

    def start(self) -> None:
        if not self.started:
            self.runc.start(self.id, log=os.path.abspath("runc.log"))
            self.started = True

    # --- serving -------------------------------------------------------------------------------
    def serve(self) -> None:
        sel = self.sel
        sel.register(self.listener, selectors.EVENT_READ, "accept")
        sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        for fd in self.streams:
            sel.register(fd, selectors.EVENT_READ, "stream")
        deadline = None
        while True:
            self._reap()
            if self.status is not None:
                if deadline is None:
                    deadline = time.monotonic() + DRAIN
                if not self.streams or time.monotonic() >= deadline:
                    break
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            for key, mask in sel.select(timeout):
                what = key.data
                if what == "accept":
                    self._accept()
                elif what == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 512)
                elif what == "stream":
                    self._read_stream(key.fd)
                elif what == "stdin":
                    self._write_stdin()
                elif isinstance(what, _Client):
                    if mask & selectors.EVENT_READ:
                        self._read_client(what)
                    if mask & selectors.EVENT_WRITE and what.sock.fileno() in self.clients:
                        self._write_client(what)
        self._finish()

    def _reap(self) -> None:
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.init_pid and self.status is None:
                code = os.waitstatus_to_exitcode(st)
                self.status = code if code >= 0 else 128 - code
                self.exited_at = time.time_ns()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        c = _Client(conn)
        self.clients[conn.fileno()] = c
        self.sel.register(conn, self._client_events(c), c)

    def _client_events(self, c: _Client) -> int:
        ev = selectors.EVENT_READ if self.reading_clients else 0
        if c.out:
            ev |= selectors.EVENT_WRITE
        return ev

    def _update(self, c: _Client) -> None:
        ev = self._client_events(c)
        key = self.sel.get_map().get(c.sock.fileno())
        if ev == 0:
            if key is not None:
                self.sel.unregister(c.sock)
        elif key is None:
            self.sel.register(c.sock, ev, c)
        elif key.events != ev:
            self.sel.modify(c.sock, ev, c)

    def _drop(self, c: _Client) -> None:
        fd = c.sock.fileno()
        self.clients.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        c.sock.close()

    def _send(self, c: _Client, data: bytes) -> None:
        c.out += data
        if len(c.out) > CLIENT_BACKLOG:
            _log(f"client fd {c.sock.fileno()} is {len(c.out)} bytes behind: dropped")
            self._drop(c)
            return
        self._update(c)

    def _broadcast(self, data: bytes) -> None:
        for c in list(self.clients.values()):
            self._send(c, data)

    def _read_stream(self, fd: int) -> None:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: a pty whose other side is all closed
                _log(f"read {self.streams.get(fd)}: {exc}")
            data = b""
        name = self.streams[fd]
        if not data:
            self.sel.unregister(fd)
            del self.streams[fd]
            os.close(fd)
            return
        self.log.write(name, data)
        self._broadcast(proto.frame(proto.STDOUT if name == "stdout" else proto.STDERR, data))

    def _read_client(self, c: _Client) -> None:
        try:
            data = c.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(c)
            return
        try:
            frames = c.reader.feed(data)
        except ValueError as exc:
            _log(f"client sent a bad frame ({exc}): dropped")
            self._drop(c)
            return
        for kind, payload in frames:
            self._handle(c, kind, payload)

    def _handle(self, c: _Client, kind: bytes, payload: bytes) -> None:
        if kind == proto.START:
            try:
                self.start()
            except Exception as exc:  # noqa: BLE001 - the client shows runc's error
                self._send(c, proto.frame(proto.ERROR, json.dumps(_error_doc(exc)).encode()))
                return
            self._send(c, proto.started(self.init_pid))
        elif kind == proto.STDIN:
            if self.stdin_fd >= 0 and not self.stdin_closing:
                self.stdin_buf += payload
                self._stdin_changed()
        elif kind == proto.CLOSE_STDIN:
            if not self.tty:  # a terminal's input is never closed (as ctr)
                self.stdin_closing = True
                self._stdin_changed()
        elif kind == proto.RESIZE and self.master >= 0:
            import struct
            import termios

            rows, cols = proto.unpack_resize(payload)
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.master, termios.TIOCSWINSZ,
                            struct.pack("HHHH", rows, cols, 0, 0))
        elif kind == proto.SIGNAL:
            if self.status is None and self.init_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.init_pid, proto.unpack_signal(payload))

    def _stdin_changed(self) -> None:
        """Register the task's stdin for writing while input waits; close it once asked to
        and drained; stop reading clients while too much input waits (backpressure).
        """
        fd = self.stdin_fd
        if fd >= 0:
            registered = fd in self.sel.get_map()
            if self.stdin_buf and not registered:
                self.sel.register(fd, selectors.EVENT_WRITE, "stdin")
            elif not self.stdin_buf and registered:
                self.sel.unregister(fd)
            if not self.stdin_buf and self.stdin_closing:
                os.close(fd)
                self.stdin_fd = -1
        else:
            self.stdin_buf.clear()
        reading = len(self.stdin_buf) < STDIN_BACKLOG
        if reading != self.reading_clients:
            self.reading_clients = reading
            for cl in list(self.clients.values()):
                self._update(cl)

    def _write_stdin(self) -> None:
        try:
            n = os.write(self.stdin_fd, self.stdin_buf)
        except BlockingIOError:
            return
        except OSError:
            # The task closed its stdin: what it did not read is dropped, and so is the rest.
            n = len(self.stdin_buf)
            self.stdin_closing = True
        del self.stdin_buf[:n]
        self._stdin_changed()

    def _write_client(self, c: _Client) -> None:
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError:
            self._drop(c)
            return
        del c.out[:n]
        self._update(c)

    def _finish(self) -> None:
        status = -1 if self.status is None else self.status
        _write_json("exit.json", {"status": status, "exited_at": self.exited_at,
                                  "pid": self.init_pid})
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink("attach.sock")
        self.listener.close()
        self._broadcast(proto.exited(status, self.exited_at))
        deadline = time.monotonic() + DRAIN
        while any(c.out for c in self.clients.values()) and time.monotonic() < deadline:
            for key, mask in self.sel.select(max(0.0, deadline - time.monotonic())):
                if isinstance(key.data, _Client) and mask & selectors.EVENT_WRITE:
                    self._write_client(key.data)
                elif isinstance(key.data, _Client) and mask & selectors.EVENT_READ:
                    self._read_client(key.data)
        for c in list(self.clients.values()):
            self._drop(c)
        # runc's container (its state and cgroup) is not needed once the exit is recorded;
        # exit.json says whether this worked, so 'hold tasks rm' knows what is left to do.
        try:
            self.runc.delete(self.id)
        except Exception as exc:  # noqa: BLE001 - rm deletes it then
            _log(f"runc delete after the exit failed: {exc}")
            return
        _write_json("exit.json", {"status": status, "exited_at": self.exited_at,
                                  "pid": self.init_pid, "runc_deleted": True})


def _error_doc(exc: BaseException) -> dict[str, Any]:
    from cargohold.errors import CargoholdError

    if isinstance(exc, CargoholdError):
        return {"error": exc.message, "hint": exc.hint or "", "kind": type(exc).__name__,
                "command": getattr(exc, "command", None)}
    return {"error": f"{type(exc).__name__}: {exc}", "hint": "", "kind": ""}


def _report(fd: int, doc: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(doc).encode() + b"\n")
    with contextlib.suppress(OSError):
        os.close(fd)


def _await_go(fd: int) -> str | None:
    """The task directory hold sends once the bundle is ready; None when hold gave up (the
    pipe closed without one).
    """
    buf = b""
    while not buf.endswith(b"\n"):
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        buf += chunk
    os.close(fd)
    if not buf.endswith(b"\n"):
        return None
    return buf[:-1].decode() or None


def _redirect_output(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def main(argv: list[str]) -> int:
    """``GO_FD READY_FD``: see the module docstring."""
    go, ready = int(argv[0]), int(argv[1])
    os.set_inheritable(go, False)
    os.set_inheritable(ready, False)
    if os.fork():
        os._exit(0)  # the first process: hold reaps it; the shim is re-parented away
    try:
        _set_subreaper()
        taskdir = _await_go(go)
        if taskdir is None:
            os.close(ready)
            return 0  # hold gave up before the bundle was ready: nothing to do
        os.chdir(taskdir)
        _redirect_output("shim.log")
        with open(".shim.pid.tmp", "w") as f:
            f.write(f"{os.getpid()} {_ticks()}\n")
        os.replace(".shim.pid.tmp", "shim.pid")
        with open("shim.json") as f:
            cfg = json.load(f)
        shim = Shim(cfg)
        shim.create()
    except Exception as exc:  # noqa: BLE001 - reported to hold, which shows it
        _log_exception()
        _report(ready, _error_doc(exc))
        return 1
    try:
        if cfg.get("start"):
            shim.start()
    except Exception as exc:  # noqa: BLE001
        _log(f"start failed: {exc}")
        with contextlib.suppress(Exception):
            shim.runc.delete(shim.id, force=True)  # kills the waiting init
        _report(ready, _error_doc(exc))
        return 1
    _report(ready, {"ok": True, "pid": shim.init_pid, "started": shim.started})
    try:
        shim.serve()
    except Exception:  # noqa: BLE001 - the task keeps running; say why the shim stopped
        _log_exception()
        return 1
    return 0


def _log_exception() -> None:
    import traceback

    _log(traceback.format_exc())


def _ticks() -> int:
    with open(f"/proc/{os.getpid()}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
