"""`hold snapshots diff`: the layer of a snapshot's changes, with whiteouts, via the real CLI."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount overlayfs")


@pytest.mark.parametrize("sn", ["overlayfs", "native"])
def test_diff_active_and_committed(hold, tmp_path, sn):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    h = lambda *a, **k: hold("--snapshotter", sn, "--lease", "L", *a, **k)  # noqa: E731
    hold("leases", "create", "--id", "L")
    h("snapshots", "prepare", "base", "--target", str(mnt))
    (mnt / "gone").write_text("x")
    (mnt / "dir").mkdir()
    (mnt / "dir" / "keep").write_text("k")
    h("snapshots", "unmount", str(mnt))
    h("snapshots", "commit", "base-c", "base")
    h("snapshots", "prepare", "top", "base-c", "--target", str(mnt))
    try:
        (mnt / "gone").unlink()
        (mnt / "new").write_text("new")
        os.setxattr(mnt / "new", "user.k", b"v")
    finally:
        h("snapshots", "unmount", str(mnt))
    for key in ("top",):
        d = h("snapshots", "diff", key).stdout.decode().strip()
        blob = hold("content", "get", d).stdout
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tf:
            members = {m.name: m for m in tf.getmembers()}
        assert ".wh.gone" in members and "new" in members
        assert members["new"].pax_headers.get("SCHILY.xattr.user.k") == "v"
        assert "dir/keep" not in members
    h("snapshots", "commit", "top-c", "top")
    d2 = h("snapshots", "diff", "top-c").stdout.decode().strip()
    assert d2 == d  # the same changes give the same layer, active or committed
    # No temporary views are left behind.
    keys = hold("--snapshotter", sn, "snapshots", "ls", "-q").stdout.decode().split()
    assert sorted(keys) == ["base-c", "top-c"]
