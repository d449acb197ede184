"""The lease manager: leases that hold objects alive while an operation builds them.

``with manager.lease(expire=...) as lid:`` creates a lease (random id, 24 h expiry by default),
runs the block with it, and deletes it afterwards; a crash in the middle leaves a lease that
expires on its own, so nothing it held leaks forever. An expired lease protects nothing.
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence

from cargohold.metadata import leases as records
from cargohold.metadata.db import DB
from cargohold.metadata.leases import Lease, Resource
from cargohold.types import LABEL_GC_EXPIRE, format_time, now_ns

DEFAULT_EXPIRY = 24 * 3600 * 10**9


def random_id() -> str:
    """``<nanoseconds>-<4 random chars>``, unique enough and sortable by creation."""
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
    def lease(self, *, expire: int = DEFAULT_EXPIRY,
              labels: dict[str, str] | None = None) -> Iterator[str]:
        """A temporary lease for the ``with`` block; deleted after it (even on error)."""
        lease = self.create(expire=expire, labels=labels)
        try:
            yield lease.id
        finally:
            with contextlib.suppress(Exception):
                self.delete(lease.id)
