"""Helpers for differ tests: build layer tars, make rich trees, and snapshot trees to compare."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import threading
import time

import isal.igzip as igzip
import pytest

from cargohold.differ.api import MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD
from cargohold.types import Descriptor, Mount

OVERLAY_X = ("trusted.overlay.", "user.overlay.")
CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service+ep


def tar_bytes(entries: list[tuple], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """Entries: (name, kind, **kw) tuples; kind in file/dir/sym/link/chr/blk/fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for ent in entries:
            name, kind = ent[0], ent[1]
            kw = ent[2] if len(ent) > 2 else {}
            ti = tarfile.TarInfo(name)
            ti.mode = kw.get("mode", 0o755 if kind == "dir" else 0o644)
            ti.uid, ti.gid = kw.get("uid", 0), kw.get("gid", 0)
            ti.mtime = kw.get("mtime", 1_600_000_000)
            if "xattrs" in kw:
                ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                  for k, v in kw["xattrs"].items()}
            data = None
            if kind == "file":
                data = kw.get("data", b"")
                ti.size = len(data)
            else:
                ti.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                           "link": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE,
                           "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
                ti.linkname = kw.get("target", "")
                ti.devmajor, ti.devminor = kw.get("dev", (0, 0))
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    return igzip.compress(data)


def zst(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def desc(blob: bytes, media_type: str = MEDIA_TYPE_TAR_GZIP) -> Descriptor:
    return Descriptor(media_type, "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob))


def bind(path) -> list[Mount]:
    return [Mount("bind", str(path), ("rbind",))]


def diff_id(plain: bytes) -> str:
    return "sha256:" + hashlib.sha256(plain).hexdigest()


MEDIA = {"gzip": (MEDIA_TYPE_TAR_GZIP, gz), "zstd": (MEDIA_TYPE_TAR_ZSTD, zst),
         "none": (MEDIA_TYPE_TAR, lambda b: b)}


def snapshot(root, *, mtimes: bool = True, dir_mtimes: bool = True,
             skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Everything a layer can say about a tree, keyed by relative path (root excluded)."""
    root = str(root)
    out: dict[str, tuple] = {}
    inodes: dict[tuple[int, int], str] = {}
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            p = os.path.join(d, name)
            rel = os.path.relpath(p, root)
            if rel.split("/")[0] in skip:
                continue
            st = os.lstat(p)
            m = st.st_mode
            content = link = None
            group = None
            if stat.S_ISREG(m):
                with open(p, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            if stat.S_ISLNK(m):
                link = os.readlink(p)
            if not stat.S_ISDIR(m) and st.st_nlink > 1:
                group = inodes.setdefault((st.st_dev, st.st_ino), rel)
            try:
                xa = {k: os.getxattr(p, k, follow_symlinks=False)
                      for k in os.listxattr(p, follow_symlinks=False)
                      if not k.startswith(OVERLAY_X)}
            except OSError:
                xa = {}
            mt = None
            if mtimes and (dir_mtimes or not stat.S_ISDIR(m)) and not stat.S_ISLNK(m):
                mt = st.st_mtime_ns // 10**9
            out[rel] = (stat.S_IFMT(m), stat.S_IMODE(m), st.st_uid, st.st_gid,
                        st.st_size if stat.S_ISREG(m) else None, link, content,
                        tuple(sorted(xa.items())), group,
                        st.st_rdev if stat.S_ISCHR(m) or stat.S_ISBLK(m) else None, mt)
    return out


def diff_snapshots(a: dict, b: dict) -> list[str]:
    """Human-readable differences, for assertion messages."""
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"{k}: {a.get(k)} != {b.get(k)}")
    return out


def rich_tree(root) -> None:
    """A tree with every entry type, xattrs, special modes, owners, hardlinks, long names."""
    r = str(root)
    os.makedirs(f"{r}/etc/deep/" + "/".join(["d" * 60] * 4), exist_ok=True)
    with open(f"{r}/etc/passwd", "w") as f:
        f.write("root:x:0:0::/root:/bin/sh\n")
    long = f"{r}/etc/deep/" + "/".join(["d" * 60] * 4) + "/" + "f" * 200
    with open(long, "wb") as f:
        f.write(b"long" * 1000)
    os.makedirs(f"{r}/bin")
    with open(f"{r}/bin/tool", "wb") as f:
        f.write(os.urandom(300_000))
    os.chmod(f"{r}/bin/tool", 0o4755)
    os.setxattr(f"{r}/bin/tool", "security.capability", CAP)
    os.setxattr(f"{r}/bin/tool", "user.note", b"hello")
    os.link(f"{r}/bin/tool", f"{r}/bin/tool-link")
    os.symlink("tool", f"{r}/bin/sym")
    os.symlink("/etc/passwd", f"{r}/abs-sym")
    os.makedirs(f"{r}/tmp")
    os.chmod(f"{r}/tmp", 0o1777)
    os.makedirs(f"{r}/srv/g")
    os.chmod(f"{r}/srv/g", 0o2750)
    os.chown(f"{r}/srv/g", 1000, 1001)
    with open(f"{r}/srv/g/owned", "w") as f:
        f.write("x")
    os.chown(f"{r}/srv/g/owned", 123456, 654321)
    os.setxattr(f"{r}/srv/g", "user.dirnote", b"\x00\xffbinary")
    os.mkfifo(f"{r}/srv/fifo")
    os.makedirs(f"{r}/dev")
    os.mknod(f"{r}/dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(f"{r}/dev/loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
    with open(f"{r}/empty", "w"):
        pass
    with open(f"{r}/ünï-cødé", "w") as f:
        f.write("utf8")
    for i in range(50):
        with open(f"{r}/etc/small{i}", "w") as f:
            f.write(str(i) * i)
    # whole-second mtimes everywhere so that a tar round trip is exact
    for d, dirs, files in os.walk(r, topdown=False):
        for n in dirs + files:
            os.utime(os.path.join(d, n), (1_600_000_000, 1_600_000_000), follow_symlinks=False)


def pipeline_threads() -> list[str]:
    """Names of the differ's and the unpacker's threads still alive."""
    return [t.name for t in threading.enumerate()
            if t.name.startswith(("unpack ", "writeback "))]


def wait_until(cond, what: str, limit: float = 20.0) -> None:
    """Wait for a state (not a duration): fail after ``limit`` seconds without it."""
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)
