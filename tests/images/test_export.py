"""``hold images export``: layout, determinism, compression, platforms, and damaged stores."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import isal.igzip as igzip
import pytest
import zstandard
from tests.conftest import run_hold
from tests.peers import make_tree

from cargohold.errors import IntegrityError, NotFound
from cargohold.images import exporter, platforms
from cargohold.images import mediatypes as mt
from cargohold.images.exporter import ExportOptions, MissingContent, export
from cargohold.images.manifest import child_gc_labels
from cargohold.images.pack import PackOptions, canonical_json, pack, write_blob
from cargohold.metadata import images as image_records
from cargohold.metadata.images import Image
from cargohold.types import Descriptor

HOST = platforms.default()
OTHER = platforms.parse("linux/arm64" if HOST.architecture != "arm64" else "linux/amd64")


@pytest.fixture
def packed(client, tmp_path):
    src = make_tree(str(tmp_path / "src"))
    return pack(client, src, "docker.io/library/tool:1")


def _members(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for m in t.getmembers():
            f = t.extractfile(m) if m.isfile() else None
            out[m.name] = (m, f.read() if f else None)
    return out


def test_layout_records_and_docker_manifest(client, packed, tmp_path):
    out = tmp_path / "img.tar"
    export(client, str(out), ["docker.io/library/tool:1"])
    data = out.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        names = t.getnames()
        infos = t.getmembers()
    assert names == sorted(names) and len(names) == len(set(names))
    assert all(i.mtime == 0 and i.uid == 0 and i.gid == 0 for i in infos)
    m = _members(data)
    assert m["oci-layout"][1] == b'{"imageLayoutVersion":"1.0.0"}'
    assert m["oci-layout"][0].mode == 0o444 and m["blobs"][0].isdir()
    for name, (info, body) in m.items():
        if name.startswith("blobs/sha256/") and info.isfile():
            assert hashlib.sha256(body).hexdigest() == name.rsplit("/", 1)[1]
            assert info.mode == 0o444
    index = json.loads(m["index.json"][1])
    (entry,) = index["manifests"]
    assert entry["digest"] == packed.manifest.digest
    assert entry["annotations"] == {"io.containerd.image.name": "docker.io/library/tool:1",
                                    "org.opencontainers.image.ref.name": "1"}
    (dm,) = json.loads(m["manifest.json"][1])
    assert dm["RepoTags"] == ["tool:1"]
    assert dm["Config"] == "blobs/sha256/" + packed.config.digest[7:]
    assert dm["Layers"] == ["blobs/sha256/" + packed.layer.digest[7:]]
    assert json.loads(m["repositories"][1]) == {"tool": {"1": packed.config.digest[7:]}}


def test_export_is_deterministic_and_compressed_forms_agree(client, packed, tmp_path):
    paths = {n: tmp_path / n for n in ("a.tar", "b.tar", "c.tar.gz", "d.tar.zst")}
    for p in paths.values():
        export(client, str(p), ["docker.io/library/tool:1"])
    plain = paths["a.tar"].read_bytes()
    assert plain == paths["b.tar"].read_bytes()
    assert igzip.decompress(paths["c.tar.gz"].read_bytes()) == plain
    assert zstandard.ZstdDecompressor().decompressobj().decompress(
        paths["d.tar.zst"].read_bytes()) == plain
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_cli_stdout_matches_file_and_skip_manifest_json(hold, root, tmp_path):
    src = make_tree(str(tmp_path / "src"))
    hold("images", "pack", src, "example.com/x:1")
    f = tmp_path / "x.tar"
    hold("images", "export", str(f), "example.com/x:1")
    p = hold("images", "export", "-", "example.com/x:1")
    assert p.stdout == f.read_bytes()
    hold("images", "export", "--skip-manifest-json", str(f), "example.com/x:1")
    names = set(_members(f.read_bytes()))
    assert "manifest.json" not in names and "repositories" not in names
    missing = hold("images", "export", str(tmp_path / "y.tar"), "nope:1", check=False)
    assert missing.returncode == 1 and b"image nope:1: not found" in missing.stderr
    assert not (tmp_path / "y.tar").exists()


def _two_platform_image(client, tmp_path, *, drop_other_layer: bool, attestation: bool = False
                        ) -> tuple[Descriptor, Descriptor, Descriptor]:
    """An index of HOST (complete) and OTHER (its layer gone unless told otherwise)."""
    src = make_tree(str(tmp_path / "src"))
    host = pack(client, src, "tmp-host")
    os.makedirs(tmp_path / "src2", exist_ok=True)
    (tmp_path / "src2" / "only-other").write_text("other\n")
    other = pack(client, str(tmp_path / "src2"), "tmp-other", PackOptions(platform=OTHER))
    entries = [Descriptor(mt.OCI_MANIFEST, host.manifest.digest, host.manifest.size,
                          platform=HOST),
               Descriptor(mt.OCI_MANIFEST, other.manifest.digest, other.manifest.size,
                          platform=OTHER)]
    if attestation:
        # A BuildKit-style attestation whose blob was never fetched: never an error.
        ghost = "sha256:" + "ab" * 32
        entries.append(Descriptor(mt.OCI_MANIFEST, ghost, 123,
                                  platform=platforms.parse("unknown/unknown")))
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
           "manifests": [e.to_json() for e in entries]}
    idx = write_blob(client.content, canonical_json(doc), mt.OCI_INDEX,
                     child_gc_labels(Descriptor(mt.OCI_INDEX, "", 0), entries[:2]))
    with client.db.update() as tx:
        image_records.create(tx, client.namespace, Image("example.com/multi:1", idx))
        image_records.delete(tx, client.namespace, "tmp-host")
        image_records.delete(tx, client.namespace, "tmp-other")
    if drop_other_layer:
        client.content.delete(other.layer.digest)
    return idx, host.manifest, other.layer


def test_default_skips_missing_platform_but_requested_one_fails(client, tmp_path):
    idx, host_manifest, other_layer = _two_platform_image(client, tmp_path,
                                                          drop_other_layer=True,
                                                          attestation=True)
    res = export(client, str(tmp_path / "a.tar"), ["example.com/multi:1"])
    names = set(_members((tmp_path / "a.tar").read_bytes()))
    assert f"blobs/sha256/{idx.digest[7:]}" in names
    assert f"blobs/sha256/{host_manifest.digest[7:]}" in names
    assert f"blobs/sha256/{other_layer.digest[7:]}" not in names
    assert res.plan.notes == []  # a platform nobody asked for is not even a note
    # Asked for: the other platform by name, or every platform.
    for opts in (ExportOptions(platforms=[OTHER]), ExportOptions(all_platforms=True)):
        with pytest.raises(MissingContent) as ei:
            export(client, str(tmp_path / "b.tar"), ["example.com/multi:1"], opts)
        msg = str(ei.value)
        assert other_layer.digest in msg and str(OTHER) in msg
        assert "pull or import that platform" in ei.value.hint
        assert f"--platform {HOST}" in ei.value.hint
        assert not (tmp_path / "b.tar").exists()


def test_all_platforms_exports_both_and_manifest_json_prefers_host(client, tmp_path):
    idx, host_manifest, other_layer = _two_platform_image(client, tmp_path,
                                                          drop_other_layer=False)
    export(client, str(tmp_path / "a.tar"), ["example.com/multi:1"],
           ExportOptions(all_platforms=True))
    m = _members((tmp_path / "a.tar").read_bytes())
    assert f"blobs/sha256/{other_layer.digest[7:]}" in m
    (dm,) = json.loads(m["manifest.json"][1])
    host_cfg = json.loads(client.content.reader(host_manifest.digest).read())["config"]
    assert dm["Config"] == "blobs/sha256/" + host_cfg["digest"][7:]
    # Only the other platform: manifest.json points at it.
    export(client, str(tmp_path / "b.tar"), ["example.com/multi:1"],
           ExportOptions(platforms=[OTHER]))
    m = _members((tmp_path / "b.tar").read_bytes())
    (dm,) = json.loads(m["manifest.json"][1])
    assert dm["Layers"] == ["blobs/sha256/" + other_layer.digest[7:]]


def test_damaged_blob_is_caught_while_copying(client, packed, tmp_path):
    path = os.path.join(client.root, "content", "blobs", "sha256", packed.layer.digest[7:])
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(data)
    out = tmp_path / "bad.tar"
    with pytest.raises(IntegrityError, match=packed.layer.digest):
        export(client, str(out), ["docker.io/library/tool:1"])
    assert not out.exists()


def test_names_and_errors():
    assert exporter.split_name("docker.io/library/a:1") == ("docker.io/library/a", "1", "")
    assert exporter.split_name("localhost:5000/a") == ("localhost:5000/a", "", "")
    assert exporter.familiar("docker.io/library/a") == "a"
    assert exporter.familiar("docker.io/u/a") == "u/a"
    assert exporter.familiar("ghcr.io/u/a") == "ghcr.io/u/a"
    assert exporter.ref_name("a@sha256:" + "0" * 64) == "a@sha256:" + "0" * 64
    with pytest.raises(NotFound):
        raise MissingContent("x")


def test_default_with_host_blobs_missing_names_the_host(client, tmp_path):
    _idx, host_manifest, _ = _two_platform_image(client, tmp_path, drop_other_layer=False)
    man = json.loads(client.content.reader(host_manifest.digest).read())
    client.content.delete(man["layers"][0]["digest"])
    with pytest.raises(MissingContent) as ei:
        export(client, str(tmp_path / "a.tar"), ["example.com/multi:1"])
    assert str(HOST) in str(ei.value) and man["layers"][0]["digest"] in str(ei.value)
    assert f"--platform {OTHER}" in ei.value.hint


def test_partial_multi_platform_export_import_export_is_byte_identical(client, tmp_path, hold):
    # The containerd complaint: an image with one platform present. Export (host only),
    # import into a fresh root, export again: the same bytes, and the index digest kept.
    idx, _host, _other = _two_platform_image(client, tmp_path, drop_other_layer=True,
                                             attestation=True)
    first = tmp_path / "first.tar"
    export(client, str(first), ["example.com/multi:1"])
    fresh = str(tmp_path / "fresh")
    os.makedirs(fresh)
    run_hold(fresh, "images", "import", "--no-unpack", str(first))
    second = tmp_path / "second.tar"
    run_hold(fresh, "images", "export", str(second), "example.com/multi:1")
    assert first.read_bytes() == second.read_bytes()
    index = json.loads(_members(second.read_bytes())["index.json"][1])
    assert index["manifests"][0]["digest"] == idx.digest


def test_cli_progress_json_reports_each_blob(hold, tmp_path):
    src = make_tree(str(tmp_path / "src"))
    hold("images", "pack", "--no-unpack", src, "p:1")
    p = hold("images", "export", "--progress", "json", str(tmp_path / "p.tar"), "p:1")
    events = [json.loads(line) for line in p.stderr.decode().splitlines() if line.strip()]
    done = [e for e in events if e["event"] == "done"]
    assert len(done) == 3 and all(e["status"] == "done" for e in done)
    assert {e["label"].split()[0] for e in done} == {"manifest", "config", "layer"}


def test_export_xz_writes_xz_that_imports_back(hold, tmp_path):
    import lzma
    import shutil
    import subprocess

    src = make_tree(str(tmp_path / "src"))
    hold("images", "pack", "--no-unpack", src, "example.com/xz:1")
    plain, xz, again = tmp_path / "x.tar", tmp_path / "x.tar.xz", tmp_path / "y.txz"
    for p in (plain, xz, again):
        hold("images", "export", str(p), "example.com/xz:1")
    data = xz.read_bytes()
    assert data.startswith(b"\xfd7zXZ\x00") and data == again.read_bytes()  # deterministic
    assert lzma.decompress(data) == plain.read_bytes()
    if shutil.which("xz"):
        assert subprocess.run(["xz", "--test", str(xz)]).returncode == 0
    fresh = str(tmp_path / "fresh")
    os.makedirs(fresh)
    out = json.loads(run_hold(fresh, "images", "import", "--no-unpack", "--format", "json",
                              str(xz)).stdout)
    assert out["compression"] == "xz"
    assert run_hold(fresh, "images", "ls", "-q").stdout.decode().split() == [
        "example.com/xz:1"]


@pytest.mark.parametrize("name", ["x.tar.bz2", "x.tbz2", "x.tar.lz4", "x.tar.Z"])
def test_export_refuses_a_compression_it_does_not_write(hold, tmp_path, name):
    src = make_tree(str(tmp_path / "src"))
    hold("images", "pack", "--no-unpack", src, "example.com/z:1")
    p = hold("images", "export", str(tmp_path / name), "example.com/z:1", check=False)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert f"export {tmp_path / name}: " in err and "compression is not supported" in err
    assert "hint: name the file .tar, .tar.gz, .tar.zst or .tar.xz" in err
    assert not (tmp_path / name).exists()
