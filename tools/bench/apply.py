"""Benchmark layer apply: cargohold's differ vs GNU tar on the same layer, same run.

Builds a ~100 MB (uncompressed) layer — a few large files plus ~2,000 small ones — as
tar+gzip (ISA-L) and tar+zstd, then times, each into a fresh directory:

- ``cargohold.differ.apply`` (gzip through ISA-L, gzip through zlib, zstd, plain tar);
- ``tar -xzf`` and ``tar --zstd -xf`` (GNU tar with the system gzip / zstd);
- raw in-memory decompression: ISA-L vs zlib vs zstd.

Prints MB/s of uncompressed data and the ratio ours / GNU tar (time; < 1 means faster).
Usage: ``python3 tools/bench/apply.py [--mb 100] [--small 2000] [--runs 3] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
import time
import zlib

import zstandard
from isal import igzip, isal_zlib

from cargohold.differ.api import MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD
from cargohold.differ.apply import apply
from cargohold.types import Descriptor, Mount


def _data(n: int, rnd: random.Random) -> bytes:
    """Compressible-ish bytes (about 3:1 with gzip), like binaries and text in a real image."""
    words = [bytes(rnd.getrandbits(8) for _ in range(rnd.randint(3, 12))) for _ in range(512)]
    out = bytearray()
    while len(out) < n:
        if rnd.random() < 0.05:
            out += rnd.randbytes(4096)
        else:
            out += b" ".join(rnd.choices(words, k=400))
    return bytes(out[:n])


def build_layer(total_mb: int, small: int) -> bytes:
    rnd = random.Random(42)
    buf = io.BytesIO()
    small_bytes = small * 6000
    big = max(1, (total_mb << 20) - small_bytes)
    pool = _data(48 << 20, rnd)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_600_000_000
            t.addfile(ti, io.BytesIO(data))

        for d in ("usr", "usr/lib", "usr/share", "usr/share/doc"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            t.addfile(ti)
        n_big = 6
        for i in range(n_big):
            size = big // n_big
            off = (i * 7_919_000) % (len(pool) - size) if size < len(pool) else 0
            add(f"usr/lib/big{i}.so", (pool[off:off + size] * (size // len(pool) + 1))[:size])
        for i in range(small):
            d = f"usr/share/doc/pkg{i // 50}"
            if i % 50 == 0:
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            off = rnd.randrange(len(pool) - 20000)
            add(f"{d}/file{i}.txt", pool[off:off + rnd.randint(500, 11500)])
    return buf.getvalue()


def _timed(fn, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        os.sync()  # start each run with no dirty pages from the previous one
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to extract (default: a temp dir)")
    a = ap.parse_args()

    plain = build_layer(a.mb, a.small)
    mb = len(plain) / 1e6
    gz = igzip.compress(plain, 2)
    zs = zstandard.ZstdCompressor(level=3).compress(plain)
    work = tempfile.mkdtemp(prefix="cargohold-bench-", dir=a.dir)
    try:
        files = {}
        for name, blob in (("layer.tar", plain), ("layer.tar.gz", gz), ("layer.tar.zst", zs)):
            files[name] = os.path.join(work, name)
            with open(files[name], "wb") as f:
                f.write(blob)
        print(f"layer: {mb:.1f} MB plain, gzip {len(gz) / 1e6:.1f} MB, "
              f"zstd {len(zs) / 1e6:.1f} MB, {a.small} small files; best of {a.runs}")

        counter = [0]

        def fresh() -> str:
            counter[0] += 1
            d = os.path.join(work, f"x{counter[0]}")
            os.mkdir(d)
            return d

        def ours(name: str, media_type: str, use_isal: bool = True):
            def run():
                d = fresh()
                with open(files[name], "rb") as r:
                    apply(Descriptor(media_type, "sha256:" + "0" * 64, 0),
                          [Mount("bind", d, ("rbind",))], reader=r, use_isal=use_isal)
            return run

        def gnu(*args: str):
            def run():
                subprocess.run(["tar", *args, "-C", fresh()], check=True)
            return run

        rows = [
            ("ours gzip (ISA-L)", ours("layer.tar.gz", MEDIA_TYPE_TAR_GZIP)),
            ("ours gzip (zlib)", ours("layer.tar.gz", MEDIA_TYPE_TAR_GZIP, False)),
            ("ours zstd", ours("layer.tar.zst", MEDIA_TYPE_TAR_ZSTD)),
            ("ours tar", ours("layer.tar", MEDIA_TYPE_TAR)),
            ("GNU tar -xzf", gnu("-xzf", files["layer.tar.gz"])),
            ("GNU tar --zstd -xf", gnu("--zstd", "-xf", files["layer.tar.zst"])),
            ("GNU tar -xf", gnu("-xf", files["layer.tar"])),
        ]
        times = {}
        for label, fn in rows:
            times[label] = _timed(fn, a.runs)
            print(f"  {label:22s} {times[label]:6.3f} s  {mb / times[label]:7.1f} MB/s")
            for d in os.listdir(work):
                if d.startswith("x"):
                    shutil.rmtree(os.path.join(work, d))
        print("ratios (our time / GNU tar time):")
        for ours_l, gnu_l in (("ours gzip (ISA-L)", "GNU tar -xzf"),
                              ("ours zstd", "GNU tar --zstd -xf"),
                              ("ours tar", "GNU tar -xf")):
            print(f"  {ours_l:22s} vs {gnu_l:20s} {times[ours_l] / times[gnu_l]:.2f}x")

        print("raw decompression (in memory):")
        for label, fn in (("ISA-L gunzip", lambda: igzip.decompress(gz)),
                          ("zlib gunzip", lambda: zlib.decompress(gz, 31)),
                          ("ISA-L inflate obj", lambda: isal_zlib.decompressobj(31).decompress(gz)),
                          ("zstd", lambda: zstandard.ZstdDecompressor().decompress(
                              zs, max_output_size=len(plain)))):
            t = _timed(fn, a.runs)
            print(f"  {label:22s} {t:6.3f} s  {mb / t:7.1f} MB/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
