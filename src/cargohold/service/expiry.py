"""Lease and ingest expiry: tell the GC scheduler when something stopped holding what it held.

Time alone turns a lease whose ``containerd.io/gc.expire`` passed, an ingest whose ``expireat``
passed, or a lease whose owner process died (:mod:`cargohold.leases.owner`) into garbage, with
no write the scheduler's counters would see. :class:`ExpiryWatch` reads the leases and ingest
records of every namespace (a few keys each) when the database changed, and every
``RESCAN`` seconds for owners that died, and keeps the earliest expiry ahead. :meth:`check`
returns why a collection is due ("lease L expired", "lease L: owner died") once per object,
or "".

Nothing here writes; an object that stays (an unreadable expiry, an owner that cannot be
judged) is reported once, not again and again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cargohold.leases import owner as owners
from cargohold.metadata import leases as lease_records
from cargohold.metadata import namespaces
from cargohold.metadata.db import DB, epoch
from cargohold.metadata.schema import ns_bucket
from cargohold.types import LABEL_GC_EXPIRE, now_ns, parse_time

RESCAN = 5.0


class ExpiryWatch:
    """See the module docstring."""

    def __init__(self, db: DB, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.clock = clock
        self._mu = threading.Lock()
        self._epoch = -1
        self._scanned = 0.0
        self._ahead: list[tuple[int, str]] = []  # (ns time, what) still in the future
        self._announced: set[str] = set()
        self.expired = 0  # how many objects this watch reported

    def _scan(self) -> list[tuple[int, str]]:
        """(expiry in ns, reason) of every lease and ingest with one, and ``(0, reason)``
        for every lease whose owner is dead.
        """
        out: list[tuple[int, str]] = []
        check = owners.cached_check()
        with self.db.view() as tx:
            for ns in namespaces.list_all(tx):
                for lease in lease_records.list_leases(tx, ns):
                    exp = lease.labels.get(LABEL_GC_EXPIRE)
                    if exp:
                        try:
                            out.append((parse_time(exp), f"lease {ns}/{lease.id} expired"))
                        except Exception:  # noqa: BLE001 - kept, as the GC keeps it
                            pass
                    if check(lease.labels) is owners.State.DEAD:
                        out.append((0, f"lease {ns}/{lease.id}: its owner process is gone"))
                prefix = ns_bucket(ns, "content", "ingests")
                for k, v in tx.scan(prefix):
                    if k.endswith(b"\x00expireat") and v:
                        ref = k[len(prefix):-len(b"\x00expireat")].decode()
                        out.append((int(v), f"ingest {ns}/{ref} expired"))
        return out

    def check(self) -> str:
        """Why a collection is due now, or ""; the reason of each object is given once."""
        with self._mu:
            mono = self.clock()
            with self.db.view() as tx:
                e = epoch(tx)
            if e != self._epoch or mono - self._scanned >= RESCAN:
                self._epoch, self._scanned = e, mono
                found = self._scan()
                now = now_ns()
                self._ahead = sorted(x for x in found if x[0] > now)
                due = [why for t, why in found if t <= now]
                self._announced &= {why for _, why in found}  # forget what went away
            else:
                now = now_ns()
                due = [why for t, why in self._ahead if t <= now]
                self._ahead = [x for x in self._ahead if x[0] > now]
            fresh = [why for why in due if why not in self._announced]
            self._announced.update(fresh)
            self.expired += len(fresh)
            return "; ".join(fresh[:3]) + (f" (+{len(fresh) - 3})" if len(fresh) > 3 else "")

    def next_expiry(self) -> int:
        """The earliest expiry ahead (ns since the epoch), or 0."""
        with self._mu:
            return self._ahead[0][0] if self._ahead else 0
