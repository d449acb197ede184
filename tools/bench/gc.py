#!/usr/bin/env python3
"""GC benchmark: a metadata store with 100,000 blobs and 10,000 images, mark and sweep.

Each image is index -> manifest -> config + 7 layers (10 blobs), linked with containerd's
client labels; every blob has a real file. Then 10 % of the images are deleted and `hold gc`'s
collector runs. Goal: mark + sweep under 2 s. Usage: tools/bench/gc.py [--images N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

from _common import build_gc_store

from cargohold.gc.collector import Collector
from cargohold.metadata import images
from cargohold.metadata.db import open_db
from cargohold.store.local import LocalStore


def build(root: str, n_images: int) -> tuple[int, LocalStore]:
    store = LocalStore(os.path.join(root, "content"))
    blobdir = os.path.join(store.root, "blobs", "sha256")
    os.makedirs(blobdir, exist_ok=True)
    build_gc_store(root, n_images, blobdir)
    return n_images * 10, store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--garbage", type=float, default=0.10)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="gc-bench-", dir=a.dir)
    try:
        t = time.monotonic()
        nblobs, store = build(root, a.images)
        setup = time.monotonic() - t
        db = open_db(root)
        with db.update() as tx:
            for i in range(int(a.images * a.garbage)):
                images.delete(tx, "default", f"registry.example/app{i}:v1")
        coll = Collector(db, store)
        t = time.monotonic()
        dry = coll.collect(dry_run=True)
        dry_s = time.monotonic() - t
        t, c = time.monotonic(), time.process_time()
        res = coll.collect()
        total, cpu = time.monotonic() - t, time.process_time() - c
        out = {"images": a.images, "blobs": nblobs, "setup_s": round(setup, 2),
               "dry_run_s": round(dry_s, 3), "mark_s": round(res.mark_seconds, 3),
               "sweep_s": round(res.sweep_seconds, 3),
               "files_s": round(res.backend_seconds, 3), "total_s": round(total, 3),
               "total_cpu_s": round(cpu, 3),
               "load_avg": os.getloadavg()[0],
               "removed": len(res.removed), "planned": len(dry.removed),
               "goal": "mark+sweep < 2 s",
               "met": res.mark_seconds + res.sweep_seconds < 2.0}
        print(json.dumps(out, indent=2))
        db.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
