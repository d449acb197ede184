"""The progress reporter (every mode), what real imports report, and docker-style names.

Real imports (``--progress json``/``plain`` on real archives): an unpack item counts the plain
bytes extracted (a gzip layer of zeros: far more than its blob), with the plain size as its
total only for a plain tar; docker-archive members end up named by digest; with several
archives each summary is printed as that archive finishes.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import threading

import pytest
from tests.conftest import run_hold

from cargohold.errors import InvalidArgument
from cargohold.images import refs
from cargohold.images.progress import Progress


def _drive(p: Progress) -> None:
    p.start("a", "layer a", 3000)
    threads = [threading.Thread(target=lambda: [p.advance("a", 10) for _ in range(100)])
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.advance("never-started", 5)
    p.note("a note")
    p.done("a")
    p.done("a")  # twice: ignored
    p.close()
    p.close()


def test_plain_json_none_and_bars():
    out = io.StringIO()
    _drive(Progress.open("plain", out))
    assert out.getvalue().splitlines()[0] == "a note"
    assert out.getvalue().splitlines()[1].startswith("layer a: done 3.0 kB in ")
    out = io.StringIO()
    _drive(Progress.open("json", out))
    events = [json.loads(x) for x in out.getvalue().splitlines()]
    assert events[0]["event"] == "start" and events[0]["total"] == 3000
    assert events[-1] == {**events[-1], "event": "done", "current": 3000, "status": "done"}
    assert any(e["event"] == "note" and e["text"] == "a note" for e in events)
    out = io.StringIO()
    _drive(Progress.open("none", out))
    assert out.getvalue() == ""
    out = io.StringIO()
    _drive(Progress.open("bars", out))
    assert "\x1b[2K" in out.getvalue() and "layer a: done" in out.getvalue()
    out = io.StringIO()
    assert Progress.open("auto", out).mode == "none"  # not a terminal
    with pytest.raises(ValueError):
        Progress.open("fancy")


def test_done_may_rename_the_item():
    out = io.StringIO()
    p = Progress.open("plain", out)
    p.start("k", "member 1a2b/layer.tar", 10)
    p.advance("k", 10)
    p.done("k", "done", "blob 0123456789ab")
    assert out.getvalue().startswith("blob 0123456789ab: done 10 B")
    out = io.StringIO()
    p = Progress.open("json", out)
    p.start("k", "member x", 0)
    p.done("k", label="blob y")
    start, done = (json.loads(x) for x in out.getvalue().splitlines())
    assert (start["label"], done["label"], done["total"]) == ("member x", "blob y", 0)


def _events(stderr: bytes) -> list[dict]:
    return [json.loads(x) for x in stderr.decode().splitlines()]


def test_unpack_counts_plain_bytes_of_a_gzip_layer(tmp_path):
    from tests.images.bigkit import oci_archive

    big = 48 << 20
    path = oci_archive(str(tmp_path / "w"), big=big, zeros=True, name="example.com/zeros:1")
    root = str(tmp_path / "root")
    p = run_hold(root, "images", "import", "--progress", "json", path)
    events = [e for e in _events(p.stderr) if e.get("label", "").startswith("unpack")]
    man = json.loads(run_hold(root, "content", "get", json.loads(run_hold(
        root, "images", "ls", "--format", "json").stdout)[0]["digest"]).stdout)
    biggest = max(man["layers"], key=lambda d: d["size"])
    mine = [e for e in events if e["key"] == biggest["digest"]]
    start, done = mine[0], mine[-1]
    assert (start["event"], done["event"], done["status"]) == ("start", "done", "done")
    # No total: the plain size of a gzip layer is unknown until its end; the label says
    # what it comes from instead.
    assert start["total"] == done["total"] == 0
    assert re.fullmatch(r"unpack [0-9a-f]{12} \([0-9.]+ [kM]B gzip\)", start["label"])
    blob = run_hold(root, "content", "get", biggest["digest"]).stdout
    plain = len(gzip.decompress(blob))
    assert plain > big > 100 * biggest["size"]  # zeros: the blob is tiny
    assert done["current"] == plain  # every plain byte, counted once
    counts = [e["current"] for e in mine]
    assert counts == sorted(counts)


def test_unpack_of_a_plain_layer_has_its_size_as_total_and_members_end_named_by_digest(
        tmp_path):
    from tests.images.bigkit import docker_archive

    path = docker_archive(str(tmp_path / "w"), big=6 << 20)
    root = str(tmp_path / "root")
    p = run_hold(root, "images", "import", "--progress", "json", path)
    events = _events(p.stderr)
    unpack = [e for e in events if e["event"] == "done" and e["label"].startswith("unpack")]
    assert len(unpack) == 3
    assert all(e["total"] > 0 and e["current"] == e["total"] for e in unpack)
    copies = {e["key"]: e for e in events if e["event"] == "start"
              and not e["label"].startswith("unpack")}
    dones = {e["key"]: e for e in events if e["event"] == "done"
             and not e["label"].startswith("unpack")}
    assert sorted(copies) == sorted(dones) == sorted(
        ["config.json"] + [f"layer{i}/layer.tar" for i in range(3)])
    man = json.loads(run_hold(root, "content", "get", json.loads(run_hold(
        root, "images", "ls", "--format", "json").stdout)[0]["digest"]).stdout)
    digests = [d["digest"] for d in [man["config"], *man["layers"]]]
    assert sorted(e["label"] for e in dones.values()) == sorted(
        f"blob {d[7:19]}" for d in digests)
    assert copies["layer1/layer.tar"]["label"] == "member layer1/layer.tar"
    # The plain mode prints the same names.
    root2 = str(tmp_path / "root2")
    lines = run_hold(root2, "images", "import", "--progress", "plain", "--no-unpack",
                     path).stderr.decode().splitlines()
    assert sorted(ln.split(":", 1)[0] for ln in lines) == sorted(
        f"blob {d[7:19]}" for d in digests)


def test_each_archive_summary_prints_as_it_finishes(archives, tmp_path):
    root = str(tmp_path / "root")
    missing = str(tmp_path / "not-there.tar")
    p = run_hold(root, "images", "import", "--progress", "plain", "--no-unpack",
                 archives["docker"], archives["oci"], missing, check=False)
    out = p.stdout.decode()
    assert p.returncode == 1 and missing in p.stderr.decode()
    # The two archives imported before the third failed were reported, in order.
    done = [ln for ln in out.splitlines() if ln.startswith("imported ")]
    assert [archives["docker"] in done[0], archives["oci"] in done[1]] == [True, True]
    assert out.index("example.com/team/busy:1") < out.index(done[0]) < out.index(done[1])
    # --format json stays one document for all of them.
    p = run_hold(root, "images", "import", "--progress", "none", "--no-unpack", "--format",
                 "json", archives["docker"], archives["oci"])
    assert [r["source"] for r in json.loads(p.stdout)] == [archives["docker"],
                                                           archives["oci"]]


@pytest.mark.parametrize("ref,want", [
    ("alpine", "docker.io/library/alpine:latest"),
    ("alpine:3.19", "docker.io/library/alpine:3.19"),
    ("team/app:1", "docker.io/team/app:1"),
    ("index.docker.io/library/x:1", "docker.io/library/x:1"),
    ("localhost:5000/x", "localhost:5000/x:latest"),
    ("ghcr.io/a/b@sha256:" + "a" * 64, "ghcr.io/a/b@sha256:" + "a" * 64),
    ("example.com/team/busy:1", "example.com/team/busy:1"),
])
def test_normalize(ref, want):
    assert refs.normalize(ref) == want


@pytest.mark.parametrize("bad", ["", "Upper:1", "a//b", "x@sha256:zz", "a:b:c"])
def test_normalize_refuses(bad):
    with pytest.raises(InvalidArgument):
        refs.normalize(bad)
