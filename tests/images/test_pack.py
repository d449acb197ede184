"""``hold images pack``: reproducible one-layer images from a directory, GC-safe records."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile

import isal.igzip as igzip
import pytest
from tests.peers import make_tree

from cargohold.images import mediatypes as mt
from cargohold.images import platforms
from cargohold.images.pack import PackOptions, pack
from cargohold.metadata import images as image_records
from cargohold.types import LABEL_GC_REF_CONTENT, LABEL_UNCOMPRESSED


def _blob(client, digest: str) -> bytes:
    with client.content.reader(digest) as r:
        return r.read()


def test_pack_writes_manifest_config_layer_and_record(client, tmp_path):
    src = make_tree(str(tmp_path / "src"))
    res = pack(client, src, "example.com/tools:1")
    assert res.image.target.media_type == mt.OCI_MANIFEST
    man = json.loads(_blob(client, res.manifest.digest))
    assert man["config"]["digest"] == res.config.digest
    assert [layer["digest"] for layer in man["layers"]] == [res.layer.digest]
    cfg = json.loads(_blob(client, res.config.digest))
    host = platforms.default()
    assert (cfg["os"], cfg["architecture"]) == (host.os, host.architecture)
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": [res.diff_id]}
    assert cfg["created"] == "1970-01-01T00:00:00Z"
    plain = igzip.decompress(_blob(client, res.layer.digest))
    assert "sha256:" + hashlib.sha256(plain).hexdigest() == res.diff_id
    with tarfile.open(fileobj=io.BytesIO(plain)) as t:
        members = {m.name: m for m in t.getmembers()}
    # Sorted order: hardlink.txt comes first and carries the data; hello.txt links to it.
    assert members["etc/hardlink.txt"].isfile()
    assert members["etc/hello.txt"].islnk()
    assert members["usr/bin/tool"].mode & 0o4000
    assert members["usr/hello-link"].linkname == "../etc/hello.txt"
    # GC labels: the manifest keeps its config and layer; the layer knows its diffID.
    labels = client.content.info(res.manifest.digest).labels
    assert labels[f"{LABEL_GC_REF_CONTENT}.config"] == res.config.digest
    assert labels[f"{LABEL_GC_REF_CONTENT}.l.0"] == res.layer.digest
    assert client.content.info(res.layer.digest).labels[LABEL_UNCOMPRESSED] == res.diff_id
    with client.db.view() as tx:
        assert image_records.get(tx, "default", "example.com/tools:1").target.digest \
            == res.manifest.digest
    assert client.leases.list() == []  # the pack lease is gone


def test_pack_is_reproducible_across_runs_and_paths(client, tmp_path):
    src = make_tree(str(tmp_path / "src"))
    a = pack(client, src, "r:1")
    b = pack(client, src, "r:2")
    copy = tmp_path / "elsewhere"
    subprocess.run(["cp", "-a", src, str(copy)], check=True)  # keeps hardlinks and times
    c = pack(client, str(copy), "r:3")
    assert a.manifest.digest == b.manifest.digest
    assert a.layer.digest == c.layer.digest and a.manifest.digest == c.manifest.digest


def test_source_date_epoch_sets_created(client, tmp_path, monkeypatch):
    src = make_tree(str(tmp_path / "src"))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    res = pack(client, src, "t:sde")
    cfg = json.loads(_blob(client, res.config.digest))
    assert cfg["created"] == "2023-11-14T22:13:20Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "soon")
    with pytest.raises(Exception, match="SOURCE_DATE_EPOCH"):
        pack(client, src, "t:bad")


def test_index_platform_and_config_options(client, tmp_path):
    src = make_tree(str(tmp_path / "src"))
    opts = PackOptions(platform=platforms.parse("linux/arm64"), index=True,
                       entrypoint=["/bin/sh", "-c"], cmd=["echo hi"], env=["A=1"],
                       workdir="/etc", compression="zstd", labels={"team": "infra"})
    res = pack(client, src, "multi:1", opts)
    assert res.image.target.media_type == mt.OCI_INDEX
    assert res.image.labels == {"team": "infra"}
    idx = json.loads(_blob(client, res.image.target.digest))
    entry = idx["manifests"][0]
    assert entry["digest"] == res.manifest.digest
    assert entry["platform"] == {"os": "linux", "architecture": "arm64"}
    assert client.content.info(res.image.target.digest).labels == {
        f"{LABEL_GC_REF_CONTENT}.m.0": res.manifest.digest}
    cfg = json.loads(_blob(client, res.config.digest))
    assert cfg["architecture"] == "arm64"
    assert cfg["config"] == {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"],
                             "Env": ["A=1"], "WorkingDir": "/etc"}
    assert res.layer.media_type == mt.OCI_LAYER_ZSTD


def test_gc_keeps_a_packed_image_and_cli_reports(hold, root, tmp_path):
    src = make_tree(str(tmp_path / "src"))
    out = json.loads(hold("images", "pack", "--format", "json", src, "cli:1").stdout)
    hold("gc")
    listed = hold("content", "ls", "-q").stdout.decode().split()
    for d in (out["manifest"], out["config"], out["layer"]["digest"]):
        assert d in listed
    # The same directory again: the same digest.
    again = json.loads(hold("images", "pack", "--format", "json", src, "cli:2").stdout)
    assert again["target"]["digest"] == out["target"]["digest"]


def test_pack_missing_directory_is_a_clear_error(hold, tmp_path):
    p = hold("images", "pack", str(tmp_path / "nope"), "x:1", check=False)
    assert p.returncode != 0
    assert b"not found" in p.stderr or b"does not exist" in p.stderr


def test_pack_unpacks_for_the_host_unless_told_not_to(client, tmp_path):
    src = make_tree(str(tmp_path / "src"))
    res = pack(client, src, "u:1")
    assert res.chain_id == res.diff_id  # one layer: the chain ID is its diffID
    assert client.snapshotter().stat(res.chain_id).kind.name == "COMMITTED"
    other = pack(client, src, "u:2", PackOptions(unpack=False, compression="none"))
    assert other.chain_id == ""
    foreign = pack(client, src, "u:3", PackOptions(platform=platforms.parse("linux/s390x")))
    assert foreign.chain_id == ""
