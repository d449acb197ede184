"""A client of a task's shim: start it, forward stdio and signals, return its exit status.

:func:`attach` connects to ``attach.sock`` and, until the task exits:

- writes the task's stdout and stderr to the given descriptors (a closed stdout, as under
  ``| head``, stops the copying, not the waiting);
- sends what it reads from ``stdin`` (when given); at its end, with ``close_stdin`` (an
  attached start, so ``echo x | hold run IMG t cat`` ends) it closes the task's stdin,
  otherwise (``hold tasks attach``) it only stops reading;
- forwards SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2 and SIGALRM to the task's
  init, and for a terminal the window size (now and on SIGWINCH), with the local terminal in
  raw mode until the end;
- returns the exit status the shim reports (the code, or 128 + the signal).

A shim that is gone raises :class:`ShimGone`; one that closes without reporting an exit
raises it too. The task itself is never touched by this process ending, however it ends.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import selectors
import signal
import socket
import threading
from collections.abc import Callable, Iterator

from cargohold.errors import FailedPrecondition
from cargohold.tasks import proto
from cargohold.tasks.api import TaskPaths

FORWARDED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGALRM)


class ShimGone(FailedPrecondition):
    """The task's shim does not answer (killed, or already finished)."""


@contextlib.contextmanager
def forwarding(send: Callable[[int], None], *, winch: Callable[[], None] | None = None
               ) -> Iterator[int]:
    """While the block runs, the signals of :data:`FORWARDED` (and SIGWINCH with ``winch``)
    are caught and handed to ``send`` / ``winch`` by :func:`drain`; yields the file
    descriptor to select on. Outside the main thread nothing is caught.
    """
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    if threading.current_thread() is not threading.main_thread():
        try:
            yield r
        finally:
            os.close(r)
            os.close(w)
        return
    sigs = list(FORWARDED) + ([signal.SIGWINCH] if winch else [])
    saved = {s: signal.signal(s, lambda *_: None) for s in sigs}
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    try:
        yield r
    finally:
        signal.set_wakeup_fd(old_fd)
        for s, h in saved.items():
            signal.signal(s, h)
        os.close(r)
        os.close(w)


def drain(fd: int, send: Callable[[int], None], winch: Callable[[], None] | None) -> None:
    """Hand the signals that arrived (one byte each on ``fd``) to ``send`` / ``winch``."""
    try:
        data = os.read(fd, 512)
    except BlockingIOError:
        return
    for b in data:
        if b == signal.SIGWINCH:
            if winch:
                winch()
        elif b in FORWARDED:
            send(b)


def _write_all(fd: int, data: bytes) -> bool:
    """Write everything; False when the reader is gone (EPIPE)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:  # a descriptor someone left non-blocking
            select.select([], [fd], [])
            continue
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EBADF):
                return False
            raise
        view = view[n:]
    return True


def _window(fd: int) -> tuple[int, int] | None:
    try:
        sz = os.get_terminal_size(fd)
    except OSError:
        return None
    return sz.lines, sz.columns


def connect(paths: TaskPaths) -> socket.socket:
    """The socket of the task's shim; ShimGone when nothing answers there."""
    try:
        return proto.connect(paths.file("attach.sock"), timeout=10)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ShimGone(f"task {paths.id}: its shim does not answer ({exc.strerror})",
                       hint=f"see 'hold tasks ls'; the output so far is in "
                            f"'hold tasks logs {paths.id}'") from None


def shim_error(payload: bytes) -> Exception:
    """The error an ``R`` frame carries, as the class the shim raised."""
    from cargohold.tasks.launch import error_from_report

    try:
        doc = json.loads(payload)
    except ValueError:
        doc = {"error": payload.decode(errors="replace")}
    return error_from_report(doc)


def start_detached(paths: TaskPaths) -> int:
    """Ask the shim of a created task to start it, and return its init pid."""
    sock = connect(paths)
    with sock:
        sock.sendall(proto.frame(proto.START))
        reader = proto.Reader()
        while True:
            data = sock.recv(65536)
            if not data:
                raise ShimGone(f"task {paths.id}: the shim closed before it said it started")
            for kind, payload in reader.feed(data):
                if kind == proto.STARTED:
                    return proto.unpack_started(payload)
                if kind == proto.ERROR:
                    raise shim_error(payload)
                if kind == proto.EXITED:
                    return 0


def attach(paths: TaskPaths, *, start: bool = False, stdin: int | None = 0,
           stdout: int = 1, stderr: int = 2, close_stdin: bool = False, tty: bool = False
           ) -> int:
    """Attach to the task (see the module docstring) and return its exit status."""
    sock = connect(paths)
    raw = None
    sel = selectors.DefaultSelector()
    try:
        term_fd = stdin if stdin is not None and tty and os.isatty(stdin) else None
        size_fd = term_fd if term_fd is not None else (stdout if tty else None)

        def winch() -> None:
            if size_fd is not None:
                w = _window(size_fd)
                if w:
                    sock.sendall(proto.resize(*w))

        def send(signum: int) -> None:
            sock.sendall(proto.signal_frame(signum))

        with forwarding(send, winch=winch if tty else None) as wake:
            if tty:
                winch()
            if term_fd is not None:
                import termios
                import tty as ttymod

                raw = (term_fd, termios.tcgetattr(term_fd))
                ttymod.setraw(term_fd)
            if start:
                sock.sendall(proto.frame(proto.START))
            sel.register(sock, selectors.EVENT_READ, "sock")
            sel.register(wake, selectors.EVENT_READ, "wake")
            if stdin is not None:
                with contextlib.suppress(ValueError, PermissionError, OSError):
                    sel.register(stdin, selectors.EVENT_READ, "stdin")
            return _loop(sel, sock, paths, stdout, stderr, close_stdin, send, winch)
    finally:
        if raw is not None:
            import termios

            with contextlib.suppress(OSError):
                termios.tcsetattr(raw[0], termios.TCSADRAIN, raw[1])
        sel.close()
        sock.close()


def _loop(sel: selectors.BaseSelector, sock: socket.socket, paths: TaskPaths, stdout: int,
          stderr: int, close_stdin: bool, send: Callable[[int], None],
          winch: Callable[[], None]) -> int:
    reader = proto.Reader()
    outs = {proto.STDOUT: stdout, proto.STDERR: stderr}
    open_out = {proto.STDOUT: True, proto.STDERR: True}
    while True:
        for key, _mask in sel.select():
            if key.data == "wake":
                drain(key.fd, send, winch)
            elif key.data == "stdin":
                try:
                    data = os.read(key.fd, 65536)
                except OSError:
                    data = b""
                if data:
                    sock.sendall(proto.frame(proto.STDIN, data))
                else:
                    sel.unregister(key.fd)
                    if close_stdin:
                        sock.sendall(proto.frame(proto.CLOSE_STDIN))
            else:
                try:
                    data = sock.recv(1 << 16)
                except ConnectionResetError:
                    data = b""
                if not data:
                    raise ShimGone(f"task {paths.id}: the shim went away before the task "
                                   "exited", hint="see 'hold tasks ls'")
                for kind, payload in reader.feed(data):
                    if kind in outs:
                        if open_out[kind]:
                            open_out[kind] = _write_all(outs[kind], payload)
                    elif kind == proto.EXITED:
                        return proto.unpack_exited(payload)[0]
                    elif kind == proto.ERROR:
                        raise shim_error(payload)
