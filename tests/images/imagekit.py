"""Real image archives for import tests, built with umoci and skopeo from busybox-static.

``build_all(workdir)`` makes (once per session) an OCI layout ``img`` with two tags:

- ``base``: layer 1 (busybox + the applet symlinks ``--install -s`` would make, /etc files,
  a hardlink, a setuid file, a fifo, ``/dev/null`` as a device node, a ``user.`` xattr, a
  1777 /tmp) and layer 2 (deletions of a file and a directory, a directory replaced
  wholesale, a changed mode);
- ``t``: ``base`` plus layer 3 (new files, a symlink replacing a file);

and from them: ``umoci unpack`` reference trees, ``skopeo`` oci-archive and docker-archive
tars (named, familiar and nameless), gzip/zstd/xz copies, an OCI layout directory, and a
hand-assembled multi-platform index whose other platform's blobs are absent and which carries
an ``unknown/unknown`` attestation manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import threading

import isal.igzip as igzip
import zstandard
from tests.differ.treeutil import diff_snapshots, snapshot

from cargohold.images import platforms
from cargohold.mount import temp_mount

BUSYBOX = "/bin/busybox"
CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service+ep


def sh(*argv: str, cwd: str | None = None) -> None:
    p = subprocess.run(list(argv), cwd=cwd, capture_output=True)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {p.stderr.decode(errors='replace')}")


def _layer1(r: str) -> None:
    os.makedirs(f"{r}/bin")
    shutil.copy2(BUSYBOX, f"{r}/bin/busybox")
    # The applet links, as `busybox --install -s` makes them (absolute). Created by hand so
    # that nothing here ever runs, or writes through, the host's /bin/busybox: every later
    # write below goes to a path that is not one of these links.
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, check=True)
    for name in applets.stdout.decode().split():
        if name not in ("busybox", "ping"):
            os.symlink(BUSYBOX, f"{r}/bin/{name}")
    os.link(f"{r}/bin/busybox", f"{r}/bin/busybox.hard")
    os.makedirs(f"{r}/etc")
    for name, text in (("passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                       ("group", "root:x:0:\n"), ("hostname", "busy\n")):
        with open(f"{r}/etc/{name}", "w") as f:
            f.write(text)
    os.setxattr(f"{r}/etc/passwd", "user.origin", b"imagekit")
    fd = os.open(f"{r}/bin/ping", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    os.write(fd, b"\x7fELF not really ping")
    os.fchmod(fd, 0o4755)
    os.setxattr(fd, "security.capability", CAP)
    os.close(fd)
    os.makedirs(f"{r}/tmp")
    os.chmod(f"{r}/tmp", 0o1777)
    os.makedirs(f"{r}/dev")
    os.mknod(f"{r}/dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mkfifo(f"{r}/tmp/fifo")
    os.makedirs(f"{r}/var/cache/app")
    for i in range(5):
        with open(f"{r}/var/cache/app/c{i}", "w") as f:
            f.write("cache" * i)
    os.makedirs(f"{r}/home/user")
    os.chown(f"{r}/home/user", 1000, 1000)
    os.makedirs(f"{r}/opt/old/sub")
    with open(f"{r}/opt/old/sub/file", "w") as f:
        f.write("old")


def _layer2(r: str) -> None:
    os.unlink(f"{r}/etc/hostname")
    shutil.rmtree(f"{r}/var/cache/app")
    shutil.rmtree(f"{r}/opt/old")
    os.makedirs(f"{r}/opt/old")
    with open(f"{r}/opt/old/new", "w") as f:
        f.write("replaced")
    with open(f"{r}/etc/passwd", "a") as f:
        f.write("user:x:1000:1000::/home/user:/bin/sh\n")
    assert not os.path.islink(f"{r}/bin/ping")  # never chmod the host's busybox
    os.chmod(f"{r}/bin/ping", 0o4711)


def _layer3(r: str) -> None:
    with open(f"{r}/etc/motd", "w") as f:
        f.write("welcome\n")
    os.unlink(f"{r}/etc/group")
    os.symlink("passwd", f"{r}/etc/group")
    with open(f"{r}/home/user/.profile", "w") as f:
        f.write("export PS1='$ '\n")
    os.chown(f"{r}/home/user/.profile", 1000, 1000)


def blob(layout: str, digest: str) -> bytes:
    with open(os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1]), "rb") as f:
        return f.read()


def put(layout: str, data: bytes) -> str:
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", d[7:]), "wb") as f:
        f.write(data)
    return d


def manifest_of(layout: str, tag: str) -> dict:
    idx = json.load(open(os.path.join(layout, "index.json")))
    for m in idx["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return m
    raise KeyError(tag)


def tar_layout(layout: str, out: str, *, skip: tuple[str, ...] = ()) -> str:
    """An OCI layout directory as a tar (sorted, like an export), minus ``skip`` members."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
        for d, dirs, files in os.walk(layout):
            dirs.sort()
            for n in sorted(files):
                full = os.path.join(d, n)
                rel = os.path.relpath(full, layout)
                if rel not in skip:
                    t.add(full, rel)
    return out


def single_layout(src: str, dst: str, tag: str, *, name: str = "", edit=None) -> dict:  # noqa: ANN001
    """Copy tag ``tag`` of layout ``src`` to a one-entry layout ``dst``; ``edit(manifest,
    config)`` may change the JSON (the new blobs are written). Returns the index entry.
    """
    os.makedirs(os.path.join(dst, "blobs", "sha256"), exist_ok=True)
    mdesc = manifest_of(src, tag)
    man = json.loads(blob(src, mdesc["digest"]))
    cfg = json.loads(blob(src, man["config"]["digest"]))
    for d in [man["config"], *man["layers"]]:
        put(dst, blob(src, d["digest"]))
    if edit is not None:
        edit(man, cfg)
        data = json.dumps(cfg).encode()
        man["config"] = {**man["config"], "digest": put(dst, data), "size": len(data)}
    mdata = json.dumps(man).encode()
    entry = {"mediaType": man.get("mediaType", "application/vnd.oci.image.manifest.v1+json"),
             "digest": put(dst, mdata), "size": len(mdata)}
    if name:
        entry["annotations"] = {"io.containerd.image.name": name,
                                "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}
    with open(os.path.join(dst, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [entry]}, f)
    with open(os.path.join(dst, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    return entry


def multi_layout(src: str, dst: str) -> dict:
    """A layout whose index lists this host's platform (present), another platform (absent),
    a third with its layers absent and an unknown/unknown attestation manifest for the first
    (present)."""
    entry = single_layout(src, dst, "t")
    host = platforms.default()
    other = "arm64" if host.architecture != "arm64" else "amd64"
    intoto = put(dst, b'{"_type":"https://in-toto.io/Statement/v0.1","predicate":{}}')
    acfg = put(dst, b"{}")
    aman = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": acfg,
                   "size": 2},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": intoto,
                    "size": len(blob(dst, intoto))}]}).encode()
    adig = put(dst, aman)
    absent = "sha256:" + hashlib.sha256(b"not in this archive").hexdigest()
    # A third platform whose manifest and config came along but whose two layers did not.
    pcfg = json.dumps({"architecture": "s390x", "os": "linux",
                       "rootfs": {"type": "layers", "diff_ids": [absent, absent]}}).encode()
    fake = ["sha256:" + hashlib.sha256(f"layer {i}".encode()).hexdigest() for i in range(2)]
    pman = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(dst, pcfg), "size": len(pcfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": f,
                    "size": 100} for f in fake]}).encode()
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [
                 {**entry, "platform": {"os": "linux", "architecture": host.architecture}},
                 {"mediaType": entry["mediaType"], "digest": absent, "size": 1234,
                  "platform": {"os": "linux", "architecture": other}},
                 {"mediaType": entry["mediaType"], "digest": put(dst, pman), "size": len(pman),
                  "platform": {"os": "linux", "architecture": "s390x"}},
                 {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": adig,
                  "size": len(aman), "platform": {"os": "unknown", "architecture": "unknown"},
                  "annotations": {"vnd.docker.reference.digest": entry["digest"],
                                  "vnd.docker.reference.type": "attestation-manifest"}}]}
    idata = json.dumps(index).encode()
    top = {"mediaType": index["mediaType"], "digest": put(dst, idata), "size": len(idata),
           "annotations": {"io.containerd.image.name": "example.com/multi:1",
                           "org.opencontainers.image.ref.name": "1"}}
    with open(os.path.join(dst, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [top]}, f)
    return {"index": top["digest"], "present": entry["digest"], "absent": absent,
            "attestation": adig, "host": f"linux/{host.architecture}",
            "other": f"linux/{other}", "partial": "linux/s390x"}


def compress(path: str, kind: str) -> str:
    data = open(path, "rb").read()
    out = f"{path}.{ {'gzip': 'gz', 'zstd': 'zst', 'xz': 'xz'}[kind]}"
    packed = {"gzip": igzip.compress, "zstd": zstandard.ZstdCompressor().compress,
              "xz": lzma.compress}[kind](data)
    with open(out, "wb") as f:
        f.write(packed)
    return out


def docker_legacy(src: str, out: str) -> str:
    """docker save as docker < 25 wrote it: ``<id>/layer.tar`` regular files named by
    manifest.json (no top-level layer tars), plus ``<id>/json`` and ``VERSION``."""
    with tarfile.open(src) as t:
        man = json.load(t.extractfile("manifest.json"))
        files = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
        links = {m.name: m.linkname for m in t.getmembers() if m.issym()}
    layers = []
    with tarfile.open(out, "w") as o:
        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            o.addfile(ti, io.BytesIO(data))

        for name, target in sorted(links.items()):
            layer_id = name.split("/", 1)[0]
            add(name, files[os.path.normpath(os.path.join(layer_id, target))])
            add(f"{layer_id}/json", files[f"{layer_id}/json"])
            add(f"{layer_id}/VERSION", b"1.0")
        order = {os.path.basename(v): k for k, v in links.items()}
        layers = [order[x] for x in man[0]["Layers"]]
        add(man[0]["Config"], files[man[0]["Config"]])
        add("manifest.json", json.dumps([{**man[0], "Layers": layers}]).encode())
        add("repositories", files["repositories"])
    return out


def build_all(w: str) -> dict:
    """Everything the tests need, under ``w`` (see the module docstring)."""
    sh("umoci", "init", "--layout", "img", cwd=w)
    sh("umoci", "new", "--image", "img:t", cwd=w)
    for i, change in enumerate((_layer1, _layer2, _layer3)):
        sh("umoci", "unpack", "--image", "img:t", f"b{i}", cwd=w)
        change(f"{w}/b{i}/rootfs")
        sh("umoci", "repack", "--image", "img:t", f"b{i}", cwd=w)
        shutil.rmtree(f"{w}/b{i}")
        if i == 1:
            sh("umoci", "tag", "--image", "img:t", "base", cwd=w)
    sh("umoci", "unpack", "--image", "img:t", "ref", cwd=w)
    sh("umoci", "unpack", "--image", "img:base", "refbase", cwd=w)
    lay = f"{w}/img"
    a = {"layout": lay, "ref": f"{w}/ref/rootfs", "refbase": f"{w}/refbase/rootfs",
         "manifest": manifest_of(lay, "t")["digest"],
         "base_manifest": manifest_of(lay, "base")["digest"]}
    a["oci"] = f"{w}/oci.tar"
    sh("skopeo", "copy", "-q", "oci:img:t", f"oci-archive:{a['oci']}:1.0", cwd=w)
    a["oci_base"] = f"{w}/oci-base.tar"
    sh("skopeo", "copy", "-q", "oci:img:base", f"oci-archive:{a['oci_base']}:base", cwd=w)
    a["docker"] = f"{w}/docker.tar"
    sh("skopeo", "copy", "-q", "oci:img:t", f"docker-archive:{a['docker']}:example.com/team/busy:1",
       cwd=w)
    a["docker_familiar"] = f"{w}/docker-familiar.tar"
    sh("skopeo", "copy", "-q", "oci:img:t", f"docker-archive:{a['docker_familiar']}:busy", cwd=w)
    a["docker_legacy"] = docker_legacy(a["docker"], f"{w}/docker-legacy.tar")
    a["docker_nameless"] = f"{w}/docker-nameless.tar"
    sh("skopeo", "copy", "-q", "oci:img:t", f"docker-archive:{a['docker_nameless']}", cwd=w)
    a["ocidir"] = f"{w}/ocidir"
    single_layout(lay, a["ocidir"], "t", name="example.com/dir:2")
    a["multi_dir"] = f"{w}/multi"
    a["multi"] = multi_layout(lay, a["multi_dir"])
    a["multi_tar"] = tar_layout(a["multi_dir"], f"{w}/multi.tar")
    for kind in ("gzip", "zstd", "xz"):
        a[f"oci_{kind}"] = compress(a["oci"], kind)
        a[f"docker_{kind}"] = compress(a["docker"], kind)
    return a


def tree(root: str, *, dir_mtimes: bool = False) -> dict[str, tuple]:
    """Everything a layer can say about a tree, keyed by relative path (directory mtimes only
    when asked: unpackers differ on them)."""
    return snapshot(root, dir_mtimes=dir_mtimes)


tree_diff = diff_snapshots


def merged_tree(client, chain: str) -> dict:
    """:func:`tree` of committed snapshot ``chain`` seen through a read-only view."""
    sn = client.snapshotter()
    key = f"view-{os.getpid()}-{threading.get_ident()}"
    mounts = sn.view(key, chain)
    try:
        with temp_mount(mounts, readonly=True) as path:
            return tree(path)
    finally:
        sn.remove(key)
