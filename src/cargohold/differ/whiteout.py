"""Whiteouts: ``.wh.<name>`` deletes ``<name>``; ``.wh..wh..opq`` hides a directory's lowers.

Two forms, chosen by the target:

- **overlay** (applying straight into an overlay upper dir): ``.wh.x`` becomes a 0/0 character
  device ``x`` owned like the header; ``.wh..wh..opq`` becomes the xattr
  ``trusted.overlay.opaque=y`` on the directory (``user.overlay.opaque`` under ``userxattr``).
  Missing parents are created with the metadata of the lowerdirs' copy (copy-up).
- **real** (a bind target or a temp mount): ``.wh.x`` removes ``x`` (recursively, never
  following symlinks); ``.wh..wh..opq`` removes every child of the directory that this layer
  did not create itself, so the marker may come before or after the new children.

Whiteout names are checked: ``.wh.``, ``.wh..`` and ``.wh...`` (empty, ``.`` or ``..``) are
rejected, and the cleaned parent can never leave the root (see ``resolve.clean``). Other
``.wh..wh.*`` names (aufs bookkeeping such as ``.wh..wh.plnk``) are skipped.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from cargohold.differ.api import WHITEOUT_META_PREFIX, WHITEOUT_OPAQUE, LayerError

if TYPE_CHECKING:
    from cargohold.differ.extract import Extractor
    from cargohold.differ.tarheader import Entry


def handle(x: Extractor, e: Entry, parent: str, base: str) -> None:
    """Apply the whiteout entry ``e`` (``parent``/``base``, already cleaned) through ``x``."""
    if base == WHITEOUT_OPAQUE:
        _opaque(x, e, parent)
        return
    if base.startswith(WHITEOUT_META_PREFIX):
        return
    name = base[4:]
    if name in ("", ".", ".."):
        raise LayerError(x.layer, "invalid whiteout name", entry=e.name,
                         hint="the layer is malformed or hostile")
    if x.overlay:
        pdir = x.res.dir(parent, create=True, entry=e.name)
        path = f"{pdir}/{name}"
        x.remove(path)
        os.mknod(path, stat.S_IFCHR, 0)
        x.res.invalidate()  # the name is gone from the merged view
        if x.same_owner:
            os.lchown(path, e.uid, e.gid)
        return
    pdir = x.res.dir(parent, create=False, entry=e.name)
    if pdir is None:
        return  # nothing below to delete
    path = f"{pdir}/{name}"
    x.remove(path)
    x.unpacked.discard(path)


def _opaque(x: Extractor, e: Entry, parent: str) -> None:
    if x.overlay:
        pdir = x.res.dir(parent, create=True, entry=e.name)
        os.setxattr(pdir, f"{x.xattr_ns}.overlay.opaque", b"y")  # type: ignore[arg-type]
        x.res.invalidate()  # the lowers below it are hidden now
        return
    pdir = x.res.dir(parent, create=False, entry=e.name)
    if pdir is None:
        return
    for child in os.listdir(pdir):
        p = f"{pdir}/{child}"
        if p not in x.unpacked:
            x.remove(p)
