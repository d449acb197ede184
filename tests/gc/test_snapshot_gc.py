"""GC and fsck over snapshots on a real overlayfs backend: a table of what keeps a chain alive
and the exact survivors, records and backend directories removed children first, and kill -9
between the backend call and the record (prepare and commit) cleaned up by GC and fsck."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from tests.conftest import run_hold

from cargohold import config
from cargohold.client import Client
from cargohold.snapshotters.api import Info, Kind
from cargohold.store.api import copy_into

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlayfs snapshots need root")

SN = "overlayfs"


@pytest.fixture
def client(root, monkeypatch):
    monkeypatch.setenv("HOLD_CONFIG", os.path.join(root, "_no_config.toml"))
    c = Client(config.load(None, root=root, state=os.path.join(root, "_state"),
                           snapshotter=SN))
    yield c
    c.close()


def objects(root: str) -> list[str]:
    d = os.path.join(root, "snapshots", SN, "snapshots")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def keys(c: Client) -> list[str]:
    out: list[str] = []
    c.snapshotter().walk(lambda i: out.append(i.name))
    return sorted(out)


def backend_names(c: Client) -> list[str]:
    out: list[str] = []
    c.backend_snapshotter(SN).walk(lambda i: out.append(i.name))
    return sorted(out)


def chain(c: Client) -> None:
    """base <- mid (committed) <- top (active)."""
    sn = c.snapshotter()
    sn.prepare("base-a")
    sn.commit("base", "base-a")
    sn.prepare("mid-a", "base")
    sn.commit("mid", "mid-a")
    sn.prepare("top", "mid")


def keep_by_lease(c: Client) -> None:
    c.leases.create("L")
    with c.db.update() as tx:
        from cargohold.metadata import leases
        leases.add_resource(tx, c.namespace, "L", leases.Resource(f"snapshots/{SN}", "top"))


def keep_by_root_label(c: Client) -> None:
    c.snapshotter().update(Info("mid", Kind.COMMITTED, labels={"containerd.io/gc.root": "now"}),
                           ["labels.containerd.io/gc.root"])


def keep_by_blob_ref(c: Client) -> None:
    copy_into(c.content.writer("w"), io.BytesIO(b"config"),
              labels={"containerd.io/gc.root": "now",
                      f"containerd.io/gc.ref.snapshot.{SN}": "base"})


CASES = {
    "nothing": (None, []),
    "lease on the active top": (keep_by_lease, ["base", "mid", "top"]),
    "gc.root label on mid": (keep_by_root_label, ["base", "mid"]),
    "blob gc.ref.snapshot to base": (keep_by_blob_ref, ["base"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_exact_survivors_and_backend_dirs(client, root, case):
    keep, survivors = CASES[case]
    chain(client)
    if keep is not None:
        keep(client)
    assert len(objects(root)) == 3
    res = client.collector.collect()
    assert res.errors == [], res.errors  # a parent removed before its child would show here
    assert keys(client) == survivors
    gone = [r.key for r in res.removed if r.kind == "snapshot"]
    assert sorted(gone) == sorted(f"{SN}/{k}" for k in {"base", "mid", "top"} - set(survivors))
    order = [k.split("/", 1)[1] for k in gone]
    assert order == [k for k in ("top", "mid", "base") if k in order], "children first"
    assert len(objects(root)) == len(survivors)
    assert len(backend_names(client)) == len(survivors)
    if survivors:
        res = client.collector.collect()  # a second run in the same process changes nothing
        assert keys(client) == survivors and res.errors == []


def test_hold_gc_removes_records_and_dirs(client, root):
    chain(client)
    client.close()
    out = run_hold(root, "gc", "--format", "json").stdout
    removed = {r["key"] for r in json.loads(out)["removed"] if r["kind"] == "snapshot"}
    assert removed == {f"{SN}/top", f"{SN}/mid", f"{SN}/base"}
    assert objects(root) == []


# --- crashes between the backend and the record ------------------------------------------------
CHILD = r"""
import os, sys, time
from cargohold import config
from cargohold.client import Client

root, op = sys.argv[1], sys.argv[2]
c = Client(config.load(None, root=root, state=os.path.join(root, "_state"), snapshotter="%s"))
sn = c.snapshotter()
be = sn.backend
real = getattr(be, op)

def paused(*args, **kw):
    out = real(*args, **kw)
    print("backend done", flush=True)
    sys.stdin.readline()  # the parent kills us here, or lets us go on
    return out

if op == "commit":
    sn.prepare("k")
setattr(be, op, paused)
sn.prepare("doomed") if op == "prepare" else sn.commit("done", "k")
print("recorded", flush=True)
""" % SN


def start_child(root: str, op: str) -> subprocess.Popen:
    env = dict(os.environ, HOLD_CONFIG=os.path.join(root, "_no_config.toml"))
    p = subprocess.Popen([sys.executable, "-c", CHILD, root, op], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, env=env, text=True)
    assert p.stdout.readline().strip() == "backend done"
    return p


def kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdout.close()
    p.stdin.close()


def test_crash_after_backend_prepare_leaves_garbage_gc_removes(client, root):
    kill(start_child(root, "prepare"))
    assert keys(client) == [] and len(backend_names(client)) == 1
    assert backend_names(client)[0].endswith("/doomed")
    res = client.collector.collect()
    assert res.errors == [] and backend_names(client) == [] and objects(root) == []


def test_crash_after_backend_prepare_fsck_reports_and_repairs(root, client):
    kill(start_child(root, "prepare"))
    client.close()
    p = run_hold(root, "fsck", check=False)
    assert p.returncode == 1 and b"unreferenced: snapshot default/" in p.stdout
    run_hold(root, "fsck", "--repair")
    assert objects(root) == []
    assert b"clean" in run_hold(root, "fsck").stdout


def test_crash_after_backend_commit_fsck_drops_record_and_orphan(root, client):
    kill(start_child(root, "commit"))
    # The record still names the active snapshot the backend has just retired.
    assert backend_names(client)[0].endswith("/done")
    client.close()
    p = run_hold(root, "fsck", "--format", "json", check=False)
    kinds = {(x["kind"], x["subject"].split()[-3]) for x in json.loads(p.stdout)["problems"]}
    assert p.returncode == 1
    assert ("missing", "k") in kinds and any(k == "unreferenced" for k, _ in kinds), kinds
    run_hold(root, "fsck", "--repair")
    assert run_hold(root, "snapshots", "ls", "-q").stdout == b"" and objects(root) == []
    assert run_hold(root, "fsck").returncode == 0


def test_gc_waits_for_a_prepare_between_backend_and_record(client, root):
    p = start_child(root, "prepare")
    try:
        done: list[object] = []
        t = threading.Thread(target=lambda: done.append(client.collector.collect()))
        t.start()
        time.sleep(0.5)
        assert t.is_alive(), "GC pruned while a prepare was between its backend call and record"
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "recorded"
        t.join(30)
        assert not t.is_alive()
    finally:
        kill(p)
    assert keys(client) == ["doomed"] and len(objects(root)) == 1


def test_fsck_repairs_a_snapshot_whose_directory_vanished(client, root):
    chain(client)
    top_dir = os.path.join(root, "snapshots", SN, "snapshots", objects(root)[-1])
    shutil.rmtree(top_dir)
    client.close()
    p = run_hold(root, "fsck", "--format", "json", check=False)
    probs = json.loads(p.stdout)["problems"]
    assert {x["kind"] for x in probs} == {"backend"}
    p = run_hold(root, "fsck", "--repair", "--format", "json", check=False)
    probs = json.loads(p.stdout)["problems"]
    assert {x["kind"] for x in probs} == {"backend", "missing"} and p.returncode == 0, probs
    assert run_hold(root, "snapshots", "ls", "-q").stdout.decode().split() == ["base", "mid"]
