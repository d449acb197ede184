"""A pull killed with -9 at ~60 % continues from each blob's ingest offset on the next pull.

The registry runs behind a throttling proxy that counts the bytes it sends, so the test
knows what the killed pull had received and what the second one fetched: at most the
remainder plus one chunk per layer (the bytes the killed process held in memory).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import run_hold
from tests.fetch.registry import (
    CountingProxy,
    DockerRegistry,
    make_layout,
    need_registry,
    push_layout,
)

pytestmark = [pytest.mark.peer, pytest.mark.slow]

LAYER = 12 << 20
CHUNK = 8 << 20


@contextlib.contextmanager
def _served_through_proxy(tmp_path, root, name: str, layers: int, layer_size: int, rate: int):
    """A random image of ``layers`` layers pushed to a fresh registry as team/<name>:1 and
    served through a throttling CountingProxy; yields (info, total, proxy, ref, env), env
    running this checkout's hold against ``root``. Proxy and registry stop on exit.
    """
    need_registry()
    lay = str(tmp_path / "layout")
    info = make_layout(lay, [{f"l{i}.bin": os.urandom(layer_size)} for i in range(layers)])
    total = sum(info["sizes"])
    reg = DockerRegistry(str(tmp_path / "reg")).start()
    proxy = None
    try:
        push_layout(lay, "1", f"{reg.host}/team/{name}:1")
        proxy = CountingProxy(reg.port, rate=rate)
        ref = f"{proxy.host}/team/{name}:1"
        env = dict(os.environ, HOLD_ROOT=root, HOLD_STATE=os.path.join(root, "_state"),
                   HOLD_CONFIG=os.path.join(root, "_no_config.toml"),
                   PYTHONPATH=os.path.join(os.path.dirname(__file__), "..", "..", "src"))
        yield info, total, proxy, ref, env
    finally:
        if proxy is not None:
            proxy.close()
        reg.stop()


def test_kill_9_mid_pull_then_pull_again_resumes(tmp_path, root):
    with _served_through_proxy(tmp_path, root, "big", 3, LAYER,
                               12 << 20) as (info, total, proxy, ref, env):
        # One blob at a time: at 60 % the first layer is finished and the second partial.
        p = subprocess.Popen([sys.executable, "-m", "cargohold", "images", "pull",
                              "--progress", "none", "--chunk-size", "8MiB",
                              "--max-concurrent-downloads", "1", ref], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while proxy.sent < 0.6 * total and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        assert p.returncode == -signal.SIGKILL, p.stderr.read().decode()
        first = proxy.sent
        assert 0.5 * total < first < total
        # The dead pull's half-applied layer is reported, and GC takes it — but neither the
        # partial downloads (ingests with their own expiry) nor the finished layers (the
        # owner-less resume lease): the retry needs them.
        fsck = run_hold(root, "fsck", check=False)
        assert fsck.returncode == 1 and b"interrupted unpack" in fsck.stderr + fsck.stdout
        run_hold(root, "gc")
        active = json.loads(run_hold(root, "content", "active", "--format", "json").stdout)
        assert active and all(a["ref"].startswith("layer-sha256:") for a in active)
        done = json.loads(run_hold(root, "content", "ls", "--format", "json").stdout)
        assert info["layers"][0] in {b["digest"] for b in done}  # kept by the resume lease
        kept = sum(a["offset"] for a in active)
        proxy.reset()
        res = json.loads(run_hold(root, "images", "pull", "--progress", "none", "--chunk-size",
                                  "8MiB", "--format", "json", ref).stdout)
        second = proxy.sent
        assert res["resumed"] >= kept > 0
        overhead = 64 << 10  # manifest HEAD/GET, config, HTTP headers
        assert second <= (total - first) + 3 * CHUNK + overhead, (first, second, total)
        assert res["bytes"] <= total - kept
        assert res["target"]["digest"] == info["manifest"]
        assert b"clean" in run_hold(root, "fsck").stdout
        leases = json.loads(run_hold(root, "leases", "ls", "--format", "json").stdout)
        assert leases == []  # the resume lease went with the successful pull
        assert json.loads(run_hold(root, "images", "check", "--format", "json").stdout)[0][
            "platforms"][0]["complete"]
        assert json.loads(run_hold(root, "content", "active", "--format", "json").stdout) == []


def test_two_pulls_of_one_image_at_once(tmp_path, root):
    """The second waits for the first's ingests instead of fetching the bytes twice."""
    with _served_through_proxy(tmp_path, root, "two", 2, 4 << 20,
                               8 << 20) as (info, total, proxy, ref, env):
        argv = [sys.executable, "-m", "cargohold", "images", "pull", "--progress", "none",
                "--format", "json", ref]
        procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (_o, e) in zip(procs, outs, strict=True):
            assert p.returncode == 0, e.decode()
        results = [json.loads(o) for o, _e in outs]
        assert {r["target"]["digest"] for r in results} == {info["manifest"]}
        assert proxy.sent < total * 1.2  # each layer came once (plus a little overlap)
        assert b"clean" in run_hold(root, "fsck").stdout


def test_ctrl_c_while_the_registry_is_silent_stops_at_once(tmp_path, root):
    """SIGINT mid-pull against a registry that stopped sending: exit 130 promptly (the
    reads are aborted, not left to the read timeout), and the next pull resumes.
    """
    with _served_through_proxy(tmp_path, root, "quiet", 2, 6 << 20,
                               8 << 20) as (info, total, proxy, ref, env):
        p = subprocess.Popen([sys.executable, "-m", "cargohold", "images", "pull",
                              "--progress", "none", ref], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while proxy.sent < 0.3 * total and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.01)
        proxy.pause.set()
        time.sleep(0.5)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        p.wait(30)
        assert p.returncode == 130, p.stderr.read().decode()
        assert time.monotonic() - t0 < 10
        proxy.pause.clear()
        res = json.loads(run_hold(root, "images", "pull", "--progress", "none", "--format",
                                  "json", ref).stdout)
        assert res["resumed"] > 0 and res["target"]["digest"] == info["manifest"]
