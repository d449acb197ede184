#!/usr/bin/env python3
"""Ingest throughput of LocalStore against `sha256sum`, same file, same run.

    python3 tools/bench/ingest.py [--size-mb 500] [--reps 3] [--dir /tmp]

Creates a random file, warms the page cache (both contenders then read from memory), and
alternates `sha256sum FILE` with a LocalStore ingest of the file through `copy_into` (which
includes the commit's fsync and rename). Prints MB/s for each and the ratio of medians.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from cargohold.store.api import copy_into  # noqa: E402
from cargohold.store.local import LocalStore  # noqa: E402

MB = 1_000_000


def make_file(path: str, size: int) -> str:
    h = hashlib.sha256()
    chunk = 8 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            b = os.urandom(min(chunk, left))
            h.update(b)
            f.write(b)
            left -= len(b)
    return "sha256:" + h.hexdigest()


def warm(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def time_sha256sum(path: str) -> float:
    t = time.perf_counter()
    subprocess.run(["sha256sum", path], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def time_hashlib(path: str) -> float:
    t = time.perf_counter()
    with open(path, "rb") as f:
        hashlib.file_digest(f, "sha256")
    return time.perf_counter() - t


def time_ingest(path: str, root: str, digest: str, size: int) -> tuple[float, float]:
    """(total seconds, seconds of it spent in commit: fsync + rename)."""
    shutil.rmtree(root, ignore_errors=True)
    os.sync()  # start every rep with no dirty pages left by the previous one
    store = LocalStore(root)
    writer = store.writer("bench")
    commit = writer.commit
    spent = [0.0]

    def timed_commit(*a, **kw):
        t0 = time.perf_counter()
        try:
            return commit(*a, **kw)
        finally:
            spent[0] = time.perf_counter() - t0

    writer.commit = timed_commit
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as src:
        got = copy_into(writer, src, size=size, expected=digest)
    elapsed = time.perf_counter() - t
    assert got == digest, (got, digest)
    return elapsed, spent[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--keep", action="store_true", help="keep the random file")
    args = ap.parse_args()
    size = args.size_mb * MB
    work = tempfile.mkdtemp(prefix="cargohold-bench-", dir=args.dir)
    src = os.path.join(work, "random.bin")
    root = os.path.join(work, "content")
    try:
        digest = make_file(src, size)
        warm(src)
        sums, ingests, hashes = [], [], []
        for i in range(args.reps):
            sums.append(time_sha256sum(src))
            hashes.append(time_hashlib(src))
            total, in_commit = time_ingest(src, root, digest, size)
            ingests.append(total)
            print(f"rep {i + 1}: sha256sum {size / sums[-1] / MB:7.1f} MB/s   "
                  f"ingest {size / total / MB:7.1f} MB/s (writing {total - in_commit:.2f} s, "
                  f"commit {in_commit:.2f} s)   [hashlib alone {size / hashes[-1] / MB:.0f} "
                  f"MB/s]", flush=True)
        s = size / statistics.median(sums) / MB
        g = size / statistics.median(ingests) / MB
        print(f"median over {args.reps} reps of {args.size_mb} MB: sha256sum {s:.1f} MB/s, "
              f"LocalStore ingest {g:.1f} MB/s, ratio {g / s:.2f} (goal >= 0.80)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
