"""The shim's socket protocol (``attach.sock``): length-prefixed frames, both ways.

A frame is one kind byte, a 4-byte big-endian length and that many payload bytes.

client → shim: ``S`` start the task (once created; a repeat answers ``P`` again), ``I``
stdin bytes, ``C`` close the task's stdin (after what was sent), ``W`` window size (rows,
cols as two big-endian u16), ``K`` a signal for the task's init (u16; the shim sends it only
while init has not been reaped, so a reused pid is never hit).

shim → client: ``O`` / ``E`` stdout / stderr bytes, ``P`` started (init pid, u32), ``X`` exited
(status i32, exit time u64 ns), ``R`` an error (UTF-8 text). After ``X`` the shim closes.

Paths of unix sockets are limited to 107 bytes: :func:`connect` reaches a longer one through
``/proc/self/fd/<dir fd>/<name>``; the shim binds its socket by a name relative to its cwd.
"""

from __future__ import annotations

import os
import socket
import struct

START, STDIN, CLOSE_STDIN, RESIZE, SIGNAL = b"S", b"I", b"C", b"W", b"K"
STDOUT, STDERR, STARTED, EXITED, ERROR = b"O", b"E", b"P", b"X", b"R"
_HEAD = struct.Struct(">cI")
MAX_FRAME = 1 << 20
SUN_PATH_MAX = 107


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEAD.pack(kind, len(payload)) + payload


def resize(rows: int, cols: int) -> bytes:
    return frame(RESIZE, struct.pack(">HH", rows, cols))


def signal_frame(signum: int) -> bytes:
    return frame(SIGNAL, struct.pack(">H", signum))


def started(pid: int) -> bytes:
    return frame(STARTED, struct.pack(">I", pid))


def exited(status: int, at: int) -> bytes:
    return frame(EXITED, struct.pack(">iQ", status, at))


def unpack_resize(p: bytes) -> tuple[int, int]:
    return struct.unpack(">HH", p)  # type: ignore[return-value]


def unpack_signal(p: bytes) -> int:
    return int(struct.unpack(">H", p)[0])


def unpack_started(p: bytes) -> int:
    return int(struct.unpack(">I", p)[0])


def unpack_exited(p: bytes) -> tuple[int, int]:
    return struct.unpack(">iQ", p)  # type: ignore[return-value]


class Reader:
    """Splits a byte stream into ``(kind, payload)`` frames as bytes arrive."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """Frames completed by ``data``; ValueError for a frame longer than MAX_FRAME."""
        self.buf += data
        out = []
        while len(self.buf) >= _HEAD.size:
            kind, n = _HEAD.unpack_from(self.buf)
            if n > MAX_FRAME:
                raise ValueError(f"frame of {n} bytes")
            if len(self.buf) < _HEAD.size + n:
                break
            out.append((kind, bytes(self.buf[_HEAD.size:_HEAD.size + n])))
            del self.buf[:_HEAD.size + n]
        return out


def connect(path: str, timeout: float | None = None) -> socket.socket:
    """A connected stream socket to ``path`` (however long); OSError as connect raises it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    if timeout is not None:
        s.settimeout(timeout)
    try:
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
            s.connect(path)
        else:
            fd = os.open(os.path.dirname(path), os.O_PATH | os.O_CLOEXEC)
            try:
                s.connect(f"/proc/self/fd/{fd}/{os.path.basename(path)}")
            finally:
                os.close(fd)
    except BaseException:
        s.close()
        raise
    s.settimeout(None)
    return s
