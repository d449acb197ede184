"""The snapshotter contract shared by every backend and by the per-namespace metadata wrapper.

Kinds: ACTIVE (writable, from ``prepare``), VIEW (read-only, from ``view``), COMMITTED (from
``commit``; the only kind that can be a parent). Keys and names share one key space.

- ``prepare(key, parent)`` / ``view(key, parent)``: a new active/view snapshot on top of the
  committed ``parent`` ("" = empty). Returns its mounts. An existing key raises AlreadyExists;
  a parent that is missing raises NotFound, one that is not committed InvalidArgument.
- ``commit(name, key)``: turns active ``key`` into committed ``name`` (same internal id);
  ``key`` stops existing. Usage is computed here once and stored. Views cannot be committed
  (FailedPrecondition); a taken name raises AlreadyExists.
- ``remove(key, *, defer=False)``: any kind; a snapshot with children raises
  FailedPrecondition. The key is gone when it returns; the object's deletion may run after
  the bookkeeping commits, and with ``defer`` it is left to ``cleanup()`` (so a caller that
  holds a lock, like GC, lets go of it before the slow part).
- ``mounted()``: keys whose objects a kernel mount uses now -> those mount points.
- ``mounts(key)``: active or view only; committed raises FailedPrecondition.
- ``stat``/``update`` (labels only: fieldpaths ``labels`` or ``labels.<k>``)/``usage``/
  ``walk(fn, filters)`` (filters on ``kind``, ``name``, ``parent``, ``labels.<k>``).
- ``close()`` is idempotent. ``cleanup()`` reclaims disk left by removals (called after GC).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence

from cargohold._record import field, record
from cargohold.filters import Clause, Filter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    K = TypeVar("K")



class Kind(enum.IntEnum):
    """Snapshot kinds, numbered as containerd numbers them."""

    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3

    def __str__(self) -> str:
        return self.name.capitalize()

    @classmethod
    def parse(cls, text: str) -> Kind:
        return cls[text.upper()]


@record(frozen=True)
class Info:
    """What ``stat`` returns."""

    name: str
    kind: Kind
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0


@record(frozen=True)
class Usage:
    """Bytes and inodes a snapshot uses on its own (its parents excluded)."""

    size: int = 0
    inodes: int = 0

    def add(self, other: Usage) -> Usage:
        return Usage(self.size + other.size, self.inodes + other.inodes)


def __getattr__(name: str) -> object:
    # The protocol lives in snapshotters.protocols (typing's Protocol costs a hot command its
    # start-up); ``from cargohold.snapshotters.api import Snapshotter`` still finds it.
    if name == "Snapshotter":
        from cargohold.snapshotters import protocols

        return protocols.Snapshotter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def kind_filter(filters: Sequence[str]) -> Filter:
    """``filters`` for a snapshot walk, with the values of ``kind`` clauses lower-cased:
    containerd prints kinds capitalised (``Committed``) but users type them in lower case, so
    both match the lower-case kind a walk compares with.
    """
    flt = Filter(filters)
    flt.alternatives = [
        [Clause(c.path, c.op, c.value.lower()) if c.path == ("kind",) else c for c in alt]
        for alt in flt.alternatives]
    return flt


def children_first(items: Iterable[K], parent: Mapping[K, K]) -> list[K]:
    """``items`` ordered so that every snapshot comes before its parent: deepest first, ties in
    the order given. ``parent`` maps an item to its parent (absent or empty: none); a loop in it
    ends the walk. The one order in which a chain can be removed.
    """
    def depth(n: K) -> int:
        d, seen = 0, set()
        while parent.get(n) and n not in seen:
            seen.add(n)
            n = parent[n]
            d += 1
        return d

    return sorted(items, key=depth, reverse=True)  # sorted is stable, reversed or not
