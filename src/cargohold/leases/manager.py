"""The lease manager: leases that hold objects alive while an operation builds them.

``with manager.lease(expire=..., purpose=...) as lid:`` creates a lease (random id, 24 h expiry
by default) owned by this process, runs the block with it, and deletes it afterwards. The
owner is recorded in the lease's labels (:mod:`cargohold.leases.owner`), so a process killed in
the middle leaves a lease that GC treats as expired as soon as the process is gone (not a day
later), and ``hold fsck`` names what it left. An expired lease, or one whose owner is dead,
protects nothing. Leases made with :meth:`LeaseManager.create` (``hold leases create``) have no
owner and live until deleted or expired.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence

from cargohold.errors import CargoholdError, FailedPrecondition, NotFound, Unavailable
from cargohold.leases.owner import owner_labels
from cargohold.metadata import leases as records
from cargohold.metadata.db import DB
from cargohold.metadata.leases import Lease, Resource
from cargohold.types import LABEL_GC_EXPIRE, format_time, now_ns

DEFAULT_EXPIRY = 24 * 3600 * 10**9


def random_id() -> str:
    """``<nanoseconds>-<4 random chars>``, unique enough and sortable by creation."""
    import base64  # only a new lease's id needs it

    return f"{time.time_ns()}-{base64.b32encode(os.urandom(5)).decode().lower()[:8]}"


class LeaseManager:
    """Leases of one namespace; ``collect`` runs GC for ``delete(sync=True)``."""

    def __init__(self, db: DB, ns: str, collect: Callable[[], object] | None = None) -> None:
        self.db = db
        self.ns = ns
        self._collect = collect

    def create(self, id: str | None = None, *, expire: int | None = None,
               labels: dict[str, str] | None = None) -> Lease:
        """Create a lease; ``expire`` is a duration in ns from now. AlreadyExists on a repeat."""
        labels = dict(labels or {})
        if expire is not None:
            labels[LABEL_GC_EXPIRE] = format_time(now_ns() + expire)
        with self.db.update() as tx:
            return records.create(tx, self.ns, id or random_id(), labels)

    def delete(self, id: str, *, sync: bool = False) -> object | None:
        """Delete the lease (NotFound if absent). With ``sync``, run GC before returning and
        return its result.
        """
        with self.db.update() as tx:
            records.delete(tx, self.ns, id)
        if sync and self._collect is not None:
            return self._collect()
        return None

    def list(self, filters: Sequence[str] = ()) -> list[Lease]:
        with self.db.view() as tx:
            return records.list_leases(tx, self.ns, filters)

    def get(self, id: str) -> Lease:
        with self.db.view() as tx:
            return records.get(tx, self.ns, id)

    def add_resource(self, id: str, resource: Resource) -> None:
        with self.db.update() as tx:
            records.add_resource(tx, self.ns, id, resource)

    def delete_resource(self, id: str, resource: Resource) -> None:
        with self.db.update() as tx:
            records.delete_resource(tx, self.ns, id, resource)

    def list_resources(self, id: str) -> list[Resource]:
        with self.db.view() as tx:
            return records.list_resources(tx, self.ns, id)

    @contextlib.contextmanager
    def lease(self, *, expire: int = DEFAULT_EXPIRY, labels: dict[str, str] | None = None,
              purpose: str = "", collect_on_error: bool = False) -> Iterator[str]:
        """A lease owned by this process for the ``with`` block, deleted after it.

        ``purpose`` says what the block does, for messages about a dead owner's leftovers.
        With ``collect_on_error``, a block that raises (Ctrl-C included) also runs GC after
        the delete, so what it made goes at once instead of at the next ``hold gc``.

        The delete never hides the block's own error: if it fails, the failure is added to
        that error (its hint, or a note) and the block's error is raised. After a block that
        succeeded, a lease deleted meanwhile (NotFound) is fine; any other failure raises
        FailedPrecondition, saying that the work is done and how the lease goes away.
        """
        owner = owner_labels(purpose)
        lease = self.create(expire=expire, labels={**(labels or {}), **owner})
        # Without /proc no owner is recorded, and the lease lasts until its expiry.
        when = "once this process has exited" if owner else "once the lease expires"
        try:
            yield lease.id
        except BaseException as exc:
            # Anything the cleanup raises (a full disk, an LMDB error) is attached to the
            # block's error instead of replacing it: that error is what the user must see.
            problem = self._end(lease.id, collect=collect_on_error, broad=True)
            if problem:
                _add_to(exc, f"{problem}; 'hold gc' removes what is left {when}")
            raise
        problem = self._end(lease.id, collect=False, broad=False)
        if problem:
            raise FailedPrecondition(
                f"lease {lease.id}: could not be deleted after the work finished: {problem}",
                hint=f"what the command made is in place; 'hold gc' removes the lease {when}")

    def _end(self, lid: str, *, collect: bool, broad: bool) -> str:
        """Delete ``lid`` (and with ``collect`` run GC); return what went wrong, or ''.

        ``broad`` (after the block failed) reports every Exception; otherwise only
        CargoholdError and OSError are reported and anything else (a bug) propagates.
        """
        expected: tuple[type[Exception], ...] = (
            (Exception,) if broad else (CargoholdError, OSError))
        try:
            self.delete(lid)
        except NotFound:
            pass  # deleted meanwhile (hold leases rm): what it held is already released
        except expected as exc:
            return f"lease {lid} was left behind ({exc})"
        if collect and self._collect is not None:
            try:
                self._collect()
            except Unavailable:
                # Another collection holds the GC lock. The lease is gone already, so that
                # collection or the next one takes what the block left: nothing is stranded.
                pass
            except expected as exc:
                return f"lease {lid} was deleted, but collecting what it held failed ({exc})"
        return ""


def _add_to(exc: BaseException, text: str) -> None:
    """Attach a cleanup failure to the error being raised (its hint when it has one)."""
    if isinstance(exc, CargoholdError):
        exc.hint = f"{exc.hint}; {text}" if exc.hint else text
    else:
        exc.add_note(text)
