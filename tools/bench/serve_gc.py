#!/usr/bin/env python3
"""Benchmark: how long a CLI writer waits while `hold serve` collects the 100,000-blob store.

The store is tools/bench/gc.py's (10,000 images of 10 blobs, every blob a real file); 10 % of
the images are removed before the service starts. `hold serve` runs on it with its scheduler
held back (``startup_delay = "1h"``), a writer process starts writing (each write one metadata
transaction, as any `hold` command's: a label on a surviving image, ``--pause`` ms apart), and
a collection is asked for on the control socket (POST /v1/gc). The writer times every
transaction from begin to commit.

Prints the collection (mark, sweep, batches, retries), the writer's longest wait before the
collection (its own commit cost) and during it, the longest wait for the write lock during
it (what the collection can make a writer wait for), and the longest sweep batch. Goal: that
wait is no more than one batch.

Usage: ``python3 tools/bench/serve_gc.py [--images 10000] [--pause 5] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # for tests.* helpers

WRITER = r"""
import json, os, random, sys, time
from cargohold.metadata.db import open_db
from cargohold.metadata import images
root, stop, out = sys.argv[1:4]
n_images, pause = int(sys.argv[4]), float(sys.argv[5])
db = open_db(root)
rows = []
first = int(n_images * 0.1)
i = 0
while not os.path.exists(stop):
    name = f"registry.example/app{random.randrange(first, n_images)}:v1"
    t0 = time.monotonic()
    txn = db.update()
    tx = txn.__enter__()  # the wait: the write lock, which a sweep batch holds
    t1 = time.monotonic()
    try:
        img = images.get(tx, "default", name)
        images.update(tx, "default", images.Image(name, img.target, {"bench/n": str(i)}),
                      ["labels.bench/n"])
    except BaseException:
        txn.__exit__(*sys.exc_info())
        raise
    txn.__exit__(None, None, None)  # the commit: the writer's own fsync
    rows.append((time.time(), t1 - t0, time.monotonic() - t0))
    i += 1
    time.sleep(pause)
db.close()
json.dump(rows, open(out, "w"))
"""


def load_gc_bench():  # noqa: ANN201 - tools/bench/gc.py, whose name shadows the gc module
    spec = importlib.util.spec_from_file_location("bench_gc", os.path.join(HERE, "gc.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--pause", type=float, default=5.0, help="ms between the writer's writes")
    ap.add_argument("--dir", default="/var/tmp/hold-bench-serve")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    from tests.service.servekit import SRC, Serve

    from cargohold.metadata import images
    from cargohold.metadata.db import open_db

    work = tempfile.mkdtemp(prefix="gc-", dir=args.dir)
    serve = None
    writer = None
    try:
        root = os.path.join(work, "root")
        os.makedirs(root)
        t = time.monotonic()
        nblobs, _store = load_gc_bench().build(root, args.images)
        db = open_db(root)
        with db.update() as tx:
            for i in range(int(args.images * 0.1)):
                images.delete(tx, "default", f"registry.example/app{i}:v1")
        db.close()
        print(f"store: {nblobs} blobs, {args.images} images, 10 % removed "
              f"(built in {time.monotonic() - t:.1f}s)", flush=True)
        serve = Serve(root, '[gc]\nstartup_delay = "1h"\nmutation_threshold = 0\n'
                            '[serve]\nregistry_address = ""\n').start()
        stop = os.path.join(work, "stop")
        out = os.path.join(work, "writes.json")
        env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
        writer = subprocess.Popen([sys.executable, "-c", WRITER, root, stop, out,
                                   str(args.images), str(args.pause / 1000)], env=env)
        time.sleep(2.0)
        from cargohold.service.control import call

        state = os.path.join(root, "_state")
        gc_start = time.time()
        call(state, "POST", "/v1/gc")
        deadline = time.monotonic() + 600
        st = {}
        while time.monotonic() < deadline:
            st = call(state, "GET", "/v1/status")[1]
            if st["gc"]["last"] and not st["gc"].get("running"):
                break
            time.sleep(0.05)
        gc_end = time.time()
        time.sleep(1.0)
        open(stop, "w").close()
        writer.wait(60)
        rows = json.load(open(out))
        last = st["gc"]["last"]
        if last.get("bytes_freed") is None:
            raise SystemExit(f"the collection failed: {last}")
        records = sum(v for k, v in last["removed"].items()
                      if k in ("content", "image", "snapshot", "lease", "ingest"))
        batch = 500
        batches = max(1, math.ceil(records / batch))
        per_batch = last["longest_batch_seconds"]
        before = [dt for ts, _, dt in rows if ts < gc_start]
        during = [dt for ts, _, dt in rows if gc_start <= ts <= gc_end]
        waits = [w for ts, w, _ in rows if gc_start <= ts <= gc_end]
        print(f"collection: {last['seconds']:.2f}s (mark {last['mark_seconds']:.2f}s, sweep "
              f"{last['sweep_seconds']:.3f}s in {batches} batches of {batch}, "
              f"{last['retries']} retries), removed {records} records and "
              f"{last['removed'].get('blob-file', 0)} files", flush=True)
        print(f"longest sweep batch: {per_batch * 1000:.1f} ms", flush=True)
        print(f"writer: {len(before)} writes before, longest {max(before) * 1000:.1f} ms; "
              f"{len(during)} writes during the collection, longest "
              f"{max(during) * 1000:.1f} ms, median "
              f"{sorted(during)[len(during) // 2] * 1000:.1f} ms", flush=True)
        # The wait on the collection is the time to get the write lock (a sweep batch holds
        # it); the rest of a write is its own commit, whose fsync the collection's file
        # deletions slow down through the disk, not through any lock.
        print(f"longest wait for the write lock during the collection: "
              f"{max(waits) * 1000:.1f} ms (goal <= one batch, {per_batch * 1000:.1f} ms): "
              f"{'met' if max(waits) <= per_batch else 'NOT met'}; the longest whole write "
              f"exceeded the longest before the collection by "
              f"{max(0.0, max(during) - max(before)) * 1000:.1f} ms", flush=True)
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        if serve is not None:
            serve.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
