"""`hold content`, `namespaces`, `leases`, `gc`, `fsck` as a user runs them, crashes included."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from tests.conftest import run_hold


def dg(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def test_ingest_ls_get_label_rm(hold):
    d = hold("content", "ingest", "--label", "a=1", "r1", input=b"hello\n").stdout.decode().strip()
    assert d == dg(b"hello\n")
    assert hold("content", "get", d).stdout == b"hello\n"
    rows = json.loads(hold("content", "ls", "--format", "json").stdout)
    assert rows[0]["digest"] == d and rows[0]["size"] == 6 and rows[0]["labels"] == {"a": "1"}
    assert hold("content", "ls", "-q").stdout.decode().split() == [d]
    assert hold("content", "ls", "-q", 'labels."a"==2').stdout == b""
    hold("content", "label", d, "b=2", "a=")
    assert json.loads(hold("content", "ls", "--format", "json").stdout)[0]["labels"] == {"b": "2"}
    hold("content", "rm", d)
    p = hold("content", "get", d, check=False)
    assert p.returncode == 1 and b"not found" in p.stderr


def test_wrong_expected_digest_and_size_name_both_values(hold):
    wrong = dg(b"other")
    p = hold("content", "ingest", "--expected-digest", wrong, "r", input=b"abc", check=False)
    assert p.returncode == 1
    assert wrong.encode() in p.stderr and dg(b"abc").encode() in p.stderr
    assert b"default/r" not in p.stderr
    p = hold("content", "ingest", "--expected-size", "10", "r2", input=b"abc", check=False)
    assert p.returncode == 1 and b"10" in p.stderr and b"3" in p.stderr
    assert b"resume" in p.stderr  # short input: kept for a resume
    assert hold("content", "ls", "-q").stdout == b""


def test_namespaces_isolation_and_refusal(hold):
    hold("namespaces", "create", "team", "owner=ops")
    d = hold("-n", "team", "content", "ingest", "x", input=b"team data").stdout.decode().strip()
    assert hold("content", "ls", "-q").stdout == b""
    assert hold("-n", "team", "content", "ls", "-q").stdout.decode().strip() == d
    p = hold("namespaces", "rm", "team", check=False)
    assert p.returncode == 1 and b"1 blobs" in p.stderr
    hold("-n", "team", "content", "rm", d)
    hold("namespaces", "rm", "team")
    assert b"team" not in hold("namespaces", "ls", "-q").stdout


def test_lease_option_protects_writes_until_lease_removed(hold):
    lid = hold("leases", "create", "--id", "keep", "--label", "who=me").stdout.decode().strip()
    assert lid == "keep"
    d = hold("--lease", "keep", "content", "ingest", "x", input=b"kept").stdout.decode().strip()
    hold("gc")
    assert hold("content", "ls", "-q").stdout.decode().strip() == d
    out = hold("leases", "rm", "--sync", "keep").stdout.decode()
    assert d in out and "freed" in out
    assert hold("content", "ls", "-q").stdout == b""
    p = hold("--lease", "missing", "content", "ingest", "y", input=b"z", check=False)
    assert p.returncode == 1 and b"lease missing" in p.stderr


def test_expiring_lease_protects_nothing_after_expiry(hold):
    hold("leases", "create", "--id", "short", "--expires", "1s")
    hold("--lease", "short", "content", "ingest", "x", input=b"brief")
    time.sleep(1.2)
    hold("gc")
    assert hold("content", "ls", "-q").stdout == b""
    assert hold("leases", "ls", "-q").stdout == b""


def test_gc_dry_run_json_and_why(hold):
    lid = hold("leases", "create").stdout.decode().strip()
    d = hold("--lease", lid, "content", "ingest", "x", input=b"why").stdout.decode().strip()
    why = hold("gc", "--why", d).stdout.decode()
    assert f"lease {lid}" in why and d in why
    hold("leases", "rm", lid)
    plan = json.loads(hold("gc", "--dry-run", "--format", "json").stdout)
    assert plan["dry_run"] and {r["key"] for r in plan["removed"]} == {d}
    assert hold("content", "ls", "-q").stdout.decode().strip() == d  # nothing changed
    res = json.loads(hold("gc", "--format", "json").stdout)
    assert res["bytes_freed"] == 3


def test_version_config_plugins(hold):
    assert hold("version").stdout.startswith(b"hold ")
    assert b"[gc]" in hold("config", "default").stdout
    rows = json.loads(hold("plugins", "ls", "--format", "json").stdout)
    by = {(r["type"], r["id"]): r for r in rows}
    assert by[("content", "local")]["status"] == "ok"
    assert all(r["status"] in ("ok", "skip", "error") for r in rows)
    # Every status comes with what its probe saw, ok included; nothing without a probe.
    assert all(r["reason"] for r in rows), rows
    assert by[("gc", "collector")]["reason"] == "idle"
    assert by[("differ", "zstd")]["reason"] == "round trip"
    runtime = by[("runtime", "runc")]
    if shutil.which("runc") and os.geteuid() == 0:
        assert runtime["status"] == "ok" and runtime["reason"].startswith("runc version ")
        assert "0 task(s)" in runtime["reason"]
    else:
        assert runtime["status"] == "skip"


def test_plugins_gc_probe_sees_a_running_collection(hold, root):
    from cargohold._fsutil import FileLock

    hold("content", "ls")
    lock = FileLock(os.path.join(root, "gc.lock"), "gc").acquire()
    try:
        rows = json.loads(hold("plugins", "ls", "--format", "json").stdout)
    finally:
        lock.release()
    [gc] = [r for r in rows if r["type"] == "gc"]
    assert gc["status"] == "ok" and gc["reason"].startswith(f"running now: pid {os.getpid()}")
    rows = json.loads(hold("--read-only", "plugins", "ls", "--format", "json").stdout)
    [gc] = [r for r in rows if r["type"] == "gc"]
    assert gc["status"] == "skip" and "read-only" in gc["reason"]


def test_plugins_gc_probe_fails_when_gc_cannot_open_a_snapshotter(hold, root):
    """The probe opens what a collection opens: a snapshotter that 'hold gc' cannot open (and
    exits 1 for) puts the collector in error, naming it; fixed, the collector is ok again."""
    hold("content", "ls")
    os.makedirs(os.path.join(root, "snapshots", "btrfs"))  # made once; not on btrfs here
    assert hold("gc", check=False).returncode == 1
    [gc] = [r for r in json.loads(hold("plugins", "ls", "--format", "json").stdout)
            if r["type"] == "gc"]
    assert gc["status"] == "error", gc
    assert gc["reason"].startswith("cannot open snapshotter btrfs (") and "exits 1" in gc["reason"]
    os.rmdir(os.path.join(root, "snapshots", "btrfs"))
    [gc] = [r for r in json.loads(hold("plugins", "ls", "--format", "json").stdout)
            if r["type"] == "gc"]
    assert (gc["status"], gc["reason"]) == ("ok", "idle")


def test_usage_error_exit_code_2(hold):
    assert hold("content", "nope", check=False).returncode == 2
    assert hold("content", "get", "not-a-digest", check=False).returncode == 2


# --- crashes ------------------------------------------------------------------------------


def _env(root):
    e = dict(os.environ)
    e.update({"HOLD_ROOT": root, "HOLD_CONFIG": os.path.join(root, "_none.toml")})
    return e


def test_kill_9_mid_ingest_then_resume(root):
    data = os.urandom(24 << 20)
    p = subprocess.Popen([sys.executable, "-m", "cargohold", "content", "ingest", "big"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=_env(root))
    p.stdin.write(data[: 12 << 20])
    p.stdin.flush()
    deadline = time.time() + 20
    offset = 0
    while time.time() < deadline and offset < (4 << 20):
        rows = json.loads(run_hold(root, "content", "active", "--format", "json").stdout)
        offset = rows[0]["offset"] if rows else 0
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    rows = json.loads(run_hold(root, "content", "active", "--format", "json").stdout)
    assert rows and rows[0]["ref"] == "big"
    kept = rows[0]["offset"]
    assert kept >= (4 << 20) and rows[0]["holder"] == ""
    # Garbage where the stored bytes are: only a true resume can produce the right digest.
    second = b"\0" * kept + data[kept:]
    out = run_hold(root, "content", "ingest", "big", input=second).stdout.decode().strip()
    assert out == dg(data)
    assert run_hold(root, "content", "get", out).stdout == data
    assert run_hold(root, "fsck").returncode == 0


CRASH = r"""
import os, signal, sys
from cargohold.cli.main import main
import cargohold.metadata.content as mc
import cargohold.store.ingest as ing
where = sys.argv[1]
if where == "before-record":
    def boom(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    mc.write_record = boom
elif where == "before-rename":
    real = os.rename
    def rename(src, dst, *a, **k):
        if "/blobs/" in str(dst):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *a, **k)
    os.rename = rename
main(["content", "ingest", "crashy"])
"""


def _crash(root, where, data):
    p = subprocess.run([sys.executable, "-c", CRASH, where], input=data, env=_env(root),
                       capture_output=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()


def test_crash_between_rename_and_record(root):
    data = os.urandom(1 << 20)
    _crash(root, "before-record", data)
    # The blob is complete but unrecorded, still claimed by its ingest: fsck notes the
    # interrupted commit (no problem: nothing is lost or stranded), nothing is visible.
    p = run_hold(root, "fsck", check=False)
    assert p.returncode == 0 and b"note: interrupted commit: ingest crashy" in p.stdout
    assert run_hold(root, "content", "ls", "-q").stdout == b""
    # Running the same ingest again adopts the blob (no second copy) and fsck is clean.
    assert run_hold(root, "content", "ingest", "crashy", input=data).stdout.decode().strip() \
        == dg(data)
    assert run_hold(root, "fsck").returncode == 0


def test_crash_before_rename_resumes(root):
    data = os.urandom(1 << 20)
    _crash(root, "before-rename", data)
    assert run_hold(root, "content", "ls", "-q").stdout == b""
    rows = json.loads(run_hold(root, "content", "active", "--format", "json").stdout)
    assert rows[0]["offset"] == len(data)
    assert run_hold(root, "content", "ingest", "crashy", input=data).stdout.decode().strip() \
        == dg(data)
    assert run_hold(root, "fsck").returncode == 0


def test_ingest_of_bytes_already_held_succeeds_and_prints_the_digest(hold):
    data = b"same bytes\n"
    hold("leases", "create", "--id", "L")
    first = hold("--lease", "L", "content", "ingest", "r1", input=data).stdout.decode().strip()
    assert first == dg(data)
    # The same bytes again, under another ref, with and without an expected digest, and
    # from another namespace (which shares the file): each prints the digest and exits 0.
    for args in (("content", "ingest", "r2"),
                 ("content", "ingest", "--expected-digest", first, "r3"),
                 ("-n", "other", "content", "ingest", "r4")):
        p = hold("--lease", "L", *args, input=data, check=False) if args[0] != "-n" else \
            hold(*args, input=data, check=False)
        assert p.returncode == 0, p.stderr
        assert p.stdout.decode().strip() == first
    assert hold("content", "active").stdout.decode().count("\n") <= 1  # no ingest left over


def test_first_commit_makes_its_new_directories_durable(root, monkeypatch):
    """The blob's directories (blobs/, blobs/sha256/) are fsynced into their parents before
    the record that names the blob is written."""
    import io

    from tests.peers import open_client

    from cargohold import _fsutil
    from cargohold.store.api import copy_into

    c = open_client(root)
    try:
        c.leases.create("L")
        synced: list[str] = []
        real = _fsutil.fsync_dir
        monkeypatch.setattr(_fsutil, "fsync_dir", lambda p: (synced.append(p), real(p))[1])
        from cargohold.metadata.content import NamespacedStore

        store = NamespacedStore(c.db, c.store, c.namespace, lease="L")
        copy_into(store.writer("w"), io.BytesIO(b"x" * 10))
        content = os.path.join(root, "content")
        assert content in synced, synced  # blobs/ made inside content/
        assert os.path.join(content, "blobs") in synced, synced  # sha256/ inside blobs/
        assert os.path.join(content, "blobs", "sha256") in synced  # the rename itself
    finally:
        c.close()
