"""The metadata database: the schema of :mod:`cargohold.metadata.schema` on LMDB.

Every write transaction that changes anything bumps ``epoch``; the garbage collector marks in a
read transaction and sweeps only while the epoch it marked at still holds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from cargohold._lmdb import Tx, open_env, release_env
from cargohold.metadata import schema

__all__ = ["DB", "Tx", "open_db", "epoch"]


def epoch(tx: Tx) -> int:
    """The mutation counter as this transaction sees it."""
    return tx.get_int(schema.EPOCH_KEY)


class DB:
    """The metadata database under ``<root>/metadata``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.env = open_env(path)
        self._closed = False

    @contextlib.contextmanager
    def view(self) -> Iterator[Tx]:
        """A read-only transaction: one consistent snapshot."""
        with self.env.begin(write=False, buffers=False) as txn:
            yield Tx(txn, False)

    @contextlib.contextmanager
    def update(self) -> Iterator[Tx]:
        """A write transaction; commits when the block ends, aborts on an exception.

        Only one write transaction runs at a time across all processes; do no slow I/O inside.
        """
        txn = self.env.begin(write=True, buffers=False)
        tx = Tx(txn, True)
        try:
            yield tx
            if tx.dirty:
                txn.put(schema.EPOCH_KEY, str(epoch(tx) + 1).encode())
            txn.commit()
        except BaseException:
            txn.abort()
            raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            release_env(self.path)


def open_db(root: str) -> DB:
    """Open (creating and migrating when needed) the metadata database of a root."""
    db = DB(os.path.join(root, "metadata"))
    with db.view() as tx:
        raw = tx.get(schema.VERSION_KEY)
    if raw is None or int(raw) != schema.SCHEMA_VERSION:
        with db.update() as tx:
            schema.migrate(tx)
    return db
