"""Benchmark image export and mount+unmount: ``hold`` vs containerd 1.6 (``ctr``), same run.

Builds one multi-layer image from local directories (default: /usr/lib/python3.11,
/usr/lib/python3, /usr/lib/gcc and /usr/share/doc, one gzip layer each, about 100 MB
compressed), exports it with ``hold images export``, imports that archive into a private
containerd (its own root, state and socket under the work directory), then times, each the
best of ``--runs`` after one warm-up:

- ``hold images export OUT REF``   vs ``ctr images export OUT REF``   (goal: <= 0.8x);
- ``hold images mount REF DIR`` + ``hold images unmount DIR`` (read-only view, removed) vs
  ``ctr images mount REF DIR`` + ``ctr images unmount --rm DIR``   (goal: within 3x).

Both sides run as commands (process start-up included, as a user would see it), with the
image already unpacked on both sides; ``hold`` runs with its bytecode cached (as an installed
package has it: ``PYTHONDONTWRITEBYTECODE`` is dropped and ``PYTHONPYCACHEPREFIX`` points into
the work directory). Also printed: the bare interpreter start-up (``python -c pass``), which
bounds any Python command from below, and ``cargohold.images.mount`` mount+unmount called
in-process (what a program embedding cargohold pays). Prints seconds and ours / containerd.
Usage: ``python3 tools/bench/images_export_mount.py [--dirs D1,D2,...] [--runs 5]
[--work DIR]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # for tests.peers (containerd)

DEFAULT_DIRS = "/usr/lib/python3.11,/usr/lib/python3,/usr/lib/gcc,/usr/share/doc"
REF = "bench.example/images/app:1"


def build(root: str, dirs: list[str]) -> int:
    """Make REF in ``root``: one gzip layer per directory; return the compressed bytes."""
    from tests.peers import open_client

    from cargohold.differ.compare import compare
    from cargohold.images import mediatypes as mt
    from cargohold.images import platforms
    from cargohold.images.manifest import child_gc_labels
    from cargohold.images.pack import PackOptions, canonical_json, image_config, write_blob
    from cargohold.images.unpack import unpack_image
    from cargohold.metadata import images as records
    from cargohold.metadata.images import Image
    from cargohold.types import LABEL_UNCOMPRESSED, Descriptor, Mount

    c = open_client(root)
    try:
        layers, ids = [], []
        for d in dirs:
            desc = compare([], [Mount("bind", d, ("rbind", "ro"))], store=c.content,
                           media_type=mt.OCI_LAYER_GZIP)
            layers.append(desc)
            ids.append(c.content.info(desc.digest).labels[LABEL_UNCOMPRESSED])
        cfg = image_config(ids[0], platforms.default(), PackOptions())
        cfg["rootfs"]["diff_ids"] = ids
        config = write_blob(c.content, canonical_json(cfg), mt.OCI_CONFIG, {})
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": config.to_json(),
               "layers": [x.to_json() for x in layers]}
        man = write_blob(c.content, canonical_json(doc), mt.OCI_MANIFEST,
                         child_gc_labels(Descriptor(mt.OCI_MANIFEST, "", 0),
                                         [config, *layers]))
        with c.db.update() as tx:
            records.upsert(tx, c.namespace, Image(REF, man))
        unpack_image(c, REF)
        return sum(x.size for x in layers)
    finally:
        c.close()


def in_process(root: str, env: dict[str, str], target: str) -> float:
    """Mount and unmount through the library in this process (a warm embedding program)."""
    from tests.peers import open_client

    from cargohold.images import mount as mounting

    c = open_client(root)
    c.config.state = env["HOLD_STATE"]
    try:
        t = time.perf_counter()
        mounting.mount(c, REF, target)
        mounting.unmount(c, target)
        return time.perf_counter() - t
    finally:
        c.close()


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, env=env)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{p.stderr.decode()}")
    return dt


def best(fn, runs: int) -> float:  # noqa: ANN001
    fn()  # warm-up: page cache, first-run costs
    return min(fn() for _ in range(runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dirs", default=DEFAULT_DIRS, help="comma-separated layer directories")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", default=None, help="work directory (default: a new one in /tmp)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (mounts, containerd)")
    for b in ("containerd", "ctr"):
        if shutil.which(b) is None:
            raise SystemExit(f"missing {b}: install the containerd package")
    from tests.peers import Containerd

    work = args.work or tempfile.mkdtemp(prefix="hold-bench-", dir="/tmp")
    root = os.path.join(work, "hold-root")
    env = dict(os.environ, HOLD_ROOT=root, HOLD_STATE=os.path.join(work, "hold-state"),
               HOLD_CONFIG=os.path.join(work, "no-config.toml"),
               PYTHONPYCACHEPREFIX=os.path.join(work, "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    hold = [sys.executable, "-m", "cargohold"]
    dirs = [d for d in args.dirs.split(",") if d]
    t = time.perf_counter()
    size = build(root, dirs)
    print(f"image: {len(dirs)} layers, {size / 1e6:.1f} MB compressed "
          f"(built and unpacked in {time.perf_counter() - t:.1f} s)")
    ours_tar, theirs_tar = os.path.join(work, "hold.tar"), os.path.join(work, "ctr.tar")
    ctrd = Containerd(base=work).start()
    try:
        timed(hold + ["images", "export", ours_tar, REF], env)
        ctr = ["ctr", "--address", ctrd.sock, "-n", "bench"]
        t = time.perf_counter()
        timed(ctr + ["images", "import", ours_tar])
        print(f"ctr images import (+unpack), not compared: {time.perf_counter() - t:.2f} s")
        results = {}
        results["export"] = (
            best(lambda: timed(hold + ["images", "export", ours_tar, REF], env), args.runs),
            best(lambda: timed(ctr + ["images", "export", theirs_tar, REF]), args.runs))
        m1, m2 = os.path.join(work, "mnt-hold"), os.path.join(work, "mnt-ctr")
        os.makedirs(m2, exist_ok=True)

        def ours() -> float:
            return (timed(hold + ["images", "mount", REF, m1], env)
                    + timed(hold + ["images", "unmount", m1], env))

        def theirs() -> float:
            return (timed(ctr + ["images", "mount", REF, m2])
                    + timed(ctr + ["images", "unmount", "--rm", m2]))

        results["mount+unmount"] = (best(ours, args.runs), best(theirs, args.runs))
        results["mount+unmount (library)"] = (best(lambda: in_process(root, env, m1), args.runs),
                                              results["mount+unmount"][1])
        floor = best(lambda: timed([sys.executable, "-c", "pass"], env), args.runs)
        startup = best(lambda: timed(hold + ["version"], env), args.runs)
        print(f"python -c pass: {floor:.3f} s; hold version: {startup:.3f} s "
              f"(mount+unmount is two commands: >= {2 * floor:.3f} s before any work)")
        goals = {"export": 0.8, "mount+unmount": 3.0, "mount+unmount (library)": 3.0}
        print(f"{'operation':26s} {'hold s':>8s} {'ctr s':>8s} {'ratio':>7s}  goal")
        for k, (a, b) in results.items():
            ratio = a / b
            ok = "ok" if ratio <= goals[k] else "MISSED"
            print(f"{k:26s} {a:8.3f} {b:8.3f} {ratio:6.2f}x  <= {goals[k]}x {ok}")
        print(f"archive size: hold {os.path.getsize(ours_tar) / 1e6:.1f} MB, "
              f"ctr {os.path.getsize(theirs_tar) / 1e6:.1f} MB")
    finally:
        ctrd.stop()
        from cargohold.mount import unmount_all

        for m in ("mnt-hold", "mnt-ctr"):
            unmount_all(os.path.join(work, m))
        if args.work is None:
            subprocess.run([sys.executable, "-m", "cargohold", "images", "unmount",
                            os.path.join(work, "mnt-hold")], env=env, capture_output=True)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
