"""Benchmark registry pulls: ``hold images pull`` vs ``ctr images pull --plain-http`` (1.6).

A private ``docker-registry`` on 127.0.0.1 (tests/fetch/registry.py) serves the ~110 MB
four-layer image that tools/bench/images_import.py builds from this machine's files (no
network), pushed with skopeo. Then, in the same run:

1. ``--runs`` rounds of pull+unpack onto overlayfs, alternating who goes first: a fresh hold
   root timing ``hold images pull``, and a fresh private containerd (tests/peers.py) timing
   ``ctr images pull --plain-http`` (which unpacks too). Each timed run starts after ``sync``.
   Prints seconds per run, the best of each, and the ratio hold / containerd (goal <= 0.5).
2. The resume figure: a pull through a throttling, byte-counting proxy is killed with -9 once
   ~60 % of the bytes went out, ``hold gc`` runs, and the next pull's bytes are counted
   against the remainder.
3. One ~1 GB single-layer image (random data, gzip -1), pulled without unpacking with
   ``--chunk-size 0`` (one stream) and with ranged parts (``--chunk-size 32MiB``), and with
   unpacking once each way.

Usage: ``python3 tools/bench/pull.py [--runs 3] [--dir /var/tmp/hold-bench-pull] [--big-mb 1024]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # for tests.* helpers
sys.path.insert(0, HERE)

REPO = "bench/app:1"


def hold_env(root: str) -> dict[str, str]:
    src = os.path.join(os.path.dirname(os.path.dirname(HERE)), "src")
    return dict(os.environ, HOLD_ROOT=root, HOLD_STATE=os.path.join(root, "_state"),
                HOLD_CONFIG=os.path.join(root, "_none.toml"),
                PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))


def hold(root: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "cargohold", *args], env=hold_env(root),
                       capture_output=True)
    if check and p.returncode != 0:
        raise SystemExit(f"hold {' '.join(args)} failed:\n{p.stderr.decode()}")
    return p


def time_hold(ref: str, base: str, *extra: str) -> tuple[float, dict]:
    root = tempfile.mkdtemp(prefix="hp-", dir=base)
    os.sync()
    t0 = time.monotonic()
    p = hold(root, "images", "pull", "--progress", "none", "--format", "json", *extra, ref)
    return time.monotonic() - t0, json.loads(p.stdout)


def time_ctr(ref: str, base: str) -> float:
    from _common import time_ctr_unpack

    return time_ctr_unpack(base, "pull", "--plain-http", "--snapshotter", "overlayfs", ref)


def skopeo_copy(src: str, dest: str) -> None:
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", src, f"docker://{dest}"],
                   check=True, capture_output=True, timeout=1800)


def resume_figure(reg_port: int, base: str, total: int) -> None:
    from tests.fetch.registry import CountingProxy

    proxy = CountingProxy(reg_port, rate=40 << 20)
    root = tempfile.mkdtemp(prefix="hr-", dir=base)
    try:
        ref = f"{proxy.host}/{REPO}"
        p = subprocess.Popen([sys.executable, "-m", "cargohold", "images", "pull",
                              "--progress", "none", ref], env=hold_env(root),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proxy.sent < 0.6 * total and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
        p.wait()
        first = proxy.sent
        # As on a node that collects meanwhile: GC takes the dead pull's half-applied layer,
        # not its partial or finished downloads.
        hold(root, "gc")
        proxy.reset()
        res = json.loads(hold(root, "images", "pull", "--progress", "none", "--format",
                              "json", ref).stdout)
        second = proxy.sent
        remainder = total - first
        print(f"resume: killed at {first / 1e6:.1f} of {total / 1e6:.1f} MB "
              f"({100 * first / total:.0f} %); the next pull fetched {second / 1e6:.2f} MB "
              f"(remainder {remainder / 1e6:.2f} MB, +{(second - remainder) / 1e6:.2f} MB; "
              f"{res['resumed'] / 1e6:.1f} MB of partial downloads kept)", flush=True)
        fsck = hold(root, "fsck", check=False)
        print(f"resume: fsck: {(fsck.stdout + fsck.stderr).decode().strip()}", flush=True)
    finally:
        proxy.close()


def big_layer(workdir: str, mb: int) -> str:
    """An OCI layout with one layer: a tar of one file of ``mb`` MB of random data, gzip -1."""
    import hashlib

    from isal import igzip
    from tests.fetch.registry import _put

    lay = os.path.join(workdir, f"big-{mb}")
    if os.path.exists(os.path.join(lay, "index.json")):
        return lay
    os.makedirs(os.path.join(lay, "blobs", "sha256"), exist_ok=True)
    import tarfile

    plain = os.path.join(workdir, "big.tar")
    with open(plain, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as t:
        ti = tarfile.TarInfo("data.bin")
        ti.size = mb << 20

        class Rand:
            left = ti.size

            def read(self, n: int) -> bytes:
                n = min(n, self.left)
                self.left -= n
                return os.urandom(n)

        t.addfile(ti, Rand())
    diff = hashlib.sha256()
    gz = os.path.join(workdir, "big.tar.gz")
    with open(plain, "rb") as f, igzip.open(gz, "wb", compresslevel=1) as g:
        while chunk := f.read(4 << 20):
            diff.update(chunk)
            g.write(chunk)
    os.unlink(plain)
    d = hashlib.sha256()
    with open(gz, "rb") as f:
        while chunk := f.read(4 << 20):
            d.update(chunk)
    size = os.path.getsize(gz)
    os.replace(gz, os.path.join(lay, "blobs", "sha256", d.hexdigest()))
    from cargohold.images import platforms

    host = platforms.default()
    cfg = json.dumps({"architecture": host.architecture, "os": host.os,
                      "rootfs": {"type": "layers",
                                 "diff_ids": ["sha256:" + diff.hexdigest()]}}).encode()
    man = json.dumps({"schemaVersion": 2,
                      "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                 **_put(lay, cfg)},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                  "digest": "sha256:" + d.hexdigest(), "size": size}]}).encode()
    mdesc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **_put(lay, man),
             "annotations": {"org.opencontainers.image.ref.name": "1"}}
    with open(os.path.join(lay, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [mdesc]}, f)
    with open(os.path.join(lay, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    return lay


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp/hold-bench-pull")
    ap.add_argument("--lib-mb", type=int, default=110)
    ap.add_argument("--share-mb", type=int, default=70)
    ap.add_argument("--big-mb", type=int, default=1024)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    from images_import import build
    from tests.fetch.registry import DockerRegistry

    archive = build(args.dir, args.lib_mb, args.share_mb)
    work = tempfile.mkdtemp(prefix="run-", dir=args.dir)
    reg = DockerRegistry(os.path.join(work, "registry")).start()
    try:
        skopeo_copy(f"oci-archive:{archive}:1", f"{reg.host}/{REPO}")
        ref = f"{reg.host}/{REPO}"
        _t, warm = time_hold(ref, work)  # warms the registry's page cache for both sides
        total = warm["bytes"]
        print(f"image: {ref}, {total / 1e6:.1f} MB of layers", flush=True)
        holds, ctrs = [], []
        for i in range(args.runs):
            if i % 2:
                holds.append(time_hold(ref, work)[0])
                ctrs.append(time_ctr(ref, work))
            else:
                ctrs.append(time_ctr(ref, work))
                holds.append(time_hold(ref, work)[0])
            print(f"run {i + 1}: ctr images pull {ctrs[-1]:.2f}s, hold images pull "
                  f"{holds[-1]:.2f}s, ratio {holds[-1] / ctrs[-1]:.2f}", flush=True)
        h, c = min(holds), min(ctrs)
        ratios = sorted(x / y for x, y in zip(holds, ctrs, strict=True))
        print(f"best: hold {h:.2f}s, containerd {c:.2f}s, ratio {h / c:.2f}; median per-run "
              f"ratio {ratios[len(ratios) // 2]:.2f} (goal <= 0.5)", flush=True)
        resume_figure(reg.port, work, total)
        if args.big_mb:
            lay = big_layer(args.dir, args.big_mb)
            skopeo_copy(f"oci:{lay}:1", f"{reg.host}/bench/big:1")
            bref = f"{reg.host}/bench/big:1"
            for extra, what in ((("--no-unpack", "--chunk-size", "0"), "fetch, one stream"),
                                (("--no-unpack", "--chunk-size", "32MiB"),
                                 "fetch, ranged parts"),
                                (("--chunk-size", "0"), "pull+unpack, one stream"),
                                (("--chunk-size", "32MiB"), "pull+unpack, ranged parts")):
                dt, res = time_hold(bref, work, *extra)
                print(f"1 GB layer ({res['bytes'] / 1e6:.0f} MB), {what}: {dt:.2f}s "
                      f"({res['bytes'] / dt / 1e6:.0f} MB/s)", flush=True)
    finally:
        reg.stop()
        from tests.peers import _unmount_under

        _unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
