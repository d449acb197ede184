"""Pure tri-colour marking: roots plus a reference function give the reachable set. No I/O.

Nodes are ``(type, namespace, key)`` tuples. A *flat* node (type with :data:`FLAT` set) is
reached like its plain twin, but the reference function may follow fewer edges from it (a
``containerd.io/gc.flat`` lease holds only its own resources, not what their labels point at);
the reachable set always holds the plain form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

CONTENT = 1
SNAPSHOT = 2
CONTAINER = 3
IMAGE = 5
LEASE = 6
INGEST = 7
FLAT = 0x20
TYPE_MASK = 0x1F

NAMES = {CONTENT: "content", SNAPSHOT: "snapshot", CONTAINER: "container", IMAGE: "image",
         LEASE: "lease", INGEST: "ingest"}


class Node(NamedTuple):
    """A GC node. Snapshot keys are ``<snapshotter>/<key>``."""

    type: int
    ns: str
    key: str

    def plain(self) -> Node:
        return self if self.type <= TYPE_MASK else Node(self.type & TYPE_MASK, self.ns, self.key)

    def flat(self) -> Node:
        return Node(self.type | FLAT, self.ns, self.key)

    def __str__(self) -> str:
        return f"{NAMES.get(self.type & TYPE_MASK, self.type)} {self.key} (namespace {self.ns})"


def plain(n: tuple[int, str, str]) -> tuple[int, str, str]:
    """The plain form of a node given as any 3-tuple (hot paths use bare tuples)."""
    return n if n[0] <= TYPE_MASK else (n[0] & TYPE_MASK, n[1], n[2])


def mark(roots: Iterable[Node], refs: Callable[[Node], Iterable[Node]]) -> set[Node]:
    """Every node reachable from ``roots`` through ``refs`` (roots included), in plain form.

    Grey nodes wait on an explicit stack (no recursion, so chains of any depth work); a node
    turns black once its references are queued. A flat node and its plain twin are distinct
    while grey (they expand differently) and the same once black.
    """
    black: set[Node] = set()
    seen: set[Node] = set()
    grey: list[Node] = []
    for r in roots:
        if r not in seen:
            seen.add(r)
            grey.append(r)
    while grey:
        n = grey.pop()
        black.add(n if n[0] <= TYPE_MASK else (n[0] & TYPE_MASK, n[1], n[2]))
        for c in refs(n):
            if c not in seen:
                seen.add(c)
                grey.append(c)
    return black


def paths(roots: Iterable[Node], refs: Callable[[Node], Iterable[tuple[Node, str]]],
          target: Node) -> list[tuple[Node, str]] | None:
    """One shortest chain from a root to ``target`` as ``[(node, how it was reached)]``.

    The first element is the root (its reason says why it is a root); None when unreachable.
    Breadth-first, so the chain shown is the shortest.
    """
    from collections import deque

    parent: dict[Node, tuple[Node | None, str]] = {}
    q: deque[Node] = deque()
    for r in roots:
        if r not in parent:
            parent[r] = (None, "root")
            q.append(r)
    found: Node | None = None
    while q:
        n = q.popleft()
        if plain(n) == target:
            found = n
            break
        for c, why in refs(n):
            if c not in parent:
                parent[c] = (n, why)
                q.append(c)
    if found is None:
        return None
    chain: list[tuple[Node, str]] = []
    cur: Node | None = found
    while cur is not None:
        prev, why = parent[cur]
        chain.append((Node(*plain(cur)), why))
        cur = prev
    chain.reverse()
    return chain
