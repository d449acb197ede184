#!/usr/bin/env python3
"""Start-up benchmark: `hold` installed as a user installs it, side by side with `ctr` 1.6.

``pip install`` of this checkout into a fresh virtual environment (not editable, pip's own
``hold`` launcher, nothing rewritten), and a private containerd 1.6 daemon; then, in one run,
alternating who goes first each round, the median wall time of:

- ``hold version``            vs ``ctr version``
- ``hold content ls``         vs ``ctr content ls``
- ``hold images ls``          vs ``ctr images ls``
- ``hold images mount`` + ``hold images unmount`` vs ``ctr images mount`` + ``ctr images
  unmount --rm`` (a small busybox image, unpacked on both sides beforehand)

and, to show the floor any Python command stands on: ``python -c pass`` and ``python -c
'import click'`` in the same venv. Goal (issue 8): each hold row at most 3x ctr's.
Usage: ``python3 tools/bench/startup.py [--rounds 21] [--work DIR]``
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
sys.path.insert(0, REPO)  # for tests.peers (the private containerd)
sys.path.insert(1, os.path.join(REPO, "src"))  # tests.peers unmounts with cargohold.mount
REF = "bench.example/startup/busybox:1"


def timed(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    from _common import installed_env, make_venv, pack_busybox, sh
    from tests.peers import Containerd

    work = a.work or tempfile.mkdtemp(prefix="bench-startup-", dir="/var/tmp")
    venv = make_venv(work)
    hold = os.path.join(venv, "bin", "hold")
    py = os.path.join(venv, "bin", "python3")
    env = installed_env(work)
    archive = pack_busybox(hold, work, REF, ("sh",), env)
    ctd = Containerd(base="/tmp").start()
    try:
        ctr = ["ctr", "--address", ctd.sock, "-n", "bench"]
        sh(*ctr, "images", "import", archive)
        mh, mc = os.path.join(work, "mnt-hold"), os.path.join(work, "mnt-ctr")
        os.makedirs(mh)
        os.makedirs(mc)

        def hold_mount() -> list[list[str]]:
            return [[hold, "images", "mount", REF, mh], [hold, "images", "unmount", mh]]

        def ctr_mount() -> list[list[str]]:
            return [[*ctr, "images", "mount", REF, mc], [*ctr, "images", "unmount", "--rm", mc]]

        rows = [("version", [[hold, "version"]], [[*ctr, "version"]]),
                ("content ls", [[hold, "content", "ls"]], [[*ctr, "content", "ls"]]),
                ("images ls", [[hold, "images", "ls"]], [[*ctr, "images", "ls"]]),
                ("images mount + unmount", hold_mount(), ctr_mount())]
        floor = [("python -c pass", [[py, "-c", "pass"]]),
                 ("python -c 'import click'", [[py, "-c", "import click"]])]
        for _name, h, c in rows:  # warm both (page cache, first unpack, bytecode)
            for argv in h + c:
                timed(argv, env)
        res: dict[str, tuple[list[float], list[float]]] = {r[0]: ([], []) for r in rows}
        for i in range(a.rounds):
            for name, h, c in rows:
                order = [(0, h), (1, c)] if i % 2 == 0 else [(1, c), (0, h)]
                for side, cmds in order:
                    res[name][side].append(sum(timed(argv, env) for argv in cmds))
        print(f"start-up, median of {a.rounds} rounds, alternating who goes first "
              f"(hold installed with pip into {venv})")
        print(f"{'command':26s} {'hold':>9s} {'ctr 1.6':>9s} {'ratio':>7s}")
        for name, _h, _c in rows:
            hm = statistics.median(res[name][0]) * 1000
            cm = statistics.median(res[name][1]) * 1000
            print(f"{name:26s} {hm:7.1f}ms {cm:7.1f}ms {hm / cm:6.2f}x")
        for name, cmds in floor:
            m = statistics.median([sum(timed(x, env) for x in cmds)
                                   for _ in range(a.rounds)]) * 1000
            print(f"{name:26s} {m:7.1f}ms")
    finally:
        ctd.stop()
        if not a.work:
            subprocess.run(["umount", "-l", os.path.join(work, "mnt-hold")],
                           capture_output=True)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
