"""Several processes at once on one root: ingests during GC lose nothing, and a blob's
deletion never races a commit of the same digest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import run_hold

INGESTER = r"""
import io, json, os, sys
from cargohold import config
from cargohold.client import Client
from cargohold.store.api import copy_into
root, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Client(config.load(None, root=root), lease=f"lease-{who}")
out = []
for i in range(n):
    data = f"{who}-{i}-".encode() * (100 + i * 37)
    out.append(copy_into(c.content.writer(f"{who}-{i}"), io.BytesIO(data)))
print(json.dumps(out))
c.close()
"""

COLLECTOR = r"""
import sys, time
from cargohold import config
from cargohold.client import Client
from cargohold.errors import Unavailable
root, seconds = sys.argv[1], float(sys.argv[2])
c = Client(config.load(None, root=root))
end = time.time() + seconds
runs = 0
while time.time() < end:
    try:
        c.collector.collect()
        runs += 1
    except Unavailable:
        time.sleep(0.01)
print(runs)
c.close()
"""


def _env(root):
    e = dict(os.environ)
    e["HOLD_CONFIG"] = os.path.join(root, "_none.toml")
    return e


def test_ingests_under_leases_survive_concurrent_gc(root):
    for w in range(3):
        run_hold(root, "leases", "create", "--id", f"lease-w{w}")
    gcs = [subprocess.Popen([sys.executable, "-c", COLLECTOR, root, "6"],
                            stdout=subprocess.PIPE, env=_env(root)) for _ in range(2)]
    ings = [subprocess.Popen([sys.executable, "-c", INGESTER, root, f"w{w}", "40"],
                             stdout=subprocess.PIPE, env=_env(root)) for w in range(3)]
    digests = set()
    for p in ings:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        digests.update(json.loads(out))
    runs = [int(p.communicate(timeout=120)[0]) for p in gcs]
    assert sum(runs) > 2  # GC really ran alongside
    listed = set(run_hold(root, "content", "ls", "-q").stdout.decode().split())
    assert listed == digests and len(digests) == 120
    for d in list(digests)[:10]:
        run_hold(root, "content", "get", d)
    assert run_hold(root, "fsck").returncode == 0


RACER = r"""
import io, os, sys
from cargohold import config
from cargohold.client import Client
from cargohold.errors import AlreadyExists, NotFound
from cargohold.store.api import copy_into
root, n = sys.argv[1], int(sys.argv[2])
c = Client(config.load(None, root=root))
data = b"contested" * 10000
bad = 0
for i in range(n):
    def check(digest, existed):
        # Invariant: while our record is being written the blob must exist.
        global bad
        if not os.path.exists(c.store.blob_path(digest)):
            bad += 1
    try:
        d = copy_into(c.content.writer(f"{os.getpid()}-r{i}"), io.BytesIO(data), then=check)
    except AlreadyExists:
        continue
    try:
        c.content.delete(d)  # make it garbage again so the collector goes for it
    except NotFound:
        pass
print(bad)
c.close()
"""


def test_blob_delete_never_races_commit_of_same_digest(root):
    gcs = [subprocess.Popen([sys.executable, "-c", COLLECTOR, root, "5"],
                            stdout=subprocess.PIPE, env=_env(root)) for _ in range(1)]
    racers = [subprocess.Popen([sys.executable, "-c", RACER, root, "60"],
                               stdout=subprocess.PIPE, env=_env(root)) for _ in range(2)]
    for p in racers:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0 and int(out) == 0
    for p in gcs:
        p.communicate(timeout=120)
    # Every record still standing has its file.
    assert run_hold(root, "fsck").returncode in (0, 1)
    rep = json.loads(run_hold(root, "fsck", "--format", "json", check=False).stdout)
    assert not [p for p in rep["problems"] if p["kind"] in ("missing", "corrupt", "size")]
