"""`hold images import` on real archives: every format, names, repeats, partial platforms,
hostile archives, a kill -9 in the middle, and two imports at once."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest
from tests.conftest import run_hold
from tests.images.imagekit import single_layout, tar_layout

pytestmark = pytest.mark.peer

TODAY = time.strftime("import-%Y-%m-%d")


def _import(hold, *args, **kw):
    out = hold("images", "import", "--progress", "none", "--format", "json", *args, **kw)
    return json.loads(out.stdout)


def _visible(hold):
    return (hold("images", "ls", "-q").stdout.decode().split(),
            hold("content", "ls", "-q").stdout.decode().split(),
            [s for s in hold("snapshots", "ls").stdout.decode().splitlines()[1:]])


@pytest.mark.parametrize("key,args,names", [
    ("oci", ("--base-name", "example.com/busy"), ["example.com/busy:1.0"]),
    ("oci", (), [f"{TODAY}:1.0"]),
    ("oci_gzip", ("--base-name", "x"), ["x:1.0"]),
    ("oci_zstd", ("--base-name", "x"), ["x:1.0"]),
    ("oci_xz", ("--base-name", "x"), ["x:1.0"]),
    ("docker", (), ["example.com/team/busy:1"]),
    ("docker_gzip", (), ["example.com/team/busy:1"]),
    ("docker_zstd", (), ["example.com/team/busy:1"]),
    ("docker_xz", (), ["example.com/team/busy:1"]),
    ("docker_familiar", (), ["docker.io/library/busy:latest"]),
    ("docker_legacy", (), ["example.com/team/busy:1"]),
    ("ocidir", (), ["example.com/dir:2"]),
])
def test_import_each_format(hold, archives, key, args, names):
    res = _import(hold, archives[key], *args)
    [entry] = res["entries"]
    assert entry["names"] == names
    assert [p["platform"] for p in entry["platforms"]] == ["linux/amd64"]
    assert entry["platforms"][0]["complete"] and list(entry["unpacked"]) == [
        entry["target"]["digest"]]
    if key == "ocidir":
        idx = json.load(open(os.path.join(archives["ocidir"], "index.json")))
        assert entry["target"]["digest"] == idx["manifests"][0]["digest"]
    elif key.startswith("oci"):
        assert entry["target"]["digest"] == archives["manifest"]
        assert res["format"] == "oci"
    elif key.startswith("docker"):
        assert entry["target"]["mediaType"].startswith("application/vnd.docker")
    assert res["compression"] == {"gzip": "gzip", "zstd": "zstd", "xz": "xz"}.get(
        key.rsplit("_", 1)[-1], "none")
    assert hold("images", "ls", "-q").stdout.decode().split() == names


def test_docker_manifests_are_deterministic_and_layers_typed(tmp_path, archives):
    digests = set()
    for i, key in enumerate(("docker", "docker_gzip", "docker_familiar", "docker_legacy")):
        r = str(tmp_path / f"r{i}")
        os.makedirs(r)
        out = run_hold(r, "images", "import", "--no-unpack", "--format", "json", archives[key])
        digests.add(json.loads(out.stdout)["entries"][0]["target"]["digest"])
    assert len(digests) == 1  # same archive content -> the same synthesized manifest
    r = str(tmp_path / "r0")
    man = json.loads(run_hold(r, "content", "get", digests.pop()).stdout)
    assert man["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert {ly["mediaType"] for ly in man["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar"}  # skopeo writes plain tars


def test_stdin_and_nameless_docker_save(hold, archives):
    data = open(archives["docker_nameless"], "rb").read()
    p = hold("images", "import", "-", input=data)
    digest = json.loads(hold("images", "ls", "--format", "json").stdout)[0]["digest"]
    assert hold("images", "ls", "-q").stdout.decode().split() == [f"<none>@{digest}"]
    assert b"has no name" in p.stderr and b"--name" in p.stderr
    res = _import(hold, "-", "--name", "example.com/named:1", input=data)
    assert res["entries"][0]["names"] == ["example.com/named:1"]


def test_digests_and_index_name(hold, archives):
    _import(hold, archives["multi_tar"], "--digests", "--index-name", "all-of-it")
    names = hold("images", "ls", "-q").stdout.decode().split()
    idx = archives["multi"]["index"]
    assert names == ["all-of-it", "example.com/multi:1", f"example.com/multi@{idx}"]


def test_import_twice_changes_nothing(hold, archives):
    def state():
        return (hold("images", "ls", "--format", "json").stdout,
                hold("content", "ls", "--format", "json").stdout,
                hold("snapshots", "ls").stdout)
    _import(hold, archives["oci"], "--base-name", "a")
    _import(hold, archives["docker"])
    before = state()
    res = _import(hold, archives["oci"], "--base-name", "a")
    assert res["images"] == [] and res["unchanged"] == ["a:1.0"] and res["blobs"] == 0
    res = _import(hold, archives["docker"])
    assert res["images"] == [] and res["blobs"] == 0
    assert state() == before
    assert hold("leases", "ls", "-q").stdout == b""


def test_multi_platform_partial_archive(hold, archives):
    m = archives["multi"]
    p = hold("images", "import", "--progress", "none", archives["multi_tar"])
    out = p.stdout.decode()
    assert f"{m['host']}" in out and "complete, unpacked" in out
    assert f"{m['other']}" in out and "manifest missing" in out
    assert f"{m['partial']}      2 blobs missing" in out
    assert "attestations" in out
    check = json.loads(hold("images", "check", "--format", "json").stdout)
    [img] = check
    byplat = {(s["platform"], s["attestation"]): s for s in img["platforms"]}
    assert byplat[(m["host"], False)]["complete"] and byplat[(m["host"], False)]["unpacked"]
    assert byplat[(m["other"], False)]["status"] == "manifest missing"
    assert byplat[(m["partial"], False)]["status"] == "2 blobs missing"
    assert not img["complete"]
    assert byplat[("unknown/unknown", True)]["complete"]
    # Asking for the absent platform by name fails, names it, and leaves nothing new.
    p = hold("images", "import", "--platform", m["other"], archives["multi_tar"], check=False)
    assert p.returncode != 0
    assert m["other"].encode() in p.stderr and b"manifest missing" in p.stderr
    # --all-platforms imports what is there and unpacks what the host runs.
    res = _import(hold, archives["multi_tar"], "--all-platforms")
    assert list(res["entries"][0]["unpacked"]) == [m["present"]]


def _layout_variant(archives, tmp_path, name, **kw):
    d = str(tmp_path / name)
    single_layout(archives["layout"], d, "t", name="example.com/bad:1", **kw)
    return d


def _hostile(archives, tmp_path, case):
    """Each case: (path to import, words the error must contain)."""
    lay = archives["layout"]
    man = json.load(open(os.path.join(lay, "blobs/sha256", archives["manifest"][7:])))
    layer = man["layers"][1]["digest"]
    if case == "missing blob":
        d = _layout_variant(archives, tmp_path, case)
        return tar_layout(d, str(tmp_path / "m.tar"), skip=(f"blobs/sha256/{layer[7:]}",)), [
            "example.com/bad:1", layer, "missing", "hint"]
    if case == "bad digest":
        d = _layout_variant(archives, tmp_path, case)
        path = os.path.join(d, "blobs/sha256", layer[7:])
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(path, "wb").write(bytes(data))
        return tar_layout(d, str(tmp_path / "b.tar")), [layer, "mismatch", "hint"]
    if case == "diffID mismatch":
        def edit(m, cfg):
            cfg["rootfs"]["diff_ids"][1] = "sha256:" + "0" * 64
        d = _layout_variant(archives, tmp_path, case, edit=edit)
        return tar_layout(d, str(tmp_path / "d.tar")), ["example.com/bad:1", "layer 2/3",
                                                       "diffID", "hint"]
    if case == "unknown media type":
        def edit(m, cfg):
            m["layers"][2]["mediaType"] = "application/x-strange"
        d = _layout_variant(archives, tmp_path, case, edit=edit)
        return tar_layout(d, str(tmp_path / "u.tar")), ["example.com/bad:1", "layer 3",
                                                       "application/x-strange", "--no-unpack"]
    if case == "truncated":
        out = str(tmp_path / "t.tar")
        data = open(archives["oci"], "rb").read()
        open(out, "wb").write(data[: len(data) * 2 // 3])
        return out, ["truncated", "hint"]
    if case == "truncated gzip":
        out = str(tmp_path / "t.tar.gz")
        data = open(archives["oci_gzip"], "rb").read()
        open(out, "wb").write(data[: len(data) // 2])
        return out, ["truncated", "hint"]
    if case == "not an archive":
        out = str(tmp_path / "n.tar")
        open(out, "wb").write(os.urandom(3000))
        return out, ["not an image archive", "hint"]
    if case == "tar without an image":
        out = str(tmp_path / "plain.tar")
        with tarfile.open(out, "w") as t:
            t.add(archives["ref"] + "/etc/passwd", "etc/passwd")
        return out, ["not an image archive", "hint"]
    if case == "docker layer missing":
        src = archives["docker"]
        out = str(tmp_path / "dm.tar")
        with tarfile.open(src) as t, tarfile.open(out, "w") as o:
            members = t.getmembers()
            victim = json.load(t.extractfile("manifest.json"))[0]["Layers"][2]
            for mem in members:
                if mem.name != victim:
                    o.addfile(mem, t.extractfile(mem) if mem.isfile() else None)
        return out, ["example.com/team/busy:1", "layer 3", "missing", "hint"]
    if case == "docker layers swapped":
        out = str(tmp_path / "ds.tar")
        with tarfile.open(archives["docker"]) as t, tarfile.open(out, "w") as o:
            for mem in t.getmembers():
                f = t.extractfile(mem) if mem.isfile() else None
                if mem.name == "manifest.json":
                    man = json.load(f)
                    ly = man[0]["Layers"]
                    ly[0], ly[1] = ly[1], ly[0]
                    data = json.dumps(man).encode()
                    mem.size = len(data)
                    f = io.BytesIO(data)
                o.addfile(mem, f)
        return out, ["example.com/team/busy:1", "layer 1", "diffID", "hint"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing blob", "bad digest", "diffID mismatch",
                                  "unknown media type", "truncated", "truncated gzip",
                                  "not an archive", "tar without an image",
                                  "docker layer missing", "docker layers swapped"])
def test_hostile_archives_leave_nothing_visible(hold, archives, tmp_path, case):
    path, words = _hostile(archives, tmp_path, case)
    p = hold("images", "import", "--progress", "none", path, check=False)
    err = p.stderr.decode()
    assert p.returncode == 1, (p.returncode, err)  # damaged data is a failure, not usage (2)
    for w in words:
        assert w in err, f"{w!r} not in {err!r}"
    assert "Traceback" not in err
    assert _visible(hold) == ([], [], [])
    assert hold("leases", "ls", "-q").stdout == b""


def test_progress_modes(hold, archives):
    p = hold("images", "import", "--progress", "json", archives["oci"])
    events = [json.loads(line) for line in p.stderr.decode().splitlines()]
    kinds = {e["event"] for e in events}
    assert {"start", "done"} <= kinds
    done = [e for e in events if e["event"] == "done"]
    assert any(e["label"].startswith("unpack") for e in done)
    # Copies count up to their size; unpacks of gzip layers count plain bytes, total unknown.
    assert all(e["current"] == e["total"] for e in done
               if e["status"] == "done" and not e["label"].startswith("unpack"))
    assert all(e["total"] == 0 and e["current"] > 0 and "gzip)" in e["label"] for e in done
               if e["label"].startswith("unpack"))
    hold("images", "rm", "--sync", f"{TODAY}:1.0")
    p = hold("images", "import", "--progress", "plain", archives["oci"])
    lines = p.stderr.decode().splitlines()
    assert lines and all(": done" in ln or ": exists" in ln for ln in lines)
    p = hold("images", "import", archives["oci"])  # a pipe: quiet by default
    assert p.stderr == b""


def _env(root):
    e = dict(os.environ)
    # this worktree's src, as run_hold gives it (not whatever cargohold is installed)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "src")
    e.update({"HOLD_ROOT": root, "HOLD_STATE": os.path.join(root, "_state"),
              "HOLD_CONFIG": os.path.join(root, "_no_config.toml"),
              "PYTHONPATH": src + os.pathsep + e.get("PYTHONPATH", "")})
    return e


def test_kill9_during_import_then_import_again(root, hold, archives):
    data = open(archives["docker"], "rb").read()
    child = subprocess.Popen([sys.executable, "-m", "cargohold", "images", "import", "-"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=_env(root))
    # Feed most of the first (big) layer, wait until it is being ingested, then kill.
    child.stdin.write(data[: len(data) // 2])
    child.stdin.flush()
    ingest = os.path.join(root, "content", "ingest")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (os.path.isdir(ingest) and os.listdir(ingest)):
        time.sleep(0.02)
    assert os.listdir(ingest), "the import never started ingesting"
    child.send_signal(signal.SIGKILL)
    child.wait()
    with pytest.raises(BrokenPipeError):
        child.stdin.write(data[len(data) // 2:])
        child.stdin.close()
    assert hold("images", "ls", "-q").stdout == b""
    hold("fsck")
    res = _import(hold, archives["docker"])
    assert res["entries"][0]["unpacked"]
    hold("fsck")
    assert hold("images", "ls", "-q").stdout.decode().split() == ["example.com/team/busy:1"]


def test_two_imports_at_once_unpack_each_layer_once(root, hold, archives):
    procs = [subprocess.Popen([sys.executable, "-m", "cargohold", "images", "import",
                               "--progress", "none", archives["oci_gzip"], "--base-name", "c"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(root))
             for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    backend = os.path.join(root, "snapshots", "overlayfs", "snapshots")
    assert len(os.listdir(backend)) == 3  # three layers, each applied once
    keys = [ln.split()[0] for ln in hold("snapshots", "ls").stdout.decode().splitlines()[1:]]
    assert len(keys) == 3 and all(k.startswith("sha256:") for k in keys)
    hold("fsck")


def test_import_of_a_layout_directory_reads_only_what_it_needs(hold, archives, tmp_path):
    d = str(tmp_path / "copy")
    shutil.copytree(archives["ocidir"], d)
    res = _import(hold, d)
    assert res["entries"][0]["names"] == ["example.com/dir:2"]


def test_damaged_blob_of_a_platform_nobody_asked_for_is_reported(hold, archives, tmp_path):
    d = str(tmp_path / "multi")
    shutil.copytree(archives["multi_dir"], d)
    att = json.load(open(os.path.join(d, "blobs/sha256", archives["multi"]["attestation"][7:])))
    victim = os.path.join(d, "blobs/sha256", att["layers"][0]["digest"][7:])
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[:-1] + b"X")
    p = hold("images", "import", "--progress", "none", tar_layout(d, str(tmp_path / "m.tar")))
    assert b"damaged in the archive; skipped" in p.stderr
    assert hold("images", "ls", "-q").stdout.decode().split() == ["example.com/multi:1"]
