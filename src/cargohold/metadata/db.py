"""The metadata database: the schema of :mod:`cargohold.metadata.schema` on LMDB.

Every write transaction that changes anything bumps ``epoch``; the garbage collector marks in a
read transaction and sweeps only while the epoch it marked at still holds.
"""

from __future__ import annotations

import os

from cargohold._lmdb import Env, Tx
from cargohold._oserror import read_only_error
from cargohold.metadata import schema

__all__ = ["DB", "Tx", "open_db", "epoch"]


def epoch(tx: Tx) -> int:
    """The mutation counter as this transaction sees it."""
    return tx.get_int(schema.EPOCH_KEY)


class DB(Env):
    """The metadata database under ``<root>/metadata``."""

    def _before_commit(self, tx: Tx) -> None:
        if tx.dirty:  # the GC's sweep checks this counter (see the module docstring)
            tx.put(schema.EPOCH_KEY, epoch(tx) + 1)


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
            if db.read_only and raw is not None:
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
