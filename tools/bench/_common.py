"""Pieces several benchmarks share (imported by file path: ``sys.path`` holds tools/bench).

- ``time_ctr_unpack(base, *args)``: one timed ``ctr images pull|import`` onto overlayfs in a
  fresh private containerd, checked to have unpacked.

Heavy or cargohold imports are inside the functions: each benchmark uses only some of them.
"""

from __future__ import annotations

import os
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def time_ctr_unpack(base: str, *args: str) -> float:
    """Seconds of one ``ctr images <args> --snapshotter overlayfs`` in a fresh containerd.

    Starts after ``sync``; raises SystemExit unless the image was unpacked. The daemon is
    stopped but its files are kept (like hold's roots, removed with the work dir at the end):
    deleting hundreds of MB here would make the next timed run pay for the discards.
    """
    from tests.peers import Containerd, _unmount_under

    d = Containerd(base=base, namespace="bench").start()
    try:
        os.sync()
        t0 = time.monotonic()
        d.ctr("images", *args, timeout=600)
        dt = time.monotonic() - t0
        out = d.ctr("snapshots", "--snapshotter", "overlayfs", "ls").stdout.decode()
        if len(out.splitlines()) < 5:
            raise SystemExit(f"ctr did not unpack the image:\n{out}")
    finally:
        keep, d.dir = d.dir, tempfile.mkdtemp(prefix="empty-", dir=base)
        try:
            d.stop()
        finally:
            d.dir = keep
            _unmount_under(keep)
    return dt
