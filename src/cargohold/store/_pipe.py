"""Append-and-hash: the hot path of every ingest.

:class:`HashingAppender` appends bytes to a file descriptor and feeds them to a hash. Bytes are
copied into a small pool of large buffers (so a caller may reuse its buffer as soon as ``write``
returns, and small writes cost no syscall each); a full buffer is written to the file on the
calling thread while a helper thread hashes it. Both ``os.write`` and ``hashlib`` release the
GIL on large buffers, so on two cores the copy, the write and the hash overlap and an ingest
runs at about the speed of the hash alone.

Every :data:`WRITEBACK_WINDOW` bytes it asks the kernel to start writing the finished window back
(``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait), so the fsync at commit finds
little left to flush instead of the whole blob.

A crash loses at most what sits in the unflushed buffer; what reached the file is what a resume
starts from. An ``OSError`` while writing leaves the appender *broken* (the hash may cover bytes
the file does not have); the owner must stop using it and resume from the file instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

BUFFER_SIZE = 4 << 20
POOL_DEPTH = 3  # buffers being hashed at once; bounds memory at ~16 MiB per writer
WRITEBACK_WINDOW = 64 << 20
# Below this a flush is hashed inline: a thread hand-off would cost more than it saves.
_INLINE_HASH = 256 << 10
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the interpreter's own libc symbols
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start (not wait for) writeback of a file range; a no-op where the kernel cannot."""
    if _sync_file_range is not None:
        # Advisory only: an error here (e.g. EINVAL on odd filesystems) changes nothing that
        # the fsync at commit will not catch.
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def write_all(fd: int, data: memoryview) -> None:
    """``os.write`` until every byte is written (a regular file may accept fewer)."""
    while data:
        n = os.write(fd, data)
        data = data[n:]


class HashingAppender:
    """Appends to ``fd`` (positioned at ``offset``) and hashes into ``hasher``.

    ``write`` copies; ``flush`` writes and hashes everything buffered; ``digest_object`` flushes
    and returns the hash after every pending update finished. ``close`` stops the helper thread
    (it does not close ``fd``).
    """

    def __init__(self, fd: int, hasher: Any, offset: int) -> None:
        self.fd = fd
        self.hasher = hasher
        self.written = offset  # bytes handed to the file so far
        self.broken = False
        self._buf: bytearray | None = None
        self._fill = 0
        self._free: list[bytearray] = []
        self._pending: deque[tuple[Future[None], bytearray]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self._synced_to = offset - offset % WRITEBACK_WINDOW

    def write(self, data: bytes | bytearray | memoryview) -> int:
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1 or not mv.c_contiguous:
            mv = mv.cast("B") if mv.c_contiguous else memoryview(mv.tobytes())
        n = len(mv)
        pos = 0
        while pos < n:
            if self._buf is None:
                self._buf = self._take()
            k = min(BUFFER_SIZE - self._fill, n - pos)
            self._buf[self._fill:self._fill + k] = mv[pos:pos + k]
            self._fill += k
            pos += k
            if self._fill == BUFFER_SIZE:
                self.flush()
        return n

    def flush(self) -> None:
        """Write the buffered bytes and start hashing them."""
        buf, fill = self._buf, self._fill
        if buf is None or not fill:
            return
        self._buf, self._fill = None, 0
        view = memoryview(buf)[:fill]
        if fill < _INLINE_HASH and not self._pending:
            self.hasher.update(view)
            self._append(view)
            view.release()
            self._free.append(buf)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="cargohold-hash")
        # The helper hashes this buffer while this thread writes it: both only read it.
        self._pending.append((self._pool.submit(self.hasher.update, view), buf))
        self._append(view)

    def _append(self, view: memoryview) -> None:
        try:
            write_all(self.fd, view)
        except BaseException:
            self.broken = True
            raise
        self.written += len(view)
        window_end = self.written - self.written % WRITEBACK_WINDOW
        if window_end > self._synced_to:
            start_writeback(self.fd, self._synced_to, window_end - self._synced_to)
            self._synced_to = window_end

    def _take(self) -> bytearray:
        if len(self._pending) >= POOL_DEPTH:
            fut, buf = self._pending.popleft()
            fut.result()
            return buf
        if self._free:
            return self._free.pop()
        return bytearray(BUFFER_SIZE)

    def wait(self) -> None:
        """Wait until every submitted buffer is hashed; re-raise a hashing error."""
        while self._pending:
            fut, buf = self._pending.popleft()
            fut.result()
            self._free.append(buf)

    def digest_object(self) -> Any:
        """Flush, wait, and return the hash object (callers ``.copy()`` before finishing it)."""
        self.flush()
        self.wait()
        return self.hasher

    def discard(self) -> None:
        """Drop buffered bytes that were not written yet (for a truncate)."""
        self.wait()
        if self._buf is not None:
            self._free.append(self._buf)
        self._buf, self._fill = None, 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._free.clear()
        self._buf = None
