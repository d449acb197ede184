"""The overlayfs snapshotter (the default): one upper directory per snapshot, parents as lowers.

Layout (see ``dirtree.py`` for the temp and removal names)::

    <root>/snapshots/<id>/fs     the snapshot's own layer: the upperdir while active (0755)
    <root>/snapshots/<id>/work   overlay's workdir, active snapshots only (0711)

Ids are short decimal numbers and paths stay short, because every lower directory is spelled
out in the mount options. Mounts:

======================  =====================================================================
no parent               ``bind`` of ``<id>/fs``, ``rw`` (active) or ``ro`` (view)
view of one parent      ``bind`` of the parent's ``fs``, ``ro``
active with parents     ``overlay`` with ``index=off``, ``workdir``, ``upperdir``, ``lowerdir``
view of several         ``overlay`` with ``lowerdir`` only: read-only by construction
======================  =====================================================================

Every path is absolute, so each mount pastes into a shell as ``mount -t overlay overlay -o …``
(:meth:`cargohold.types.Mount.command`). Chains whose options exceed one page still mount
through :mod:`cargohold.mount.overlay`.

The layer format is overlay's own: a deleted file is a 0/0 character device and an opaque
directory carries ``trusted.overlay.opaque=y``. A differ applies a layer straight into
:meth:`OverlayFS.upper_dir` of an active snapshot without mounting anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Sequence

from cargohold._fsutil import atomic_write, dir_size
from cargohold._oserror import read_only_root
from cargohold.errors import CargoholdError, FailedPrecondition, Unsupported
from cargohold.mount import libc, mount, unmount
from cargohold.snapshotters.api import Kind, Usage
from cargohold.snapshotters.dirtree import DirSnapshotter
from cargohold.snapshotters.storage import Snapshot
from cargohold.types import Mount

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

INDEX_PARAM = "/sys/module/overlay/parameters/index"
_DT_UNKNOWN = 0
_probed: dict[int, str] = {}  # st_dev of a root's filesystem -> "" (fine) or why not


class OverlayFS(DirSnapshotter):
    """Overlay snapshots under ``root``.

    ``mount_options`` are added to every overlay mount (e.g. ``volatile``). The constructor
    probes the filesystem and the kernel once per filesystem and raises Unsupported, saying
    why, when overlay snapshots cannot work there.
    """

    name = "overlayfs"

    def __init__(self, root: str, *, mount_options: Sequence[str] = (),
                 probe: bool = True) -> None:
        if probe:
            reason = probe_root(root, remembered=True)
            if reason:
                raise Unsupported(reason,
                                  hint="use the native snapshotter (--snapshotter native)")
        super().__init__(root)
        if probe:
            _remember(self.root)
        opts = list(mount_options)
        if os.path.exists(INDEX_PARAM) and not any(o.startswith("index=") for o in opts):
            # Kernels >= 4.13 refuse (EBUSY) to reuse a lowerdir in two mounts with index=on.
            opts.insert(0, "index=off")
        self.mount_options = tuple(opts)

    @staticmethod
    def check_support(root: str, section: dict[str, Any] | None = None) -> None:
        """Raise Unsupported, saying why, when overlay snapshots cannot work under ``root``."""
        reason = probe_root(root)
        if reason:
            raise Unsupported(reason, hint="use the native snapshotter (--snapshotter native)")

    @classmethod
    def from_config(cls, root: str, section: dict[str, Any] | None = None) -> OverlayFS:
        """Build from a ``[snapshotters.overlayfs]`` config section."""
        section = section or {}
        return cls(root, mount_options=tuple(section.get("mount_options") or ()))

    # --- hooks -------------------------------------------------------------------------------
    def _create(self, path: str, kind: Kind, parent_ids: tuple[str, ...]) -> None:
        os.mkdir(path, 0o700)
        fs = os.path.join(path, "fs")
        os.mkdir(fs, 0o755)
        os.chmod(fs, 0o755)
        if parent_ids:
            # The root of the merged tree takes its owner from the upper: keep the parent's.
            st = os.stat(self.fs_dir(parent_ids[0]))
            os.chown(fs, st.st_uid, st.st_gid)
        if kind == Kind.ACTIVE:
            os.mkdir(os.path.join(path, "work"), 0o711)

    def _mounts(self, sn: Snapshot) -> list[Mount]:
        if not sn.parent_ids:
            ro = "rw" if sn.kind == Kind.ACTIVE else "ro"
            return [Mount("bind", self.fs_dir(sn.id), ("rbind", ro))]
        lowers = ":".join(self.fs_dir(i) for i in sn.parent_ids)
        if sn.kind == Kind.VIEW:
            if len(sn.parent_ids) == 1:
                return [Mount("bind", lowers, ("rbind", "ro"))]
            return [Mount("overlay", "overlay", (*self.mount_options, f"lowerdir={lowers}"))]
        return [Mount("overlay", "overlay", (
            *self.mount_options,
            f"workdir={os.path.join(self.path(sn.id), 'work')}",
            f"upperdir={self.fs_dir(sn.id)}",
            f"lowerdir={lowers}"))]

    def _active_usage(self, sn: Snapshot) -> Usage:
        return Usage(*dir_size(self.fs_dir(sn.id)))

    # --- differ-facing helpers -----------------------------------------------------------------
    def fs_dir(self, id: str) -> str:
        """The layer directory of the snapshot with internal id ``id``."""
        return os.path.join(self.path(id), "fs")

    def upper_dir(self, key: str) -> str:
        """The directory holding ``key``'s own layer, in overlay's whiteout format.

        For an active snapshot that is the upperdir: a differ may write a layer into it
        directly, with no mount, before ``commit``. Committed snapshots answer too (their layer,
        to be read only). Views have no layer of their own: FailedPrecondition.
        """
        with self.ms.view() as tx:
            ids = self.ms.parent_ids(tx, key)
            kind = self.ms.get_info(tx, key)[1].kind
        if kind == Kind.VIEW:
            raise FailedPrecondition(f"snapshot {key}: a view has no layer of its own",
                                     hint="use lower_dirs() or mount it")
        return self.fs_dir(ids[0])

    def lower_dirs(self, key: str) -> list[str]:
        """The layer directories under ``key`` (its parents), nearest first."""
        with self.ms.view() as tx:
            ids = self.ms.parent_ids(tx, key)
        return [self.fs_dir(i) for i in ids[1:]]


# --- probing -----------------------------------------------------------------------------------
class _Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


def supports_d_type(path: str) -> bool:
    """Whether ``readdir`` on ``path``'s filesystem reports file types (overlay needs it)."""
    c = libc()
    c.opendir.restype = ctypes.c_void_p
    c.opendir.argtypes = [ctypes.c_char_p]
    c.readdir.restype = ctypes.POINTER(_Dirent)
    c.readdir.argtypes = [ctypes.c_void_p]
    c.closedir.argtypes = [ctypes.c_void_p]
    open(os.path.join(path, "f"), "wb").close()
    d = c.opendir(path.encode())
    if not d:
        e = ctypes.get_errno()
        raise OSError(e, f"opendir {path}: {os.strerror(e)}")
    try:
        while True:
            ent = c.readdir(d)
            if not ent:
                return False
            if ent.contents.d_name == b"f":
                return ent.contents.d_type != _DT_UNKNOWN
    finally:
        c.closedir(d)


def _nearest_dir(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.isdir(path):
        path = os.path.dirname(path)
    return path


PROBED = ".probed"  # in the backend root: the kernel and filesystem a trial mount passed on


def _stamp(dev: int) -> str:
    return f"{os.uname().release} {dev}"


def _remember(root: str) -> None:
    """Note beside the backend that its probe passed for this kernel and filesystem, so that
    the next process opening it skips the trial mount (13 ms of every command). Best effort:
    without the note the next open simply probes again.
    """
    dev = os.stat(root).st_dev
    if _probed.get(dev) != "" or read_only_root(root) is not None:
        return
    path = os.path.join(root, PROBED)
    if _read_stamp(path) != _stamp(dev):
        with contextlib.suppress(OSError, CargoholdError):
            atomic_write(path, _stamp(dev).encode(), sync=False)


def _read_stamp(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


def probe_root(root: str, *, remembered: bool = False) -> str:
    """Why overlay snapshots cannot work under ``root`` ("" when they can); cached per fs.

    With ``remembered``, a probe that passed for this kernel and filesystem in an earlier
    process (the note :func:`_remember` leaves in the backend root) counts: a new kernel or
    another filesystem changes the note's stamp and probes again. Without it (``hold plugins
    ls``), the probe runs for real. Under a read-only root the probe (which writes a trial
    tree) is skipped: nothing may be written there, and reading what overlay snapshots already
    hold needs no probe.
    """
    if read_only_root(root) is not None:
        return ""
    base = _nearest_dir(root)
    dev = os.stat(base).st_dev
    if dev in _probed:
        return _probed[dev]
    if remembered and _read_stamp(os.path.join(root, PROBED)) == _stamp(dev):
        _probed[dev] = ""
        return ""
    import shutil  # the probe alone needs these (and it runs once per kernel)
    import tempfile

    reason = ""
    try:
        d = tempfile.mkdtemp(prefix=".probe-", dir=base)
    except OSError as exc:
        return f"overlayfs root {root}: cannot write there ({exc.strerror})"
    try:
        if not supports_d_type(d):
            reason = (f"overlayfs root {root}: the filesystem does not report d_type "
                      "(xfs needs ftype=1)")
        else:
            reason = _trial_mount(d, root)
    except OSError as exc:
        reason = f"overlayfs root {root}: probe failed ({exc.strerror})"
    finally:
        shutil.rmtree(d, ignore_errors=True)
    _probed[dev] = reason
    return reason


probe = probe_root  # the name tests and callers know


def _trial_mount(d: str, root: str) -> str:
    for n in ("l1", "l2", "m"):
        os.mkdir(os.path.join(d, n))
    m = os.path.join(d, "m")
    try:
        mount(Mount("overlay", "overlay",
                    (f"lowerdir={os.path.join(d, 'l1')}:{os.path.join(d, 'l2')}",)), m)
    except CargoholdError as exc:
        if os.geteuid() != 0:
            return "overlayfs: mounting needs root (CAP_SYS_ADMIN)"
        return f"overlayfs root {root}: a trial overlay mount failed ({exc})"
    unmount(m)
    return ""
