"""``compare``: the changes from ``lower`` to ``upper`` as a layer blob in the store.

Two ways to find the changes:

- **overlay fast path** — ``upper`` is one overlay mount with ``upperdir=`` whose lowerdirs are
  exactly ``lower`` (one bind mount of the single lowerdir, or a read-only overlay of the same
  lowerdirs): the upper dir *is* the diff. Whiteout devices (0/0 char devices, or files with an
  ``overlay.whiteout`` xattr) become ``.wh.<name>``; opaque dirs (``overlay.opaque=y``) get
  ``.wh..wh..opq``. No mount, no walk of the lowers. If a redirected or metacopy entry shows
  up (``redirect_dir``/``metacopy`` mounts), the upper dir alone is not the diff, and we start
  again on the slow path.
- **double walk** — both sides mounted read-only (a single bind is read in place), walked in
  name order. A path missing from upper is a ``.wh.`` whiteout (one for a whole deleted
  tree); a directory none of whose (two or more) lower children survive is written as an
  opaque directory instead of one whiteout per child. Non-directories count as changed when
  type, mode, owner, device, size, mtime, link target or any xattr differ; directories when
  their mode, owner or xattrs differ, or when anything below them changed.

Entries carry full metadata: owner, all 12 mode bits, mtime in whole seconds, device numbers,
*every* xattr except overlayfs' own ``*.overlay.*`` ones, and hardlinks (a later path of an
inode written in this diff is a link to the first). Sockets are skipped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import time
from collections.abc import Iterator, Sequence

from cargohold.differ.api import (
    MEDIA_TYPE_TAR_GZIP,
    WHITEOUT_OPAQUE,
    WHITEOUT_PREFIX,
    compression_for,
)
from cargohold.differ.tarwriter import BATCH, LayerSink, end_of_archive, header
from cargohold.errors import AlreadyExists, CargoholdError, FailedPrecondition
from cargohold.store.api import Info, Store
from cargohold.types import LABEL_UNCOMPRESSED, Descriptor, Mount

_TYPES = {stat.S_IFREG: b"0", stat.S_IFDIR: b"5", stat.S_IFLNK: b"2", stat.S_IFCHR: b"3",
          stat.S_IFBLK: b"4", stat.S_IFIFO: b"6"}
_OVERLAY_X = ("trusted.overlay.", "user.overlay.")


class _Fallback(Exception):
    """The overlay upper dir holds redirects or metacopy files: walk both sides instead."""


def _opt(m: Mount, key: str) -> str | None:
    return next((o[len(key) + 1:] for o in m.options if o.startswith(key + "=")), None)


def _lowerdirs(m: Mount) -> list[str]:
    return [d for d in (_opt(m, "lowerdir") or "").split(":") if d]


def _is_bind(m: Mount) -> bool:
    return m.type == "bind" or "bind" in m.options or "rbind" in m.options


def xattrs_of(path: str) -> dict[str, bytes]:
    """Every xattr of ``path`` (not followed) except overlayfs' private ones."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for k in names:
        if k.startswith(_OVERLAY_X):
            continue
        with contextlib.suppress(OSError):
            out[k] = os.getxattr(path, k, follow_symlinks=False)
    return out


class _Writer:
    """Turns (path, stat) pairs into tar entries on a :class:`LayerSink`."""

    def __init__(self, sink: LayerSink) -> None:
        self.sink = sink
        self.links: dict[tuple[int, int], str] = {}
        self.pending: list[tuple[str, str, os.stat_result]] = []  # unchanged parents

    def flush_parents(self) -> None:
        pend, self.pending = self.pending, []
        for rel, path, st in pend:
            self.entry(rel, path, st, xattrs_of(path))

    def whiteout(self, rel_dir: str, name: str) -> None:
        self.flush_parents()
        p = f"{rel_dir}/{WHITEOUT_PREFIX}{name}" if rel_dir else WHITEOUT_PREFIX + name
        self.sink.add(header(p, b"0", mode=0o644, uid=0, gid=0, mtime=0))

    def opaque(self, rel_dir: str) -> None:
        self.flush_parents()
        self.sink.add(header(f"{rel_dir}/{WHITEOUT_OPAQUE}", b"0", mode=0o644, uid=0, gid=0,
                             mtime=0))

    def entry(self, rel: str, path: str, st: os.stat_result, xattrs: dict[str, bytes]) -> None:
        self.flush_parents()
        fmt = stat.S_IFMT(st.st_mode)
        typ = _TYPES.get(fmt)
        if typ is None:
            return  # sockets (and anything stranger) have no place in a layer
        common = dict(mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                      mtime=int(st.st_mtime_ns // 1_000_000_000), xattrs=xattrs)
        if fmt == stat.S_IFDIR:
            self.sink.add(header(rel + "/", typ, **common))  # type: ignore[arg-type]
            return
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key)
            if first is not None:
                self.sink.add(header(rel, b"1", linkname=first, **common))  # type: ignore
                return
            self.links[key] = rel
        if fmt == stat.S_IFLNK:
            self.sink.add(header(rel, typ, linkname=os.readlink(path), **common))  # type: ignore
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            self.sink.add(header(rel, typ, devmajor=os.major(st.st_rdev),  # type: ignore
                                 devminor=os.minor(st.st_rdev), **common))
        elif fmt == stat.S_IFIFO:
            self.sink.add(header(rel, typ, **common))  # type: ignore[arg-type]
        else:
            self._file(rel, path, st, common)

    def _file(self, rel: str, path: str, st: os.stat_result, common: dict) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            self.sink.add(header(rel, b"0", size=size, **common))
            left = size
            while left:
                data = os.read(fd, min(left, BATCH))
                if not data:  # the file shrank under us: pad with zeros to keep the header true
                    data = bytes(min(left, BATCH))
                self.sink.add(data)
                left -= len(data)
            self.sink.add(bytes(-size % 512))
        finally:
            os.close(fd)


def _scan(path: str) -> list[tuple[str, os.stat_result]]:
    with os.scandir(path) as it:
        out = [(e.name, e.stat(follow_symlinks=False)) for e in it]
    out.sort()
    return out


def _walk_upper(w: _Writer, rel: str, path: str) -> None:
    for name, st in _scan(path):
        r = f"{rel}/{name}" if rel else name
        p = f"{path}/{name}"
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            w.whiteout(rel, name)
            continue
        x = {}
        raw = os.listxattr(p, follow_symlinks=False)
        if raw:
            names = set(raw)
            if names & {"trusted.overlay.redirect", "trusted.overlay.metacopy",
                        "user.overlay.redirect", "user.overlay.metacopy"}:
                raise _Fallback(r)
            if names & {"trusted.overlay.whiteout", "user.overlay.whiteout"}:
                w.whiteout(rel, name)
                continue
            x = xattrs_of(p)
        w.entry(r, p, st, x)
        if stat.S_ISDIR(st.st_mode):
            if any(_xget(p, f"{ns}.overlay.opaque") == b"y" for ns in ("trusted", "user")):
                w.opaque(r)
            _walk_upper(w, r, p)


def _xget(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def _same(a: os.stat_result, b: os.stat_result, pa: str, pb: str) -> bool:
    if (a.st_mode != b.st_mode or a.st_uid != b.st_uid or a.st_gid != b.st_gid
            or a.st_rdev != b.st_rdev):
        return False
    if stat.S_ISDIR(a.st_mode):
        return xattrs_of(pa) == xattrs_of(pb)
    if a.st_size != b.st_size:
        return False
    if a.st_mtime_ns != b.st_mtime_ns:
        # A tree unpacked from a tar has whole-second mtimes: equal seconds with one side
        # truncated says nothing, so compare the bytes.
        if (a.st_mtime_ns // 10**9 != b.st_mtime_ns // 10**9
                or (a.st_mtime_ns % 10**9 and b.st_mtime_ns % 10**9)
                or not stat.S_ISREG(a.st_mode) or not _same_bytes(pa, pb)):
            return False
    if stat.S_ISLNK(a.st_mode) and os.readlink(pa) != os.readlink(pb):
        return False
    return xattrs_of(pa) == xattrs_of(pb)


def _same_bytes(pa: str, pb: str) -> bool:
    with open(pa, "rb") as fa, open(pb, "rb") as fb:
        while True:
            x, y = fa.read(BATCH), fb.read(BATCH)
            if x != y:
                return False
            if not x:
                return True


def _walk_both(w: _Writer, rel: str, upath: str, lpath: str | None) -> None:
    uents = _scan(upath)
    lents = dict(_scan(lpath)) if lpath is not None else {}
    unames = {n for n, _ in uents}
    gone = sorted(n for n in lents if n not in unames)
    if rel and len(gone) >= 2 and len(gone) == len(lents):
        w.opaque(rel)  # the whole directory was replaced: one marker instead of N whiteouts
        lents = {}
    else:
        for n in gone:
            w.whiteout(rel, n)
    for name, st in uents:
        r = f"{rel}/{name}" if rel else name
        p = f"{upath}/{name}"
        lst = lents.get(name)
        lp = f"{lpath}/{name}" if lst is not None else None
        if stat.S_ISDIR(st.st_mode):
            if lst is not None and stat.S_ISDIR(lst.st_mode):
                if _same(st, lst, p, lp):  # type: ignore[arg-type]
                    w.pending.append((r, p, st))
                    _walk_both(w, r, p, lp)
                    if w.pending and w.pending[-1][0] == r:
                        w.pending.pop()
                    continue
                w.entry(r, p, st, xattrs_of(p))
                _walk_both(w, r, p, lp)
            else:
                w.entry(r, p, st, xattrs_of(p))
                _walk_both(w, r, p, None)
        elif lst is None or not _same(st, lst, p, lp):  # type: ignore[arg-type]
            w.entry(r, p, st, xattrs_of(p))


@contextlib.contextmanager
def _root(mounts: Sequence[Mount]) -> Iterator[str | None]:
    """A read-only view of ``mounts``: a bind source in place, else a temporary mount."""
    if not mounts:
        yield None
    elif len(mounts) == 1 and _is_bind(mounts[0]):
        yield mounts[0].source
    else:
        from cargohold.mount import temp_mount

        with temp_mount(mounts, readonly=True) as d:
            yield d


def _fast_upper(lower: Sequence[Mount], upper: Sequence[Mount]) -> str | None:
    if len(upper) != 1 or upper[0].type != "overlay" or len(lower) != 1:
        return None
    u, lo = upper[0], lower[0]
    ud, ulowers = _opt(u, "upperdir"), _lowerdirs(u)
    if not ud or not ulowers:
        return None
    if _is_bind(lo) and ulowers == [lo.source]:
        return ud
    if lo.type == "overlay" and not _opt(lo, "upperdir") and _lowerdirs(lo) == ulowers:
        return ud
    return None


def write_diff(sink: LayerSink, lower: Sequence[Mount], upper: Sequence[Mount]) -> None:
    """Stream the tar of the changes into ``sink`` (not closed)."""
    ud = _fast_upper(lower, upper)
    if ud is not None:
        _walk_upper(_Writer(sink), "", ud)
    else:
        with _root(lower) as lroot, _root(upper) as uroot:
            _walk_both(_Writer(sink), "", uroot, lroot)  # type: ignore[arg-type]
    sink.add(end_of_archive())


def compare(lower: Sequence[Mount], upper: Sequence[Mount], *, store: Store,
            media_type: str = MEDIA_TYPE_TAR_GZIP, ref: str | None = None,
            labels: dict[str, str] | None = None, level: int | None = None) -> Descriptor:
    """Write the diff from ``lower`` to ``upper`` into ``store`` as a layer; return it.

    The blob is compressed as ``media_type`` says (gzip through ISA-L, zstd, or none) and
    committed with ``labels`` plus ``containerd.io/uncompressed=<diffID>``. A blob that exists
    already is success (the label is added to it). Returns ``Descriptor(media_type, digest,
    size)`` of the compressed blob.

    ``ref`` names the ingest; by default a fresh one, which is aborted on failure (a given ref
    is truncated first and left for the caller). Raises ``Unsupported`` for a media type that
    is not a layer, ``MountError`` when a side cannot be mounted, and what the store raises.
    Neither side is modified (both are read-only mounted or read in place).
    """
    compression = compression_for(media_type)
    own_ref = ref is None
    ref = ref or f"compare-{time.time_ns()}-{secrets.token_hex(6)}"
    writer = store.writer(ref)
    done = False
    try:
        if writer.status().offset:
            writer.truncate(0)
        sink = LayerSink(compression, writer.write, level=level)
        try:
            try:
                write_diff(sink, lower, upper)
            except _Fallback:
                sink.abandon()
                writer.truncate(0)
                sink = LayerSink(compression, writer.write, level=level)
                with _root(lower) as lroot, _root(upper) as uroot:
                    _walk_both(_Writer(sink), "", uroot, lroot)  # type: ignore[arg-type]
                sink.add(end_of_archive())
            sink.close()
        except BaseException:
            sink.abandon()
            raise
        all_labels = dict(labels or {})
        all_labels[LABEL_UNCOMPRESSED] = sink.diff_id
        digest = writer.digest()
        size = writer.status().offset
        try:
            writer.commit(size, digest, all_labels)
        except AlreadyExists:
            with contextlib.suppress(CargoholdError):
                store.update(Info(digest, size, labels=all_labels),
                             [f"labels.{k}" for k in all_labels])
        done = True
        return Descriptor(media_type, digest, size)
    except OSError as exc:
        raise FailedPrecondition(f"compare {ref}: {exc.strerror or exc}"
                                 + (f" ({exc.filename})" if exc.filename else "")) from exc
    finally:
        if not done:
            # Cleanup after a failure: the error being raised is what the user needs, and an
            # ingest this cannot close or abort is an orphan that GC and fsck remove.
            with contextlib.suppress(Exception):
                writer.close()
            if own_ref:
                with contextlib.suppress(Exception):
                    store.abort(ref)
