"""Shared helpers for image tests and real peers.

- ``open_client(root)``: a :class:`cargohold.client.Client` on a test root (no config file).
- ``make_tree(path)``: a small but varied tree (files, dirs, symlink, hardlink, modes, xattr).
- ``Containerd``: a private containerd 1.6 daemon on a short temporary root/state/socket,
  driven with ``ctr --address``; ``containerd_daemon()`` starts one or skips with the reason.
- ``need(*binaries)``: skip with a clear reason when a peer binary is missing.

Nothing here touches the system containerd (``/run/containerd``) or ``/var/lib``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

CTR_TIMEOUT = 120


def need(*binaries: str) -> None:
    """Skip the calling test unless every binary is on PATH."""
    for b in binaries:
        if shutil.which(b) is None:
            pytest.skip(f"missing {b}: install the Debian package that provides it "
                        "(tools/setup installs every peer)")


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (real mounts)")


def open_client(root: str, *, namespace: str = "default"):  # noqa: ANN201
    """A Client on ``root`` with its state under ``root/_state`` and no config file."""
    from cargohold.client import Client
    from cargohold.config import load

    os.environ["HOLD_CONFIG"] = os.path.join(root, "_no_config.toml")
    cfg = load(root=root, state=os.path.join(root, "_state"), namespace=namespace)
    return Client(cfg)


def make_tree(path: str, *, big: int = 0) -> str:
    """Fill ``path`` with a varied tree; ``big`` adds a file of that many random bytes."""
    os.makedirs(os.path.join(path, "etc"), exist_ok=True)
    os.makedirs(os.path.join(path, "usr", "bin"), exist_ok=True)
    os.makedirs(os.path.join(path, "empty"), exist_ok=True)
    with open(os.path.join(path, "etc", "hello.txt"), "w") as f:
        f.write("hello from cargohold\n")
    with open(os.path.join(path, "usr", "bin", "tool"), "w") as f:
        f.write("#!/bin/sh\necho tool\n")
    os.chmod(os.path.join(path, "usr", "bin", "tool"), 0o4755)
    os.symlink("../etc/hello.txt", os.path.join(path, "usr", "hello-link"))
    os.link(os.path.join(path, "etc", "hello.txt"), os.path.join(path, "etc", "hardlink.txt"))
    long = os.path.join(path, "d" * 60, "e" * 60)
    os.makedirs(long, exist_ok=True)
    with open(os.path.join(long, "deep.txt"), "w") as f:
        f.write("long path\n")
    with contextlib.suppress(OSError):
        os.setxattr(os.path.join(path, "etc", "hello.txt"), "user.note", b"kept")
    if big:
        with open(os.path.join(path, "big.bin"), "wb") as f:
            f.write(os.urandom(big))
    return path


def run(*argv: str, input: bytes | None = None, timeout: float = CTR_TIMEOUT,
        check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({p.returncode}):\n"
                             f"{p.stderr.decode(errors='replace')}\n"
                             f"{p.stdout.decode(errors='replace')}")
    return p


_CONFIG = """\
version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{dir}/c.sock"

[ttrpc]
  address = "{dir}/c.sock.ttrpc"

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""
"""


class Containerd:
    """A private containerd daemon; ``ctr(...)`` runs ``ctr --address SOCK -n NS ...``."""

    def __init__(self, base: str | None = None, namespace: str = "hold-test") -> None:
        # Short path: a unix socket path must fit in 108 bytes.
        self.dir = tempfile.mkdtemp(prefix="hctd-", dir=base or "/tmp")
        self.sock = os.path.join(self.dir, "c.sock")
        self.namespace = namespace
        self.proc: subprocess.Popen | None = None
        self.log = os.path.join(self.dir, "containerd.log")

    def start(self, timeout: float = 20.0) -> Containerd:
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write(_CONFIG.format(dir=self.dir))
        logf = open(self.log, "wb")  # noqa: SIM115 - owned by the daemon process
        self.proc = subprocess.Popen(["containerd", "--config", cfg], stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited ({self.proc.returncode}):\n"
                                   + self.log_tail())
            if os.path.exists(self.sock):
                p = subprocess.run(["ctr", "--address", self.sock, "version"],
                                   capture_output=True, timeout=10)
                if p.returncode == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"containerd did not answer on {self.sock} within {timeout}s:\n"
                           + self.log_tail())

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def ctr(self, *args: str, input: bytes | None = None, check: bool = True,
            timeout: float = CTR_TIMEOUT) -> subprocess.CompletedProcess:
        return run("ctr", "--address", self.sock, "-n", self.namespace, *args, input=input,
                   check=check, timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        # Its overlay snapshots may still be mounted (a failed test): unmount before removing.
        _unmount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


def _unmount_under(prefix: str) -> None:
    from cargohold.mount import unmount

    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for p in sorted((p for p in points if p.startswith(prefix + "/")), key=len, reverse=True):
        with contextlib.suppress(Exception):
            unmount(p, detach=True)


@contextlib.contextmanager
def containerd_daemon() -> Iterator[Containerd]:
    """Start a private containerd (skip with the reason when it cannot run here)."""
    need("containerd", "ctr")
    need_root()
    d = Containerd()
    try:
        d.start()
    except RuntimeError as exc:
        pytest.skip(f"containerd 1.6 did not start: {exc}")
    try:
        yield d
    finally:
        d.stop()


def build_image(client, name: str, dirs: list[str], *, platform=None):  # noqa: ANN001, ANN201
    """An image of ``len(dirs)`` layers: layer n is the diff from ``dirs[n-1]`` to ``dirs[n]``
    (whiteouts included), written with the differ and labelled as pack labels its blobs.
    Returns the manifest descriptor; not unpacked.
    """
    from cargohold.differ.compare import compare
    from cargohold.images import mediatypes as mt
    from cargohold.images import platforms
    from cargohold.images.manifest import child_gc_labels
    from cargohold.images.pack import PackOptions, canonical_json, image_config, write_blob
    from cargohold.metadata import images as image_records
    from cargohold.metadata.images import Image
    from cargohold.types import LABEL_UNCOMPRESSED, Descriptor, Mount

    layers, ids = [], []
    lower: list = []
    for d in dirs:
        upper = [Mount("bind", d, ("rbind", "ro"))]
        desc = compare(lower, upper, store=client.content, media_type=mt.OCI_LAYER_GZIP)
        layers.append(desc)
        ids.append(client.content.info(desc.digest).labels[LABEL_UNCOMPRESSED])
        lower = upper
    plat = platforms.normalize(platform or platforms.default())
    cfg = image_config(ids[0], plat, PackOptions())
    cfg["rootfs"]["diff_ids"] = ids
    config = write_blob(client.content, canonical_json(cfg), mt.OCI_CONFIG, {})
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": config.to_json(),
           "layers": [layer.to_json() for layer in layers]}
    man = write_blob(client.content, canonical_json(doc), mt.OCI_MANIFEST,
                     child_gc_labels(Descriptor(mt.OCI_MANIFEST, "", 0), [config, *layers]))
    with client.db.update() as tx:
        image_records.upsert(tx, client.namespace, Image(name, man))
    return man
