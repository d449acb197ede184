"""Air-gap seeding: bundles that ctr imports, k3s-style directories seeded once, pinned
images, and seeding a private registry that a real containerd pulls from through a
``_default`` mirror written by ``hold airgap mirror-config``.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import shutil
import subprocess

import pytest

from tests.fetch.registry import (
    DockerRegistry,
    make_layout,
    need_registry,
    push_layout,
    push_two_platform_index,
)

pytestmark = [pytest.mark.peer, pytest.mark.slow]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    need_registry()
    base = tmp_path_factory.mktemp("airgap")
    reg = DockerRegistry(str(base / "src")).start()
    try:
        a = make_layout(str(base / "a"), [{"etc/a": b"image a\n"}, {"bin/a": os.urandom(5000)}])
        b = make_layout(str(base / "b"), [{"etc/b": b"image b\n"}])
        push_layout(str(base / "a"), "1", f"{reg.host}/team/app:1")
        push_layout(str(base / "b"), "1", f"{reg.host}/team/other:1")
        multi = push_two_platform_index(str(base / "m"), "3", f"{reg.host}/team/multi:3")
        yield {"reg": reg, "a": a, "b": b, "multi": multi}
    finally:
        reg.stop()


@pytest.fixture
def dst(tmp_path):
    reg = DockerRegistry(str(tmp_path / "dst")).start()
    yield reg
    reg.stop()


def jhold(hold, *args):
    return json.loads(hold(*args, "--format", "json").stdout)


def test_bundle_is_read_by_ctr_and_seeded_by_hold(hold, src, tmp_path):
    from tests.conftest import run_hold
    from tests.peers import containerd_daemon

    ref = f"{src['reg'].host}/team/app:1"
    out = str(tmp_path / "bundle.tar")
    res = jhold(hold, "airgap", "bundle", out, ref)
    assert res["pulled"] == [ref] and res["images"][0]["digest"] == src["a"]["manifest"]
    assert res["notes"] == []
    # Compressed: containerd 1.6 reads it only through the pipe the note gives.
    zout = str(tmp_path / "bundle.tar.zst")
    p = hold("airgap", "bundle", zout, ref)
    note = f"note: {zout} is zstd compressed: for containerd's ctr, decompress it on the " \
           f"way: zstd -dc {zout} | ctr images import -"
    assert note in p.stderr.decode()
    with containerd_daemon() as ctd:
        assert ctd.ctr("images", "import", zout, check=False).returncode != 0
        plain = subprocess.run(["zstd", "-dc", zout], check=True, capture_output=True).stdout
        ctd.ctr("images", "import", "-", input=plain)
        assert ref in ctd.ctr("images", "ls", "-q").stdout.decode().split()
        ctd.ctr("images", "rm", ref)
        ctd.ctr("images", "import", out)
        assert ref in ctd.ctr("images", "ls", "-q").stdout.decode().split()
        ctd.ctr("images", "check")
    other = str(tmp_path / "other-root")
    os.makedirs(other)
    res = json.loads(run_hold(other, "airgap", "seed", "--format", "json", out).stdout)
    assert res["items"][0]["status"] == "seeded" and res["items"][0]["new"] == [ref]
    img = json.loads(run_hold(other, "images", "inspect", ref).stdout)
    assert img["labels"]["io.cri-containerd.pinned"] == "pinned"
    assert all(m["unpacked"] for m in img["manifests"] if not m["attestation"])


def test_seed_a_directory_once_then_skip_it(hold, root, src, tmp_path, monkeypatch):
    host = src["reg"].host
    d = tmp_path / "images"
    d.mkdir()
    bundle = str(tmp_path / "b.tar")
    hold("airgap", "bundle", bundle, f"{host}/team/app:1")
    data = open(bundle, "rb").read()
    (d / "app.tar.gz").write_bytes(gzip.compress(data))
    (d / "app2.tar.bz2").write_bytes(bz2.compress(data))
    if shutil.which("lz4"):
        subprocess.run(["lz4", "-q", bundle, str(d / "app3.tar.lz4")], check=True)
    (d / "pull.txt").write_text(f"# refs to pre-pull\n{host}/team/other:1\n\n")
    (d / "README.md").write_text("not an image")
    res = jhold(hold, "airgap", "seed", str(d))
    status = {os.path.basename(i["source"]): i["status"] for i in res["items"]}
    assert status["README.md"] == "ignored" and status["pull.txt"] == "seeded"
    assert status["app.tar.gz"] == status["app2.tar.bz2"] == "seeded"
    names = hold("images", "ls", "-q").stdout.decode().split()
    assert sorted(names) == sorted([f"{host}/team/app:1", f"{host}/team/other:1"])
    # Again: every archive is skipped without being read; the list pulls nothing.
    res = jhold(hold, "airgap", "seed", str(d))
    status = {os.path.basename(i["source"]): i["status"] for i in res["items"]}
    assert {status[k] for k in status if k != "README.md"} == {"unchanged"}
    assert b"clean" in hold("fsck").stdout
    # A bad line names its file and line (one of many in a directory).
    (d / "typo.txt").write_text("# ok\nnot a ref!!\n")
    p = hold("airgap", "seed", str(d), check=False)
    assert p.returncode == 2
    assert f"reference list {d}/typo.txt line 2: image reference 'not a ref!!'" in \
        p.stderr.decode()
    (d / "typo.txt").unlink()
    # Proof that "unchanged" is not read: an importer that fails if called.
    from cargohold.fetch.registry import Registry
    from cargohold.fetch.seed import Seeder
    from cargohold.images import importer
    from tests.peers import open_client

    def boom(*a, **kw):
        raise AssertionError("an unchanged archive was read")

    monkeypatch.setattr(importer.Importer, "import_archive", boom)
    c = open_client(root)
    try:
        with Registry() as reg:
            r = Seeder(c, reg).seed([str(d)])
        assert {i.status for i in r.items if i.kind == "archive"} == {"unchanged"}
        # A touched archive is read again (k3s #14284: same size, newer mtime).
        os.utime(d / "app.tar.gz", ns=(10**18, 10**18))
        with Registry() as reg, pytest.raises(AssertionError, match="unchanged archive"):
            Seeder(c, reg).seed([str(d / "app.tar.gz")])
    finally:
        c.close()


def test_seeded_images_are_pinned(hold, src, tmp_path):
    ref = f"{src['reg'].host}/team/other:1"
    bundle = str(tmp_path / "o.tar")
    hold("airgap", "bundle", bundle, ref)
    hold("images", "rm", ref)  # pulled by bundle: not pinned
    hold("airgap", "seed", bundle)
    p = hold("images", "rm", ref, check=False)
    assert p.returncode == 1 and b"pinned" in p.stderr and b"--force" in p.stderr
    hold("images", "rm", "--force", ref)
    assert hold("images", "ls", "-q").stdout.decode().strip() == ""
    # A reference list pins what it names even when the store had it already (pulled by
    # hand, so not pinned): nothing is fetched, but cleanup may no longer take it.
    hold("images", "pull", "--label", "team=blue", ref)
    listing = tmp_path / "refs.txt"
    listing.write_text(f"{ref}\n")
    res = jhold(hold, "airgap", "seed", str(listing))
    assert res["items"][0]["status"] == "unchanged" and res["items"][0]["new"] == []
    labels = json.loads(hold("images", "inspect", ref).stdout)["labels"]
    assert labels == {"team": "blue", "io.cri-containerd.pinned": "pinned"}
    p = hold("images", "rm", ref, check=False)
    assert p.returncode == 1 and b"pinned" in p.stderr


def test_seed_push_then_containerd_pulls_through_the_default_mirror(hold, src, dst, tmp_path):
    from tests.peers import containerd_daemon

    hold("images", "pull", f"{src['reg'].host}/team/app:1")
    hold("images", "tag", f"{src['reg'].host}/team/app:1", "example.com/team/app:1")
    bundle = str(tmp_path / "ex.tar.zst")
    hold("airgap", "bundle", bundle, "example.com/team/app:1")
    res = jhold(hold, "airgap", "seed", "--push", dst.host, "--plain-http", bundle)
    assert res["pushed"] == {"example.com/team/app:1": f"{dst.host}/team/app:1"}
    hosts = str(tmp_path / "certs.d")
    out = hold("airgap", "mirror-config", "--hosts-dir", hosts, "--plain-http",
               dst.host).stdout.decode().split()
    assert out == [f"{hosts}/_default/hosts.toml"]
    # hold itself reads it (and explains it) ...
    explain = hold("hosts", "explain", "--hosts-dir", hosts, "example.com/team/app:1")
    assert f"1. http://{dst.host}/v2  mirror  pull,resolve" in explain.stdout.decode()
    with containerd_daemon() as ctd:
        # ... and so does a stock containerd: example.com is never reached (no network).
        ctd.ctr("images", "pull", "--hosts-dir", hosts, "example.com/team/app:1")
        assert "example.com/team/app:1" in ctd.ctr("images", "ls", "-q").stdout.decode()
    # A second mirror-config leaves our own file replaceable, another file is protected.
    # Without --plain-http, a loopback registry is still plain HTTP (where seed pushed).
    hold("airgap", "mirror-config", "--hosts-dir", hosts, dst.host)
    with open(f"{hosts}/_default/hosts.toml") as f:
        assert f'[host."http://{dst.host}"]' in f.read()
    os.makedirs(f"{hosts}/mine")
    with open(f"{hosts}/_default/hosts.toml", "w") as f:
        f.write('server = "https://elsewhere"\n')
    p = hold("airgap", "mirror-config", "--hosts-dir", hosts, dst.host, check=False)
    assert p.returncode == 1 and b"--force" in p.stderr


def test_colliding_paths_are_refused_or_prefixed(hold, src, dst, tmp_path):
    from tests.peers import containerd_daemon

    host = src["reg"].host
    hold("images", "pull", f"{host}/team/app:1")
    hold("images", "pull", f"{host}/team/other:1")
    hold("images", "tag", f"{host}/team/app:1", "a.example/team/app:1")
    hold("images", "tag", f"{host}/team/other:1", "b.example/team/app:1")
    bundle = str(tmp_path / "two.tar")
    hold("airgap", "bundle", bundle, "a.example/team/app:1", "b.example/team/app:1")
    p = hold("airgap", "seed", "--push", dst.host, bundle, check=False)
    err = p.stderr.decode()
    assert p.returncode == 1
    assert "a.example/team/app:1" in err and "b.example/team/app:1" in err
    assert "--prefix-host" in err
    res = jhold(hold, "airgap", "seed", "--push", dst.host, "--prefix-host", bundle)
    assert res["pushed"] == {"a.example/team/app:1": f"{dst.host}/a.example/team/app:1",
                             "b.example/team/app:1": f"{dst.host}/b.example/team/app:1"}
    hosts = str(tmp_path / "certs.d")
    files = hold("airgap", "mirror-config", "--hosts-dir", hosts, "--plain-http",
                 "--prefix-host", "a.example", "--prefix-host", "b.example",
                 dst.host).stdout.decode().split()
    assert f"{hosts}/b.example/hosts.toml" in files
    other = str(tmp_path / "fresh")
    os.makedirs(other)
    from tests.conftest import run_hold

    got = json.loads(run_hold(other, "images", "pull", "--hosts-dir", hosts, "--no-unpack",
                              "--format", "json", "b.example/team/app:1").stdout)
    assert got["target"]["digest"] == src["b"]["manifest"]
    assert got["endpoint"] == f"http://{dst.host}/v2/b.example"
    with containerd_daemon() as ctd:
        ctd.ctr("images", "pull", "--hosts-dir", hosts, "a.example/team/app:1")
        ls = ctd.ctr("images", "ls").stdout.decode()
        assert src["a"]["manifest"] in ls


def test_bundle_all_platforms_fetches_the_missing_ones(hold, src, tmp_path):
    import tarfile

    ref = f"{src['reg'].host}/team/multi:3"
    hold("images", "pull", ref)  # this host's platform only
    out = str(tmp_path / "multi.tar.gz")
    res = jhold(hold, "airgap", "bundle", "--all-platforms", out, ref)
    assert res["pulled"] == [ref]  # present, but not every platform: fetched first
    with tarfile.open(out) as t:
        names = set(t.getnames())
        index = json.load(t.extractfile("index.json"))
    assert index["manifests"][0]["digest"] == src["multi"]["index"]
    for m in src["multi"]["manifests"]:
        assert f"blobs/sha256/{m[7:]}" in names
