#!/usr/bin/env python3
"""Benchmark `hold serve`'s registry: 20 parallel pulls of the ~110 MB fixture image from it,
against the same from `docker-registry` serving the same image, same client, same run.

The fixture is tools/bench/images_import.py's four-layer image (built from this machine's
files, no network), pushed to a private docker-registry on 127.0.0.1 with skopeo, and pulled
from there into a fresh hold root (`hold images pull --no-unpack`), which `hold serve` then
serves: both registries have exactly the same blobs, in their page cache after a warm-up.

The client (the same for both): ``--clients`` threads, each fetching the manifest and every
blob over its own keep-alive connection (requests, streaming 1 MiB chunks) and hashing every
byte against the digest. Rounds alternate who goes first. Prints MB/s per round, the best and
the median of each, and the ratio hold / docker-registry (goal >= 1.0).

Usage: ``python3 tools/bench/serve_pull.py [--rounds 3] [--clients 20] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # for tests.* helpers
sys.path.insert(0, HERE)

REPO = "bench/app"
TAG = "1"


def parallel_pulls(url: str, clients: int) -> tuple[float, int]:
    """Seconds for ``clients`` concurrent verified pulls, and the bytes they read."""
    from tests.service.test_peers import pull

    results: list[int | BaseException] = []
    mu = threading.Lock()

    def one() -> None:
        try:
            n: int | BaseException = pull(url, REPO, TAG)
        except BaseException as exc:  # noqa: BLE001 - reported below
            n = exc
        with mu:
            results.append(n)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.monotonic() - t0
    bad = [r for r in results if isinstance(r, BaseException)]
    if bad:
        raise SystemExit(f"{len(bad)} pull(s) failed: {bad[0]!r}")
    return dt, sum(results)  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--dir", default="/var/tmp/hold-bench-serve")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    from images_import import build
    from pull import hold, skopeo_copy
    from tests.fetch.registry import DockerRegistry
    from tests.service.servekit import Serve

    archive = build(args.dir, 110, 70)
    work = tempfile.mkdtemp(prefix="run-", dir=args.dir)
    reg = DockerRegistry(os.path.join(work, "registry")).start()
    serve = None
    try:
        skopeo_copy(f"oci-archive:{archive}:1", f"{reg.host}/{REPO}:{TAG}")
        root = os.path.join(work, "hold")
        os.makedirs(root)
        hold(root, "images", "pull", "--no-unpack", "--progress", "none",
             f"{reg.host}/{REPO}:{TAG}")
        serve = Serve(root, '[gc]\nstartup_delay = "1h"\n').start()
        sites = {"hold serve": serve.url, "docker-registry": reg.url}
        _, total = parallel_pulls(serve.url, 1)  # warm both page caches
        parallel_pulls(reg.url, 1)
        print(f"image {REPO}:{TAG}: {total / 1e6:.1f} MB per pull; {args.clients} parallel "
              f"clients; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
        rates: dict[str, list[float]] = {k: [] for k in sites}
        for i in range(args.rounds):
            order = list(sites) if i % 2 == 0 else list(reversed(sites))
            line = []
            for name in order:
                dt, n = parallel_pulls(sites[name], args.clients)
                rates[name].append(n / dt / 1e6)
                line.append(f"{name} {n / 1e6:.0f} MB in {dt:.2f}s = {n / dt / 1e6:.0f} MB/s")
            print(f"round {i + 1}: " + "; ".join(line), flush=True)
        h, r = rates["hold serve"], rates["docker-registry"]
        print(f"best: hold serve {max(h):.0f} MB/s, docker-registry {max(r):.0f} MB/s, ratio "
              f"{max(h) / max(r):.2f}; median ratio "
              f"{statistics.median(h) / statistics.median(r):.2f} (goal >= 1.0)", flush=True)
        st = serve.status()["apis"]["registry"]
        print(f"hold serve counters: requests {st['requests']}, served "
              f"{st['bytes_served'] / 1e9:.2f} GB", flush=True)
        ps = subprocess.run(["ps", "-o", "rss=,time=", "-p", str(serve.proc.pid)],
                            capture_output=True, text=True)
        print(f"hold serve process: rss KB, cpu time: {ps.stdout.strip()}", flush=True)
    finally:
        if serve is not None:
            serve.stop()
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
