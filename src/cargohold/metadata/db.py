"""The metadata database: the schema of :mod:`cargohold.metadata.schema` on LMDB.

Every write transaction that changes anything bumps ``epoch``; the garbage collector marks in a
read transaction and sweeps only while the epoch it marked at still holds. One that removes
records (images, blobs, snapshots, leases) adds how many to ``removals``, so ``hold serve``'s
GC scheduler counts deletions made by any process.

The write barrier: while a collection runs it sets ``gcactive`` (until a deadline, so a
killed collector stops it by itself), and every write transaction that puts keys under
``v1/`` meanwhile logs them under ``gclog/<its epoch>``. The collector's sweep reads what was
written since its mark (:func:`writes_since`) and spares whatever those writes made
reachable, instead of marking again: a writer never waits for a mark, only for one sweep
batch.
"""

from __future__ import annotations

import json
import os

from cargohold._lmdb import Env, Tx
from cargohold._oserror import read_only_error
from cargohold.metadata import schema

__all__ = ["DB", "Tx", "open_db", "epoch", "removals"]

# The key that makes a bucket a record, by kind: (number of segments, last segment).
_RECORD_KEYS = {b"images": (5, b"target"), b"leases": (5, b"createdat"),
                b"snapshots": (6, b"name"), b"content": (6, b"size")}
_V1 = schema.ROOT.encode() + schema.SEP
GC_ACTIVE_KEY = b"gcactive"
GC_LOG = b"gclog" + schema.SEP
MAX_LOGGED_VALUE = 4096


def epoch(tx: Tx) -> int:
    """The mutation counter as this transaction sees it."""
    return tx.get_int(schema.EPOCH_KEY)


def removals(tx: Tx) -> int:
    """How many records have been removed, ever, as this transaction sees it."""
    return tx.get_int(schema.REMOVALS_KEY)


def removed_records(log: list[tuple[bytes, bytes | None]]) -> int:
    """How many image, blob, snapshot and lease records a write log removes."""
    n = 0
    for k, v in log:
        if v is not None or not k.startswith(_V1):
            continue
        parts = k.split(schema.SEP)
        want = _RECORD_KEYS.get(parts[2]) if len(parts) > 2 else None
        if want and len(parts) == want[0] and parts[-1] == want[1] and (
                parts[2] != b"content" or parts[3] == b"blob"):
            n += 1
    return n


def begin_barrier(tx: Tx, until_ns: int) -> None:
    """Start logging writes for a collection (see the module docstring); old logs go."""
    tx.delete_prefix(GC_LOG)
    tx.put(GC_ACTIVE_KEY, until_ns)


def end_barrier(tx: Tx) -> None:
    tx.delete(GC_ACTIVE_KEY)
    tx.delete_prefix(GC_LOG)


def writes_since(tx: Tx, seen: int) -> list[tuple[str, str]]:
    """(key, value) of every ``v1/`` put committed after epoch ``seen`` while the barrier
    was up; keys with their NUL separators, values cut at ``MAX_LOGGED_VALUE``.
    """
    out: list[tuple[str, str]] = []
    start = GC_LOG + b"%020d" % (seen + 1)
    with tx.cursor() as cur:
        if not cur.set_range(start):
            return out
        for k, v in cur:
            if not k.startswith(GC_LOG):
                break
            out.extend((a, b) for a, b in json.loads(v))
    return out


def _log_writes(tx: Tx, new_epoch: int) -> None:
    active = tx.get(GC_ACTIVE_KEY)
    if active is None:
        return
    from cargohold.types import now_ns

    if int(active) < now_ns():
        return
    writes = [[k.decode(errors="replace"), v[:MAX_LOGGED_VALUE].decode(errors="replace")]
              for k, v in tx.log if v is not None and k.startswith(_V1)]
    if writes:
        tx.put(GC_LOG + b"%020d" % new_epoch, json.dumps(writes))


class DB(Env):
    """The metadata database under ``<root>/metadata``."""

    def _before_commit(self, tx: Tx) -> None:
        if tx.dirty:  # the GC's sweep checks this counter (see the module docstring)
            new = epoch(tx) + 1
            _log_writes(tx, new)
            tx.put(schema.EPOCH_KEY, new)
            n = removed_records(tx.log)
            if n:
                tx.put(schema.REMOVALS_KEY, removals(tx) + n)


def open_db(root: str) -> DB:
    """Open (creating and migrating when needed) the metadata database of a root.

    Under a read-only root nothing is created or migrated: a database without a version is
    read as empty, and one at another schema version raises ``ReadOnly`` (it needs one
    read-write open to migrate).
    """
    db = DB(os.path.join(root, "metadata"))
    try:
        with db.view() as tx:
            raw = tx.get(schema.VERSION_KEY)
        if raw is None or int(raw) != schema.SCHEMA_VERSION:
            if db.read_only and raw is not None and not (
                    schema.READABLE_FROM <= int(raw) <= schema.SCHEMA_VERSION):
                err = read_only_error(root)
                err.message += (f": its metadata is at schema version {int(raw)} and needs a "
                                f"migration to {schema.SCHEMA_VERSION}")
                raise err
            if not db.read_only:
                with db.update() as tx:
                    schema.migrate(tx)
    except BaseException:
        db.close()
        raise
    return db
