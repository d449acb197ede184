"""Which images need a damaged blob: so that fsck never calls a store clean that is not.

A corrupt blob (found now) or one ``fsck --repair`` moved aside earlier (its records wait under
``quarantine/``, :func:`cargohold.metadata.content.quarantine_records`) leaves every image that
reaches it incomplete, in every namespace that had it. This module finds them by following, from
each image's target, the ``containerd.io/gc.ref.content*`` labels that import and pull put on
every parent blob (index → manifests → config and layers): metadata only, no blob is read.

Each such image is an ``incomplete`` problem that fsck cannot repair itself (so the report is
never "clean") and says how to heal: import or pull the image again in any namespace — the
blob's next commit restores the records in every namespace that lost them. A moved-aside blob
that no image needs any more is only a note, and ``--repair`` forgets it.
"""

from __future__ import annotations

from collections.abc import Iterable

from cargohold.fsck.check import Problem
from cargohold.metadata import images, namespaces
from cargohold.metadata.content import forget_quarantined, quarantined, record_labels
from cargohold.metadata.db import DB, Tx
from cargohold.types import LABEL_GC_REF_CONTENT


def _children(tx: Tx, ns: str, digest: str) -> list[str]:
    return [v for k, v in record_labels(tx, ns, digest).items()
            if k == LABEL_GC_REF_CONTENT or k.startswith((LABEL_GC_REF_CONTENT + ".",
                                                          LABEL_GC_REF_CONTENT + "/"))]


def images_needing(tx: Tx, damaged: Iterable[str]) -> list[tuple[str, str, str]]:
    """``(namespace, image, digest)`` for every image that reaches a damaged digest."""
    damaged = set(damaged)
    out = []
    if not damaged:
        return out
    for ns in namespaces.list_all(tx):
        below: dict[str, set[str]] = {}  # digest -> damaged digests it reaches (memo)
        for img in images.list_images(tx, ns):
            t = img.target.digest
            for d in sorted(_reach(tx, ns, t, frozenset({t}), damaged, below)):
                out.append((ns, img.name, d))
    return out


def _reach(tx: Tx, ns: str, d: str, path: frozenset[str], damaged: set[str],
           below: dict[str, set[str]]) -> set[str]:
    if d in below:
        return below[d]
    hit = {d} & damaged
    for c in _children(tx, ns, d):
        if c not in path:  # labels could loop; never follow one round again
            hit |= _reach(tx, ns, c, path | {c}, damaged, below)
    below[d] = hit
    return hit


def check_needed(db: DB, corrupt: set[str], blob_exists: set[str], *,
                 repair: bool) -> tuple[list[Problem], list[str]]:
    """Problems for images needing ``corrupt`` or moved-aside blobs; notes; and with
    ``repair`` the quarantine entries of blobs that are whole again or that nothing needs are
    forgotten. ``blob_exists`` is the set of digests whose files are in the store now.
    """
    with db.view() as tx:
        aside = quarantined(tx)
        # A blob whose file came back without a commit here (another tool) heals nothing:
        # only a commit restores records. Such entries are only notes.
        needing = images_needing(tx, set(corrupt) | set(aside))
    problems = []
    needed = set()
    for ns, name, d in needing:
        needed.add(d)
        if d in corrupt:
            how = "which is corrupt in the store"
        else:
            how = ("which fsck moved aside as corrupt (namespaces that lost it: "
                   f"{', '.join(sorted(aside[d]))})")
        problems.append(Problem(
            "incomplete", f"namespace {ns} image {name}", f"needs blob {d}, {how}; heal it "
            "by importing or pulling the image again, in any namespace: every namespace that "
            "had the blob gets it back", ""))
    notes = []
    forget = [d for d in aside if d not in needed or d in blob_exists]
    for d in forget:
        notes.append(f"note: blob {d} was moved aside as corrupt; "
                     + ("its file is back but no namespace records it yet"
                        if d in blob_exists else "no image needs it any more")
                     + ("; forgotten" if repair else "; --repair forgets it"))
    if repair and forget:
        with db.update() as tx:
            for d in forget:
                forget_quarantined(tx, d)
    return problems, notes

