#!/usr/bin/env python3
"""Start-up benchmark: `hold content ls` on an empty store, median of N runs.

Compares the `hold` found on PATH with the interpreter's own entry point and with a bare
`python -c pass`, so the cost of the environment (shims, site hooks) and of cargohold's own
imports can be told apart. Goal: under 150 ms for `hold content ls` here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def median_ms(argv: list[str], env: dict[str, str], n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=21)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="startup-")
    env = dict(os.environ, HOLD_ROOT=root, HOLD_CONFIG=os.path.join(root, "none.toml"))
    subprocess.run(["hold", "content", "ls"], env=env, check=True, stdout=subprocess.DEVNULL)
    rows = [
        ("hold content ls (PATH)", [shutil.which("hold") or "hold", "content", "ls"]),
        ("python -m cargohold content ls", [sys.executable, "-m", "cargohold", "content", "ls"]),
        ("python -c pass (baseline)", [sys.executable, "-c", "pass"]),
        ("python -S -c pass (no site)", [sys.executable, "-S", "-c", "pass"]),
    ]
    for name, argv in rows:
        print(f"{name:36s} {median_ms(argv, env, a.n):7.1f} ms")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
