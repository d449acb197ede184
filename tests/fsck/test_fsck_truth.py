"""fsck tells the whole truth: each check (corrupt, size mismatch, stray file, writable blob)
with its repair, and after a corrupt blob is moved aside every image in every namespace that
needs it is reported incomplete until one re-import, in any namespace, heals them all.
Real `hold` processes on real images made with `hold images pack`."""

from __future__ import annotations

import json
import os

import pytest
from tests.conftest import run_hold

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking images needs root")


def fsck(root: str, *args: str) -> tuple[int, dict]:
    p = run_hold(root, "fsck", "--format", "json", *args, check=False)
    return p.returncode, json.loads(p.stdout)


def kinds(report: dict) -> set[tuple[str, str]]:
    return {(p["kind"], p["subject"]) for p in report["problems"]}


@pytest.fixture
def image(root, tmp_path):
    """An image localhost/app:1 in namespaces a and b, and its archive."""
    src = tmp_path / "tree"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "data").write_bytes(os.urandom(200_000))
    run_hold(root, "-n", "a", "images", "pack", str(src), "localhost/app:1")
    archive = str(tmp_path / "app.tar")
    run_hold(root, "-n", "a", "images", "export", archive, "localhost/app:1")
    run_hold(root, "-n", "b", "images", "import", archive)
    inspect = json.loads(run_hold(root, "-n", "a", "images", "inspect",
                                  "localhost/app:1").stdout)
    return archive, inspect


def layer_digest(root: str) -> str:
    """The biggest blob: the layer."""
    d = os.path.join(root, "content", "blobs", "sha256")
    name = max(os.listdir(d), key=lambda n: os.path.getsize(os.path.join(d, n)))
    return f"sha256:{name}"


def blob_file(root: str, digest: str) -> str:
    return os.path.join(root, "content", "blobs", *digest.split(":"))


def corrupt(path: str) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))
    os.chmod(path, 0o444)


def complete(root: str, ns: str) -> bool:
    out = run_hold(root, "-n", ns, "images", "check").stdout.decode()
    return "missing" not in out and "incomplete" not in out


def test_corrupt_blob_is_reported_for_every_image_until_a_reimport_heals_all(root, image):
    archive, _ = image
    layer = layer_digest(root)
    corrupt(blob_file(root, layer))
    rc, rep = fsck(root)
    assert rc == 1
    assert ("corrupt", layer) in kinds(rep)
    need = {p["subject"] for p in rep["problems"] if p["kind"] == "incomplete"}
    assert need == {"namespace a image localhost/app:1", "namespace b image localhost/app:1"}
    assert all(layer in p["message"] and "importing or pulling the image again" in p["message"]
               for p in rep["problems"] if p["kind"] == "incomplete")

    rc, rep = fsck(root, "--repair")
    assert rc == 1, "a store with images missing a blob is never clean"
    assert [p for p in rep["problems"] if p["kind"] == "corrupt"][0]["repaired"]
    assert not os.path.exists(blob_file(root, layer))
    aside = os.listdir(os.path.join(root, "content", "corrupt"))
    assert len(aside) == 1 and aside[0].startswith(layer.replace(":", "-"))
    for ns in ("a", "b"):
        assert not complete(root, ns)

    rc, rep = fsck(root)  # a later run still tells the truth
    assert rc == 1
    msgs = [p["message"] for p in rep["problems"] if p["kind"] == "incomplete"]
    assert len(msgs) == 2 and all("moved aside as corrupt" in m and "a, b" in m for m in msgs)

    run_hold(root, "-n", "a", "images", "import", archive)  # one namespace re-imports
    rc, rep = fsck(root)
    assert rc == 0, rep
    for ns in ("a", "b"):
        assert complete(root, ns)
    assert json.loads(run_hold(root, "-n", "b", "content", "ls", "--format",
                               "json").stdout)
    digests_b = {x["digest"] for x in json.loads(
        run_hold(root, "-n", "b", "content", "ls", "--format", "json").stdout)}
    assert layer in digests_b


def test_size_mismatch_is_reported_and_repaired(root, image):
    layer = layer_digest(root)
    import lmdb
    env = lmdb.open(os.path.join(root, "metadata"), map_size=1 << 30)
    with env.begin(write=True) as txn:
        txn.put(b"v1\x00a\x00content\x00blob\x00" + layer.encode() + b"\x00size", b"7")
    env.close()
    rc, rep = fsck(root)
    assert rc == 1
    [p] = [p for p in rep["problems"] if p["kind"] == "size"]
    assert p["subject"] == f"namespace a content {layer}" and "record says 7 bytes" in p["message"]
    rc, rep = fsck(root, "--repair")
    assert rc == 0 and [p for p in rep["problems"] if p["kind"] == "size"][0]["repaired"]
    assert fsck(root)[0] == 0
    info = json.loads(run_hold(root, "-n", "a", "content", "ls", "--format", "json").stdout)
    assert {x["digest"]: x["size"] for x in info}[layer] == os.path.getsize(
        blob_file(root, layer))


def test_stray_file_is_reported_and_removed(root, image):
    stray = os.path.join(root, "content", "blobs", "sha256", "not-a-digest")
    with open(stray, "w") as f:
        f.write("junk")
    rc, rep = fsck(root)
    assert rc == 1 and ("stray", stray) in kinds(rep)
    rc, rep = fsck(root, "--repair")
    assert rc == 0 and not os.path.exists(stray)
    assert fsck(root)[0] == 0


def test_writable_blob_is_reported_and_made_read_only(root, image):
    layer = layer_digest(root)
    os.chmod(blob_file(root, layer), 0o644)
    rc, rep = fsck(root)
    assert rc == 1 and ("writable", layer) in kinds(rep)
    rc, rep = fsck(root, "--repair")
    assert rc == 0
    assert os.stat(blob_file(root, layer)).st_mode & 0o777 == 0o444
    assert fsck(root)[0] == 0


def test_a_corrupt_blob_no_image_needs_is_forgotten_after_repair(root, image, tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"hello " * 1000)
    run_hold(root, "-n", "a", "leases", "create", "--id", "keep")
    digest = run_hold(root, "-n", "a", "--lease", "keep", "content", "ingest", "x",
                      input=f.read_bytes()).stdout.decode().split()[-1]
    corrupt(blob_file(root, digest))
    rc, rep = fsck(root, "--repair")
    assert rc == 0, rep  # nothing needs it: moved aside, nothing incomplete
    assert ("corrupt", digest) in kinds(rep)
    assert any(digest in n and "no image needs it" in n and "forgotten" in n
               for n in rep["notes"]), rep
    rc, rep = fsck(root)
    assert rc == 0 and not any(digest in n for n in rep["notes"])
