"""Interop with real peers: containerd 1.6 (``ctr``) both ways, and skopeo reading our exports.

One private containerd per module (its own root, state and socket under /tmp); every test that
mounts unmounts in teardown.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os

import pytest
from tests.conftest import run_hold
from tests.peers import (
    build_image,
    make_tree,
    need,
    open_client,
    run,
)

pytestmark = pytest.mark.peer

IMAGE = "example.com/interop/app:1"


@pytest.fixture
def image_root(tmp_path, root):
    """A root holding a two-layer image (a tree, then changes, deletions and additions)."""
    a = make_tree(str(tmp_path / "a"), big=300_000)
    b = tmp_path / "b"
    os.system(f"cp -a {a} {b}")  # noqa: S605 - fixed test paths
    (b / "etc" / "hello.txt").unlink()
    (b / "etc" / "hardlink.txt").unlink()
    (b / "added.txt").write_text("layer two\n")
    c = open_client(root)
    try:
        build_image(c, IMAGE, [a, str(b)])
    finally:
        c.close()
    return root


def _tree(path: str) -> dict[str, tuple]:
    """Path -> (type, mode, uid, gid, size, link target, sha256) of every entry."""
    out = {}
    for dirpath, dirs, files in os.walk(path):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            link = os.readlink(p) if os.path.islink(p) else ""
            digest = ""
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            rel = os.path.relpath(p, path)
            out[rel] = (st.st_mode, st.st_uid, st.st_gid,
                        st.st_size if not os.path.isdir(p) else 0, link, digest)
    return out


def test_ctr_imports_our_export_and_mounts_the_same_tree(ctrd, image_root, tmp_path, targets):
    archive = str(tmp_path / "ours.tar")
    run_hold(image_root, "images", "export", archive, IMAGE)
    ctrd.ctr("images", "import", archive)
    listed = ctrd.ctr("images", "ls", "-q").stdout.decode().split()
    assert IMAGE in listed
    theirs, ours = str(tmp_path / "ctr-mnt"), str(tmp_path / "hold-mnt")
    os.makedirs(theirs)
    targets += [theirs, ours]
    chain = ctrd.ctr("images", "mount", IMAGE, theirs).stdout.decode().split()[0]
    try:
        out = run_hold(image_root, "images", "mount", IMAGE, ours).stdout.decode().split()
        assert out[0] == chain  # the same diffIDs, so the same chain ID
        with open(os.path.join(theirs, "added.txt")) as f:
            assert f.read() == "layer two\n"
        assert not os.path.exists(os.path.join(theirs, "etc", "hello.txt"))
        assert _tree(theirs) == _tree(ours)
        # containerd sees the committed chain as its own snapshots too.
        snaps = ctrd.ctr("snapshots", "ls").stdout.decode()
        assert chain in snaps
    finally:
        ctrd.ctr("images", "unmount", "--rm", theirs, check=False)
        run_hold(image_root, "images", "unmount", ours, check=False)


def test_ctr_export_imports_here_and_round_trips_byte_for_byte(ctrd, image_root, tmp_path,
                                                                targets):
    need("skopeo")
    first = str(tmp_path / "first.tar")
    run_hold(image_root, "images", "export", first, IMAGE)
    ctrd.ctr("images", "import", first)
    from_ctr = str(tmp_path / "from-ctr.tar")
    ctrd.ctr("images", "export", from_ctr, IMAGE)
    fresh = str(tmp_path / "fresh")
    os.makedirs(fresh)
    run_hold(fresh, "images", "import", from_ctr)
    ours = str(tmp_path / "mnt")
    targets.append(ours)
    run_hold(fresh, "images", "mount", IMAGE, ours)
    try:
        with open(os.path.join(ours, "added.txt")) as f:
            assert f.read() == "layer two\n"
        assert os.path.getsize(os.path.join(ours, "big.bin")) == 300_000
    finally:
        run_hold(fresh, "images", "unmount", ours)
    # export -> ctr import -> ctr export -> our import -> export: the same bytes.
    second = str(tmp_path / "second.tar")
    run_hold(fresh, "images", "export", second, IMAGE)
    assert filecmp.cmp(first, second, shallow=False)
    # And our own import of our own export, once more.
    third_root = str(tmp_path / "third")
    os.makedirs(third_root)
    run_hold(third_root, "images", "import", second)
    third = str(tmp_path / "third.tar")
    run_hold(third_root, "images", "export", third, IMAGE)
    assert filecmp.cmp(first, third, shallow=False)


def test_skopeo_reads_our_export_as_oci_and_docker_archive(image_root, tmp_path, targets):
    need("skopeo")
    archive = str(tmp_path / "ours.tar")
    run_hold(image_root, "images", "export", archive, IMAGE)
    oci = json.loads(_skopeo("inspect", f"oci-archive:{archive}:1"))
    assert len(oci["Layers"]) == 2
    # The docker side (manifest.json): found by its RepoTag, layers named by diffID.
    docker = json.loads(_skopeo("inspect", f"docker-archive:{archive}:{IMAGE}"))
    assert docker["Name"] == "example.com/interop/app"
    c = open_client(image_root)
    try:
        man = json.loads(c.content.reader(oci["Digest"]).read())
        cfg = json.loads(c.content.reader(man["config"]["digest"]).read())
    finally:
        c.close()
    assert docker["Layers"] == cfg["rootfs"]["diff_ids"]
    dest = str(tmp_path / "ocidir")
    _skopeo("copy", f"oci-archive:{archive}:1", f"oci:{dest}:copy")
    c = open_client(image_root)
    try:
        for name in os.listdir(os.path.join(dest, "blobs", "sha256")):
            with open(os.path.join(dest, "blobs", "sha256", name), "rb") as f:
                theirs = f.read()
            with c.content.reader("sha256:" + name) as r:
                assert r.read() == theirs
    finally:
        c.close()

    # umoci unpacks the copy into the same tree we mount.
    need("umoci")
    bundle = str(tmp_path / "bundle")
    run("umoci", "unpack", "--image", f"{dest}:copy", bundle)
    ours = str(tmp_path / "mnt")
    targets.append(ours)
    run_hold(image_root, "images", "mount", IMAGE, ours)
    try:
        assert _tree(os.path.join(bundle, "rootfs")) == _tree(ours)
    finally:
        run_hold(image_root, "images", "unmount", ours)


def _skopeo(*args: str) -> bytes:
    return run("skopeo", "--insecure-policy", *args).stdout
