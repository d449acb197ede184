#!/usr/bin/env python3
"""How much room do removals need on a full disk? Measures what sizes ``_reserve.RESERVE_BYTES``.

Builds the metadata of a store like tools/bench/gc.py (each image: index -> manifest -> config
+ 7 layers, containerd's gc labels; no blob files), removes a fraction of the images *at
random* (so their records are spread over the whole key space: the worst case for pages
touched), and runs the real collector's sweep with ``[gc] sweep_batch`` records per write
transaction. Every commit of the metadata database is wrapped to record how many bytes
``data.mdb`` grew by (its allocated blocks): that is what a commit on a 100 % full disk needs
from the reserve. Also measured: one ``images rm`` of many images at once.

The database is compacted first (``mdb_env_copy2`` with ``MDB_CP_COMPACT``), so no free page
is left to reuse: every page a commit writes extends the file (the worst case; a store in use
usually has free pages, and then a commit needs nothing — ``--no-compact`` shows that).

Usage: tools/reserve_size.py [--images N] [--garbage F] [--batch B] [--no-compact] [--dir DIR]
Prints JSON: the largest growth of one commit, and of the first two commits together.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile

from cargohold import _lmdb
from cargohold.gc.collector import Collector
from cargohold.metadata import images
from cargohold.metadata.db import open_db

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench"))
from _common import build_gc_store  # noqa: E402


class _Store:
    """Just enough of a LocalStore for the collector's sweep (no blob files exist)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def ingest_refs(self) -> list[str]:
        return []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--garbage", type=float, default=0.10)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rm", type=int, default=1000, help="images removed by one 'images rm'")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--no-compact", action="store_true",
                    help="keep the free pages the build left (by default the database is "
                         "compacted first: no free page to reuse, the worst case)")
    a = ap.parse_args()
    base = tempfile.mkdtemp(prefix="reserve-size-", dir=a.dir)
    growth: list[int] = []
    real_commit = _lmdb.Env._commit

    def allocated(root: str) -> int:
        return os.stat(os.path.join(root, "metadata", "data.mdb")).st_blocks * 512

    def measured(self, txn, tx):  # noqa: ANN001, ANN202
        root = os.path.dirname(self.path)
        before = allocated(root)
        real_commit(self, txn, tx)
        growth.append(allocated(root) - before)

    try:
        built = os.path.join(base, "built")
        build_gc_store(built, a.images)
        rng = random.Random(7)
        doomed = rng.sample(range(a.images), int(a.images * a.garbage) + a.rm)
        garbage, rm = doomed[:-a.rm], doomed[-a.rm:]
        db = open_db(built)
        with db.update() as tx:  # the garbage the sweep will find
            for i in garbage:
                images.delete(tx, "default", f"registry.example/app{i}:v1")
        db.close()
        copies = {}
        for name in ("sweep", "rm"):
            copies[name] = os.path.join(base, name)
            os.makedirs(os.path.join(copies[name], "metadata"))
            if a.no_compact:
                shutil.copy(os.path.join(built, "metadata", "data.mdb"),
                            os.path.join(copies[name], "metadata", "data.mdb"))
            else:
                import lmdb

                env = lmdb.open(os.path.join(built, "metadata"), map_size=_lmdb.MAP_SIZE)
                env.copy(os.path.join(copies[name], "metadata"), compact=True)
                env.close()
        size = allocated(copies["sweep"])
        _lmdb.Env._commit = measured  # type: ignore[method-assign]
        from cargohold.gc.collector import Result

        db = open_db(copies["sweep"])
        r = Result()
        Collector(db, _Store(os.path.join(copies["sweep"], "content")), batch=a.batch)._sweep(r)
        db.close()
        sweep = list(growth)
        growth.clear()
        db = open_db(copies["rm"])
        with db.update() as tx:  # one 'hold images rm' of many names
            for i in rm:
                images.delete(tx, "default", f"registry.example/app{i}:v1")
        db.close()
        _lmdb.Env._commit = real_commit  # type: ignore[method-assign]
        out = {"images": a.images, "blobs": a.images * 10, "compacted": not a.no_compact,
               "data_mdb_bytes": size, "garbage_images": len(garbage),
               "removed_records": len(r.removed), "batch": a.batch, "commits": len(sweep),
               "sweep_max_commit_growth": max(sweep, default=0),
               "sweep_max_two_commits_growth": max((sweep[i] + sweep[i + 1]
                                                    for i in range(len(sweep) - 1)),
                                                   default=max(sweep, default=0)),
               "sweep_total_growth": sum(sweep),
               "images_rm": len(rm), "images_rm_growth": growth[0] if growth else 0}
        print(json.dumps(out, indent=2))
    finally:
        _lmdb.Env._commit = real_commit  # type: ignore[method-assign]
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
