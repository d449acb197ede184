"""A hardlink in an upper layer to a file only a lower layer has (OCI image-spec #1204).

containerd 1.6 fails such an image with a raw ``link … no such file or directory``; hold
copies the lower file up into the upper layer (confined, never through a lower symlink) and
links to the copy. The image is real: two gzip layers in an OCI layout, checked against
``umoci unpack`` (which applies the layers onto one directory), imported with ``hold images
import`` on overlayfs and on native.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile

import isal.igzip as igzip
import pytest
from tests.images.imagekit import merged_tree, put, sh, tar_layout, tree, tree_diff
from tests.peers import open_client

pytestmark = pytest.mark.peer

NAME = "example.com/hardlink/lower:1"
TOOL = b"\x7fELF a tool from layer one\n" * 100


def _layer(entries) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in entries:
            ti.mtime = 1_600_000_000
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes | None = None,
           mode: int = 0o644, link: str = "", xattrs: dict | None = None):  # noqa: ANN202
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.linkname = kind, mode, link
    ti.size = len(data) if data is not None else 0
    if xattrs:
        ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    return ti, data


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """An OCI layout whose layer 2 holds only hardlinks to layer 1's files, and its tar."""
    if not shutil.which("umoci") or os.geteuid() != 0:
        pytest.skip("needs umoci and root (tools/setup installs umoci)")
    w = str(tmp_path_factory.mktemp("hardlink"))
    lay = os.path.join(w, "layout")
    os.makedirs(os.path.join(lay, "blobs", "sha256"))
    one = _layer([_entry("bin", tarfile.DIRTYPE, mode=0o755),
                  _entry("bin/tool", data=TOOL, mode=0o4755, xattrs={"user.note": "kept"}),
                  _entry("etc", tarfile.DIRTYPE, mode=0o755),
                  _entry("etc/conf", data=b"conf\n")])
    two = _layer([_entry("bin/tool2", tarfile.LNKTYPE, link="bin/tool"),
                  _entry("usr", tarfile.DIRTYPE, mode=0o755),
                  _entry("usr/conf", tarfile.LNKTYPE, link="etc/conf"),
                  _entry("etc/conf.new", data=b"new\n")])
    layers = [(put(lay, igzip.compress(x)), len(igzip.compress(x)),
               "sha256:" + hashlib.sha256(x).hexdigest()) for x in (one, two)]
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": [x[2] for x in layers]},
                      "config": {}}).encode()
    man = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(lay, cfg), "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d,
                    "size": n} for d, n, _ in layers]}).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(lay, man),
        "size": len(man), "annotations": {"io.containerd.image.name": NAME,
                                          "org.opencontainers.image.ref.name": "1"}}]}
    with open(os.path.join(lay, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(lay, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    sh("umoci", "unpack", "--image", f"{lay}:1", os.path.join(w, "ref"))
    return {"tar": tar_layout(lay, os.path.join(w, "image.tar")),
            "ref": os.path.join(w, "ref", "rootfs")}


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
def test_hardlink_to_a_lower_file_is_copied_up_and_linked(hold, root, image, snapshotter):
    hold("--snapshotter", snapshotter, "images", "import", "--progress", "none", image["tar"])
    c = open_client(root)
    try:
        sn = c.snapshotter(snapshotter)
        tops = []
        sn.walk(lambda i: tops.append(i.name) if not _has_child(sn, i.name) else None)
        [top] = tops
        got = merged_tree(c, top) if snapshotter == "overlayfs" else _native_tree(sn, top)
        ref = tree(image["ref"])
        assert ref["bin/tool2"][8] == "bin/tool"  # umoci: one inode, two names
        assert tree_diff(ref, got) == []  # content, modes, xattrs, both names, one inode
        if snapshotter == "overlayfs":
            upper = _upper(sn, top)
            for a, b in (("bin/tool", "bin/tool2"), ("etc/conf", "usr/conf")):
                sa, sb = os.lstat(f"{upper}/{a}"), os.lstat(f"{upper}/{b}")
                assert sa.st_ino == sb.st_ino and sa.st_nlink == 2, (a, b)
            st = os.lstat(f"{upper}/bin/tool")
            assert stat.S_IMODE(st.st_mode) == 0o4755
            assert os.getxattr(f"{upper}/bin/tool", "user.note") == b"kept"
            with open(f"{upper}/bin/tool2", "rb") as f:
                assert f.read() == TOOL
    finally:
        c.close()
    hold("fsck")


def _has_child(sn, name: str) -> bool:  # noqa: ANN001
    kids = []
    sn.walk(lambda i: kids.append(i.name) if i.parent == name else None)
    return bool(kids)


def _upper(sn, key: str) -> str:  # noqa: ANN001
    """The top layer's own directory in a view of ``key`` (the first lowerdir)."""
    view = f"upper-of-{os.getpid()}"
    try:
        [m] = sn.view(view, key)
        lowers = next(o for o in m.options if o.startswith("lowerdir="))[9:].split(":")
        return lowers[0]
    finally:
        sn.remove(view)


def _native_tree(sn, key: str) -> dict:  # noqa: ANN001
    view = f"tree-of-{os.getpid()}"
    try:
        [m] = sn.view(view, key)
        return tree(m.source)
    finally:
        sn.remove(view)
