#!/usr/bin/env python3
"""Run benchmark: ``hold run --rm IMG t echo hi`` against ``ctr run --rm IMG t echo hi``.

``hold`` is pip-installed into a fresh virtual environment (as tools/bench/startup.py does),
containerd 1.6 runs as a private daemon (tests/peers.py); both use runc and overlayfs on the
same busybox image (packed by hold, exported, imported and unpacked by ctr). In one run,
alternating who goes first each round, the median (and min/max) wall time of each side's
whole command: create the container and its snapshot, start the task under a shim, wait for
``echo hi``, remove task, container and snapshot. Every run's output is checked to be ``hi``.
Goal (issue 10): hold within 2x of ctr.

Usage: ``python3 tools/bench/run.py [--rounds 15] [--work DIR]``
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

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)  # tests.peers: the private containerd
sys.path.insert(0, HERE)  # _common.py: the venv and the helpers
REF = "bench.example/run/busybox:1"


def run_once(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, env=env, capture_output=True)
    dt = time.perf_counter() - t
    if p.returncode != 0 or p.stdout != b"hi\n":
        raise SystemExit(f"{' '.join(argv)}: exit {p.returncode}, stdout {p.stdout!r}, "
                         f"stderr {p.stderr.decode(errors='replace')}")
    return dt


def main() -> None:
    from _common import installed_env, make_venv, pack_busybox, sh
    from tests.peers import Containerd

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    if shutil.which("runc") is None or os.geteuid() != 0:
        raise SystemExit("needs root and runc")
    work = a.work or tempfile.mkdtemp(prefix="bench-run-", dir="/var/tmp")
    venv = make_venv(work)
    hold = os.path.join(venv, "bin", "hold")
    env = installed_env(work)
    archive = pack_busybox(hold, work, REF, ("sh", "echo"), env)
    ctd = Containerd(base="/tmp").start()
    try:
        ctr = ["ctr", "--address", ctd.sock, "-n", "bench"]
        sh(*ctr, "images", "import", archive)
        sides = [("hold", [hold, "run", "--rm", REF, "t", "echo", "hi"]),
                 ("ctr 1.6", [*ctr, "run", "--rm", REF, "t", "echo", "hi"])]
        for _name, argv in sides:  # warm both: page cache, bytecode, first shim
            run_once(argv, env)
        res: dict[str, list[float]] = {n: [] for n, _ in sides}
        for i in range(a.rounds):
            for name, argv in (sides if i % 2 == 0 else sides[::-1]):
                res[name].append(run_once(argv, env))
        print(f"run --rm IMG t echo hi, {a.rounds} rounds, alternating who goes first "
              f"(hold installed with pip into {venv}; runc {_runc_version()})")
        print(f"{'':10s} {'median':>9s} {'min':>9s} {'max':>9s}")
        for name, _ in sides:
            v = res[name]
            print(f"{name:10s} {statistics.median(v) * 1000:7.1f}ms {min(v) * 1000:7.1f}ms "
                  f"{max(v) * 1000:7.1f}ms")
        ratio = statistics.median(res["hold"]) / statistics.median(res["ctr 1.6"])
        print(f"ratio hold/ctr (medians): {ratio:.2f}x (goal: at most 2x)")
    finally:
        ctd.stop()
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


def _runc_version() -> str:
    p = subprocess.run(["runc", "--version"], capture_output=True, text=True)
    return p.stdout.splitlines()[0].split()[-1] if p.returncode == 0 else "?"


if __name__ == "__main__":
    main()
