"""The space reserve: a preallocated file per root that removals give back on a full disk.

``<root>/reserve`` holds :data:`RESERVE_BYTES` allocated with ``posix_fallocate`` (real blocks,
not a sparse file). It exists for one kind of write: one that frees space but needs some
first. An LMDB transaction that removes records is copy-on-write — it writes new pages before
the old ones become free — so on a 100 % full filesystem it fails with ``ENOSPC``, and without
room a user could not free space with hold itself. Such a write calls :func:`release_for`,
which gives back part of the reserve of that filesystem, and tries again (see
:class:`cargohold._lmdb.Env`).
Writes that add data never release it: an import that fills the disk leaves the reserve to
the ``hold images rm`` and ``hold gc`` that follow.

It is given back in chunks (:data:`CHUNK_BYTES`), one per ``ENOSPC`` a removal meets, so one
removal on a full disk uses only what it needs and the next one — even after something else
filled the disk again — still finds a chunk.

Life cycle: the client of a writable root calls :meth:`Reserve.ensure` when it opens the
metadata (the reserve is made, or topped up, when the filesystem keeps at least the reserve's
size free afterwards, so making it never fills a disk) and registers it for its filesystem;
its ``close`` calls ``ensure`` again, so a reserve that a removal used comes back as soon as
that removal has freed the space, or at the next open that finds room.

Size, measured with ``tools/reserve_size.py`` (a store of 20,000 images and 200,000 blob
records, 2,000 images of garbage at random places, compacted first so that no free page is
left to reuse — the worst case; with the free pages a store in use has, every measured commit
needed nothing): one GC sweep commit of 500 records grew ``data.mdb`` by at most 2.1 MB, two
in a row by 4.2 MB, the whole sweep (40 commits; from the third on, freed pages are reused) by
4.5 MB, and one ``images rm`` of 1,000 names by 4.6 MB. So a chunk of 4 MiB covers any single
commit measured, and the 8 MiB reserve a whole sweep or a large ``images rm`` with room for the
snapshot bookkeeping's own commits and the lock files' holder text.
"""

from __future__ import annotations

import _thread  # threading's Lock and get_ident, without importing threading (start-up)
import contextlib
import os

from cargohold._oserror import _existing, free_bytes

RESERVE_NAME = "reserve"
RESERVE_BYTES = 8 << 20  # see the module docstring for the measurements
CHUNK_BYTES = 4 << 20

_mu = _thread.allocate_lock()
_by_dev: dict[int, Reserve] = {}


class Reserve:
    """The reserve file of one root."""

    def __init__(self, root: str, size: int = RESERVE_BYTES, chunk: int = CHUNK_BYTES) -> None:
        self.root = root
        self.path = os.path.join(root, RESERVE_NAME)
        self.size = size
        self.chunk = chunk
        self.released = 0  # bytes given back by this process

    def allocated(self) -> int:
        """Bytes the reserve holds now (0 when it does not exist)."""
        try:
            return os.stat(self.path).st_blocks * 512
        except OSError:
            return 0

    def ensure(self) -> bool:
        """Make or top up the reserve when the filesystem keeps at least ``size`` bytes free
        afterwards; return whether it is whole. Never raises: without room the root simply
        has a smaller reserve (or none) until room comes back. A repeat does nothing.
        """
        have = self.allocated()
        if have >= self.size:
            return True
        if free_bytes(self.root) - (self.size - have) < self.size:
            return False
        tmp = f"{self.path}.tmp-{os.getpid()}-{_thread.get_ident()}"
        try:
            if have:
                fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.posix_fallocate(fd, 0, self.size)
                finally:
                    os.close(fd)
                return True
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)  # whole or absent, whoever else makes it meanwhile
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False
        return True

    def release(self) -> int:
        """Give back one chunk (the rest when less is left); return the bytes freed (0 when
        the reserve is used up).
        """
        have = self.allocated()
        if not have:
            return 0
        try:
            if have <= self.chunk:
                os.unlink(self.path)
            else:
                os.truncate(self.path, have - self.chunk)
        except OSError:
            return 0
        freed = have - self.allocated()
        self.released += freed
        return freed


def _dev(path: str) -> int | None:
    try:
        return os.stat(_existing(path)).st_dev
    except OSError:
        return None


def register(reserve: Reserve) -> None:
    """Make ``reserve`` the one :func:`release_for` gives back for its filesystem."""
    dev = _dev(reserve.root)
    if dev is not None:
        with _mu:
            _by_dev[dev] = reserve


def unregister(reserve: Reserve) -> None:
    """Forget ``reserve`` (when its client closes)."""
    with _mu:
        for dev, r in list(_by_dev.items()):
            if r is reserve:
                del _by_dev[dev]


def release_for(path: str) -> int:
    """Give back one chunk of the reserve of the filesystem holding ``path``; return the bytes
    freed (0: no reserve registered there, or it is used up).
    """
    dev = _dev(path)
    with _mu:  # one release at a time: two threads meeting ENOSPC take two chunks, in turn
        reserve = _by_dev.get(dev) if dev is not None else None
        return reserve.release() if reserve is not None else 0
