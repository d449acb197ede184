"""Interop: layers made by ``umoci`` from a busybox-static rootfs, applied by our differ.

The reference is ``umoci unpack``'s rootfs of the final image. We apply the image's layers
onto a plain directory (real whiteouts) and onto overlay upper dirs (overlay whiteouts,
then mounted); both trees must equal umoci's: paths, types, modes, owners, sizes, link
targets, contents, xattrs, hardlinks and the mtimes of non-directories.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest
from treeutil import CAP, bind, diff_snapshots, snapshot

from cargohold.differ.apply import apply
from cargohold.mount import mount
from cargohold.types import Descriptor, Mount

pytestmark = pytest.mark.peer

BUSYBOX = "/bin/busybox"


def _umoci(*args, cwd):
    subprocess.run(["umoci", *args], cwd=cwd, check=True, capture_output=True)


def _layer_one(rootfs):
    os.makedirs(f"{rootfs}/bin", exist_ok=True)
    shutil.copy2(BUSYBOX, f"{rootfs}/bin/busybox")
    for applet in ("sh", "ls", "cat"):
        os.symlink("busybox", f"{rootfs}/bin/{applet}")
    os.link(f"{rootfs}/bin/busybox", f"{rootfs}/bin/busybox.hard")
    os.makedirs(f"{rootfs}/etc", exist_ok=True)
    with open(f"{rootfs}/etc/passwd", "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    os.makedirs(f"{rootfs}/tmp", exist_ok=True)
    os.chmod(f"{rootfs}/tmp", 0o1777)
    with open(f"{rootfs}/bin/ping", "wb") as f:
        f.write(b"\x7fELF fake ping")
    os.chmod(f"{rootfs}/bin/ping", 0o4755)
    os.setxattr(f"{rootfs}/bin/ping", "security.capability", CAP)
    os.setxattr(f"{rootfs}/etc/passwd", "user.origin", b"umoci-test")
    os.makedirs(f"{rootfs}/home/user/" + "long" * 40, exist_ok=True)
    with open(f"{rootfs}/home/user/" + "long" * 40 + "/" + "n" * 120, "w") as f:
        f.write("deep")
    os.chown(f"{rootfs}/home/user", 1000, 1000)
    os.makedirs(f"{rootfs}/var/cache/app", exist_ok=True)
    for i in range(5):
        with open(f"{rootfs}/var/cache/app/c{i}", "w") as f:
            f.write("cache" * i)
    os.mkfifo(f"{rootfs}/tmp/fifo")
    os.makedirs(f"{rootfs}/dev", exist_ok=True)
    os.mknod(f"{rootfs}/dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))


def _layer_two(rootfs):
    os.unlink(f"{rootfs}/bin/cat")
    shutil.rmtree(f"{rootfs}/var/cache/app")
    os.makedirs(f"{rootfs}/var/cache/app")
    with open(f"{rootfs}/var/cache/app/new", "w") as f:
        f.write("new")
    with open(f"{rootfs}/etc/passwd", "a") as f:
        f.write("user:x:1000:1000::/home/user:/bin/sh\n")
    os.chmod(f"{rootfs}/bin/ping", 0o4711)
    os.symlink("/etc/passwd", f"{rootfs}/etc/passwd.link")


@pytest.fixture(scope="module")
def umoci_image(tmp_path_factory):
    if shutil.which("umoci") is None or not os.path.exists(BUSYBOX):
        pytest.skip("needs umoci and busybox-static (apt-get install umoci busybox-static)")
    if os.geteuid() != 0:
        pytest.skip("needs root (umoci unpack keeps owners and device nodes only as root)")
    w = tmp_path_factory.mktemp("umoci")
    _umoci("init", "--layout", "img", cwd=w)
    _umoci("new", "--image", "img:t", cwd=w)
    for i, change in enumerate((_layer_one, _layer_two)):
        _umoci("unpack", "--image", "img:t", f"b{i}", cwd=w)
        change(f"{w}/b{i}/rootfs")
        _umoci("repack", "--image", "img:t", f"b{i}", cwd=w)
    _umoci("unpack", "--image", "img:t", "ref", cwd=w)
    index = json.load(open(w / "img/index.json"))
    mdesc = index["manifests"][0]["digest"]
    manifest = json.load(open(w / "img/blobs/sha256" / mdesc.split(":")[1]))
    config = json.load(open(w / "img/blobs/sha256" / manifest["config"]["digest"].split(":")[1]))
    layers = [Descriptor.from_json(d) for d in manifest["layers"]]
    assert len(layers) == 2
    return w, layers, config["rootfs"]["diff_ids"]


def _blob(w, d):
    return open(w / "img/blobs/sha256" / d.digest.split(":")[1], "rb")


def test_umoci_layers_on_a_plain_dir_equal_umoci_unpack(tmp_path, umoci_image):
    w, layers, diff_ids = umoci_image
    target = tmp_path / "rootfs"
    target.mkdir()
    for d, diff_id in zip(layers, diff_ids, strict=True):
        with _blob(w, d) as r:
            out = apply(d, bind(target), reader=r, expected_diff_id=diff_id)
        assert out.digest == diff_id
    ref = snapshot(w / "ref/rootfs")
    assert ref["bin/busybox"][8] == "bin/busybox" and ref["bin/ping"][1] == 0o4711
    assert "var/cache/app/c1" not in ref and "bin/cat" not in ref  # the deletions are real
    # A directory a layer changes without carrying a header for it (umoci writes none for the
    # parents of whiteouts) gets the time of the unpack, in umoci as here: compare the times
    # of everything but directories.
    ref = snapshot(w / "ref/rootfs", dir_mtimes=False)
    assert diff_snapshots(ref, snapshot(target, dir_mtimes=False)) == []


def test_umoci_layers_on_overlay_equal_umoci_unpack(tmp_path, umoci_image, mounts_to_clean):
    w, layers, diff_ids = umoci_image
    uppers = []
    for i, (d, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
        up, work = tmp_path / f"l{i}", tmp_path / f"w{i}"
        up.mkdir()
        work.mkdir()
        if uppers:
            lowers = ":".join(str(u) for u in reversed(uppers))
            m = Mount("overlay", "overlay", (f"lowerdir={lowers}", f"upperdir={up}",
                                             f"workdir={work}"))
        else:
            m = Mount("bind", str(up), ("rbind",))
        with _blob(w, d) as r:
            apply(d, [m], reader=r, expected_diff_id=diff_id)
        uppers.append(up)
    merged = tmp_path / "merged"
    merged.mkdir()
    lowers = ":".join(str(u) for u in reversed(uppers))
    mount(Mount("overlay", "overlay", (f"lowerdir={lowers}",)), str(merged))
    mounts_to_clean.append(str(merged))
    # directory times: see the plain-dir test
    assert diff_snapshots(snapshot(w / "ref/rootfs", dir_mtimes=False),
                          snapshot(merged, dir_mtimes=False)) == []
