r"""A task's output on disk: the CRI log format (what kubelet and conmon write), size-capped.

Each record is one line ``<RFC 3339 UTC time> <stdout|stderr> <F|P> <bytes>\\n``: ``F`` ends a
line of output (the newline is the record's own), ``P`` is part of a line, written as it came
(output without a newline is never held back). Concatenating the records of a stream, with a
newline after each ``F``, gives back exactly the bytes the task wrote.

:class:`LogWriter` (the shim's) appends records to ``log``; when a record would take the file
past ``max_bytes`` it renames ``log`` to ``log.1`` (replacing the older one) and starts a new
``log``, so a task never holds more than about twice the cap on disk (the cap is checked for
each record, however many one read of the task's output makes; only a record longer than the
cap by itself, a line of up to 64 KiB, goes past it). A crash may leave the
last record cut short; readers skip a line that does not parse.

:func:`read` yields the records of ``log.1`` then ``log``; :func:`follow` keeps yielding new
records, across rotations, until ``done()`` says the writer has finished.
"""

from __future__ import annotations

import os
import time
from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself is not imported: the shim starts faster without it
    from collections.abc import Callable, Iterator
    from typing import BinaryIO

STREAMS = (b"stdout", b"stderr")


Record = namedtuple("Record", "time stream data")
Record.__doc__ = """One log line: ``time`` as written (str), ``stream`` ("stdout" / "stderr")
and ``data``, the bytes (those of a full line end with a newline)."""


def _now_text() -> bytes:
    """Now as RFC 3339 UTC with nanoseconds (as :func:`cargohold.types.format_time`, which
    this module does not import: the shim starts faster without it).
    """
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z").encode()


class LogWriter:
    """Appends records to ``path``, rotating at ``max_bytes`` (0: never)."""

    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._f = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the shim
        self._size = self._f.tell()

    def write(self, stream: str, data: bytes) -> None:
        """Record ``data`` written by the task on ``stream``."""
        if not data:
            return
        ts = _now_text()
        head = ts + b" " + stream.encode() + b" "
        batch: list[bytes] = []
        size = 0  # of the batch
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and not line:
                break  # the data ended with a newline
            rec = head + (b"P " if last else b"F ") + line + b"\n"
            # The cap is checked per record, not per read: one read of 64 KiB of short lines
            # makes megabytes of records, which would all go past a small cap at once.
            if self.max_bytes and self._size + size + len(rec) > self.max_bytes \
                    and self._size + size:
                self._flush(batch)
                batch, size = [], 0
                self._rotate()
            batch.append(rec)
            size += len(rec)
        self._flush(batch)

    def _flush(self, batch: list[bytes]) -> None:
        if batch:
            blob = b"".join(batch)
            self._f.write(blob)
            self._size += len(blob)

    def _rotate(self) -> None:
        self._f.close()
        os.replace(self.path, self.path + ".1")
        self._f = open(self.path, "ab", buffering=0)  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        self._f.close()


def parse(line: bytes) -> Record | None:
    """One record line (with or without its newline), or None when it is not one."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3 or parts[1] not in STREAMS or parts[2] not in (b"F", b"P"):
        return None
    data = parts[3] if len(parts) == 4 else b""
    if parts[2] == b"F":
        data += b"\n"
    return Record(parts[0].decode("ascii", "replace"), parts[1].decode(), data)


def read(path: str) -> Iterator[Record]:
    """Every record of ``path.1`` then ``path`` (missing files are empty)."""
    for p in (path + ".1", path):
        try:
            f = open(p, "rb")  # noqa: SIM115
        except FileNotFoundError:
            continue
        with f:
            for line in f:
                if line.endswith(b"\n"):
                    rec = parse(line)
                    if rec is not None:
                        yield rec


class _Tail:
    """An open log file read in complete records, keeping the start of a cut line."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.ino = os.fstat(f.fileno()).st_ino
        self.pending = b""

    def records(self) -> list[Record]:
        out = []
        while True:
            chunk = self.f.read(1 << 16)
            if not chunk:
                return out
            self.pending += chunk
            *full, self.pending = self.pending.split(b"\n")
            out += [r for r in (parse(line + b"\n") for line in full) if r is not None]


def follow(path: str, done: Callable[[], bool], *, interval: float = 0.1,
           sleep: Callable[[float], None] = time.sleep) -> Iterator[Record]:
    """The records of :func:`read`, then new ones as they are written, until ``done()`` is
    true and everything written before it was read. Follows ``path`` across rotations.
    """
    try:
        with open(path + ".1", "rb") as g:
            yield from _Tail(g).records()
    except FileNotFoundError:
        pass
    tail: _Tail | None = None
    try:
        while True:
            finished = done()  # before reading: what was written until now is read below
            if tail is None:
                try:
                    tail = _Tail(open(path, "rb"))  # noqa: SIM115 - closed below
                except FileNotFoundError:
                    tail = None
            if tail is not None:
                yield from tail.records()
                try:
                    rotated = os.stat(path).st_ino != tail.ino
                except FileNotFoundError:
                    rotated = True
                if rotated:
                    # The writer renamed this file to .1 and writes a new one: read what it
                    # added here before the rename, then start on the new one.
                    yield from tail.records()
                    tail.f.close()
                    tail = None
                    continue
            if finished:
                return
            sleep(interval)
    finally:
        if tail is not None:
            tail.f.close()
