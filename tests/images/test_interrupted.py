"""Interrupted and failed imports clean up after themselves, with real `hold images import`
child processes and a 220 MB incompressible layer.

- A bad layer, Ctrl-C or SIGTERM mid-unpack: no extract snapshot, no import lease, fsck
  clean, the store usable.
- kill -9 mid-unpack: the half-extracted snapshot and the lease of the dead process are
  reported by fsck ("interrupted unpack ... lease L of dead process P"), explained by
  `gc --why`, removed by `fsck --repair` or the next `gc`; importing again without a gc first
  works, and the leftovers are collected afterwards.
- kill -9 or Ctrl-C mid-copy of the big blob: the next import of the same archive resumes from
  the ingest's offset. Bytes written are counted by the kernel: write_bytes in /proc/<pid>/io
  of the second child, read once it has exited and before it is reaped (waitid WNOWAIT).
- Two imports of the same archive at once write each blob once.

The child is interrupted when the kernel shows the progress we want (the big file growing in
the extract snapshot, or the ingest's data file past a size), never after a sleep: it is
stopped with SIGSTOP there, the state is checked, and then the signal is sent.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from tests.conftest import run_hold
from tests.images.bigkit import BIG_NAME, docker_archive, oci_archive
from tests.peers import need_root

pytestmark = pytest.mark.slow

BIG = 220 << 20
DEADLINE = 120.0


@pytest.fixture(scope="session")
def big(tmp_path_factory):
    need_root()
    w = tmp_path_factory.mktemp("big")
    return {"oci": oci_archive(str(w / "oci"), big=BIG),
            "bad": oci_archive(str(w / "bad"), big=BIG, name="example.com/bad:1",
                               corrupt=True),
            "docker": docker_archive(str(w / "docker"), big=BIG)}


@pytest.fixture
def roots(tmp_path):
    """Fresh roots on demand; their blobs and snapshots are deleted after the test."""
    made = []

    def make() -> str:
        r = str(tmp_path / f"root{len(made)}")
        os.makedirs(r)
        made.append(r)
        return r

    yield make
    for r in made:
        shutil.rmtree(r, ignore_errors=True)


def _env(root):
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "src")
    return {**os.environ, "PYTHONPATH": src, "HOLD_ROOT": root,
            "HOLD_STATE": os.path.join(root, "_state"),
            "HOLD_CONFIG": os.path.join(root, "_no_config.toml")}


def _start(root, *args, stdin=None):
    return subprocess.Popen([sys.executable, "-m", "cargohold", "images", "import",
                             "--progress", "none", "--format", "json", *args],
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env(root))


def _big_file_growing(root):
    def cond():
        for f in glob.glob(os.path.join(root, "snapshots/overlayfs/snapshots/*/fs", BIG_NAME)):
            if os.path.getsize(f) >= 16 << 20:
                return f
        return None
    return cond


def _ingest_past(root, size):
    def cond():
        for f in glob.glob(os.path.join(root, "content/ingest/*/data")):
            try:
                if os.path.getsize(f) >= size:
                    return f
            except FileNotFoundError:
                continue  # committed (renamed into blobs/) between the glob and the stat
        return None
    return cond


def _stop_when(p, cond):
    """SIGSTOP ``p`` as soon as ``cond()`` names a file; None when ``p`` ended first."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        hit = cond()
        if hit:
            os.kill(p.pid, signal.SIGSTOP)
            return hit
        if p.poll() is not None:
            return None
        time.sleep(0.001)
    p.kill()
    raise AssertionError("the import made no progress within the deadline")


def _interrupt(roots, archive, sig, when, *, tries=3):
    """Run an import on a fresh root and deliver ``sig`` where ``when(root)`` says.

    Returns (root, completed process, its pid, file seen, its size when stopped). The copy or
    unpack
    of the big layer takes a few hundred milliseconds here; an attempt whose import finished
    before we saw it (a badly loaded machine) is repeated on a new root.
    """
    for _ in range(tries):
        root = roots()
        p = _start(root, archive)
        hit = _stop_when(p, when(root))
        if hit is None:
            p.communicate()
            continue
        try:
            size = os.path.getsize(hit)
        except FileNotFoundError:  # it finished the file just before the stop: try again
            os.kill(p.pid, signal.SIGCONT)
            p.communicate()
            continue
        os.kill(p.pid, sig)
        os.kill(p.pid, signal.SIGCONT)
        out, err = p.communicate(timeout=DEADLINE)
        done = subprocess.CompletedProcess(p.args, p.returncode, out, err)
        return root, done, p.pid, hit, size
    raise AssertionError(f"the import finished {tries} times before it could be interrupted")


def _hold(root, *args, **kw):
    return run_hold(root, *args, **kw)


def _snapshot_keys(root):
    return [s["name"] for s in json.loads(_hold(root, "snapshots", "ls", "--format",
                                                "json").stdout)]


def _big_files(root):
    return glob.glob(os.path.join(root, "snapshots/overlayfs/snapshots/*/fs", BIG_NAME))


def _lease_rows(root):
    return json.loads(_hold(root, "leases", "ls", "--format", "json").stdout)


def _assert_cleaned_up(root):
    assert not any(k.startswith("extract-") for k in _snapshot_keys(root))
    assert _lease_rows(root) == []
    assert b"clean" in _hold(root, "fsck").stdout


def _assert_usable(root, archive):
    res = json.loads(_hold(root, "images", "import", "--progress", "none", "--format", "json",
                           archive).stdout)
    assert res["entries"][0]["unpacked"]
    assert b"complete" in _hold(root, "images", "check").stdout
    _assert_cleaned_up(root)


# --- failures that unwind ----------------------------------------------------------------


def test_a_bad_layer_leaves_no_snapshot_and_no_lease(roots, big):
    root = roots()
    p = _hold(root, "images", "import", "--progress", "none", big["bad"], check=False)
    err = p.stderr.decode()
    assert p.returncode != 0 and "layer 2/3" in err and "gzip" in err, err
    assert "Traceback" not in err
    assert _snapshot_keys(root) == []  # layer 1 was committed, then collected with the lease
    assert _hold(root, "images", "ls", "-q").stdout == b""
    _assert_cleaned_up(root)
    _assert_usable(root, big["oci"])


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "aborted"),
                                           (signal.SIGTERM, 143, "terminated")],
                         ids=["ctrl-c", "sigterm"])
def test_a_signal_mid_unpack_removes_the_extract_snapshot_and_the_lease(roots, big, sig, code,
                                                                        word):
    root, p, _pid, hit, size = _interrupt(roots, big["oci"], sig, _big_file_growing)
    assert size < BIG  # it really was in the middle of the big layer
    assert p.returncode == code and word in p.stderr.decode(), p.stderr.decode()
    assert "Traceback" not in p.stderr.decode()
    assert not os.path.exists(hit)  # the half-extracted tree is gone, not just its record
    assert _hold(root, "images", "ls", "-q").stdout == b""
    _assert_cleaned_up(root)
    _assert_usable(root, big["oci"])


# --- kill -9 mid-unpack ------------------------------------------------------------------


def _killed_mid_unpack(roots, big):
    root, p, child, _hit, size = _interrupt(roots, big["oci"], signal.SIGKILL,
                                            _big_file_growing)
    assert p.returncode == -signal.SIGKILL and size < BIG
    [lease] = _lease_rows(root)
    labels = lease["labels"]
    pid = labels["cargohold.owner/pid"]
    assert pid == str(child) and labels["cargohold.owner/boot"]
    assert labels["cargohold.owner/purpose"] == f"images import {big['oci']}"
    [extract] = [k for k in _snapshot_keys(root) if k.startswith("extract-")]
    return root, lease["id"], pid, extract


def test_kill9_mid_unpack_is_reported_and_repaired_by_fsck(roots, big):
    root, lid, pid, extract = _killed_mid_unpack(roots, big)
    p = _hold(root, "fsck", check=False)
    out = p.stdout.decode()
    assert p.returncode == 1
    line = next(ln for ln in out.splitlines() if ln.startswith("interrupted unpack:"))
    assert line.startswith(f"interrupted unpack: snapshot {extract}, ")
    n = int(line.split(", ")[1].split()[0])
    assert n >= 16 << 20  # the bytes it had extracted
    assert f"lease {lid} of dead process {pid} (images import" in line
    why = _hold(root, "gc", "--why", f"snapshot/overlayfs/{extract}").stdout.decode()
    assert f"lease {lid} of dead process {pid}" in why and "nothing keeps it" in why
    assert f"of dead process {pid}" in _hold(root, "gc", "--why", f"lease/{lid}").stdout.decode()
    rep = _hold(root, "fsck", "--repair").stdout.decode()
    assert f"interrupted unpack: snapshot {extract}, " in rep and "[repaired]" in rep
    assert _big_files(root) == []  # the half-extracted tree is gone from the backend too
    _assert_cleaned_up(root)
    _assert_usable(root, big["oci"])


def test_kill9_mid_unpack_then_import_again_without_gc(roots, big):
    root, lid, pid, extract = _killed_mid_unpack(roots, big)
    res = json.loads(_hold(root, "images", "import", "--progress", "none", "--format", "json",
                           big["oci"]).stdout)
    assert res["entries"][0]["unpacked"] and res["bytes"] == 0  # the blobs were all there
    keys = _snapshot_keys(root)
    assert extract in keys  # still there: nobody collected yet
    assert [x["id"] for x in _lease_rows(root)] == [lid]
    dry = _hold(root, "gc", "--dry-run").stdout.decode()
    assert extract in dry and lid in dry
    gc = _hold(root, "gc").stdout.decode()
    assert extract in gc and lid in gc
    assert len(_snapshot_keys(root)) == 3  # the image's three layers stay
    assert len(_big_files(root)) == 1  # the committed layer's, not the half-extracted one
    _assert_cleaned_up(root)
    assert b"complete" in _hold(root, "images", "check").stdout


# --- resuming an interrupted blob copy ---------------------------------------------------


def _import_counting_writes(root, archive, *args):
    """Import ``archive`` in a child; return (its JSON result, bytes it wrote to storage)."""
    p = _start(root, *args, archive)
    out = p.stdout.read()
    # Exited but not reaped: /proc/<pid>/io still holds its totals.
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    io_stats = dict(line.split(": ") for line in open(f"/proc/{p.pid}/io").read().splitlines())
    err = p.stderr.read()
    assert p.wait() == 0, err.decode()
    return json.loads(out), int(io_stats["write_bytes"])


def _partial(root):
    rows = json.loads(_hold(root, "content", "active", "--format", "json").stdout)
    [row] = [r for r in rows if r["total"] > BIG]
    return row


def _resume_and_count(root, archive, kept, full_writes):
    """Import again; check that only the rest was written."""
    res, wrote = _import_counting_writes(root, archive, "--no-unpack")
    assert res["resumed_bytes"] == kept
    rest = res["bytes"] - kept  # new blobs' bytes, less what the interrupted run had stored
    # Exactly the rest of the big blob plus small files and metadata pages, and far below
    # what a copy from scratch writes (measured the same way on a fresh root).
    assert rest <= wrote <= rest + (8 << 20), (wrote, rest)
    assert full_writes - wrote >= kept - (8 << 20)
    assert json.loads(_hold(root, "content", "active", "--format", "json").stdout) == []
    out = _hold(root, "fsck").stdout.decode()
    assert "clean" in out and "resumable" not in out
    return res


def test_kill9_mid_copy_then_the_same_archive_resumes_from_the_offset(roots, big):
    full_root = roots()
    _, full_writes = _import_counting_writes(full_root, big["oci"], "--no-unpack")
    assert full_writes >= BIG
    root = roots()
    # Fed through a pipe, so the child can only copy what the test has written: kill -9 it
    # once the big blob's ingest holds most of what it was given.
    data = open(big["oci"], "rb").read()
    p = _start(root, "-", stdin=subprocess.PIPE)
    fed = len(data) // 2
    p.stdin.write(data[:fed])
    p.stdin.flush()
    hit = _stop_when(p, _ingest_past(root, fed - (24 << 20)))
    assert hit is not None
    p.kill()
    p.wait()
    p.stdin.close()
    row = _partial(root)
    kept = row["offset"]
    assert kept >= fed - (24 << 20) and row["holder"] == ""
    fsck = _hold(root, "fsck").stdout.decode()
    assert "clean" in fsck
    assert f"resumable partial ingest {row['ref']} (namespace default), {kept} of " in fsck
    assert "of dead process" in fsck
    # The dead import's lease goes with the next gc; its partial ingest does not.
    gc = _hold(root, "gc").stdout.decode()
    assert "lease" in gc and _lease_rows(root) == []
    assert _partial(root)["offset"] == kept
    _resume_and_count(root, big["oci"], kept, full_writes)
    assert b"complete" in _hold(root, "images", "check").stdout


def test_ctrl_c_mid_copy_of_a_docker_archive_then_it_resumes(roots, big):
    full_root = roots()
    _, full_writes = _import_counting_writes(full_root, big["docker"], "--no-unpack")
    root, p, _pid, _hit, size = _interrupt(roots, big["docker"], signal.SIGINT,
                                           lambda r: _ingest_past(r, BIG // 3))
    assert p.returncode == 130 and size < BIG
    _assert_cleaned_up(root)  # Ctrl-C ended the lease; fsck is clean
    row = _partial(root)
    kept = row["offset"]
    assert kept >= BIG // 3 and row["holder"] == ""
    assert "resumable partial ingest" in _hold(root, "fsck").stdout.decode()
    _hold(root, "gc")
    assert _partial(root)["offset"] == kept  # a gc keeps it for the resume
    res = _resume_and_count(root, big["docker"], kept, full_writes)
    assert res["entries"][0]["names"] == ["example.com/bigd:1"]


def test_two_imports_of_the_same_archive_at_once_write_each_blob_once(roots, big):
    root = roots()
    procs = [_start(root, "--no-unpack", big["oci"]) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=DEADLINE)
        assert p.returncode == 0, err.decode()
        results.append(json.loads(out))
    stored = json.loads(_hold(root, "content", "ls", "--format", "json").stdout)
    # Each blob was written by one of the two; the other waited for the ingest and found it.
    assert sum(r["bytes"] for r in results) == sum(b["size"] for b in stored)
    assert sum(r["blobs"] for r in results) == len(stored) == 5
    assert json.loads(_hold(root, "content", "active", "--format", "json").stdout) == []
    assert b"clean" in _hold(root, "fsck").stdout
    _assert_usable(root, big["oci"])
