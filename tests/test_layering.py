"""Imports point down the layer list of DESIGN.md §1: a lower layer never imports a higher.

Every module is checked, and every import counts: at module level, inside functions, and under
``if TYPE_CHECKING:``. The embedded :mod:`cargohold.client` sits right below ``images``: image
operations take a Client, and the client needs nothing above GC and fsck.
"""

from __future__ import annotations

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "cargohold"

# Rank of each top-level part; a module may import only parts of equal or lower rank
# (equal rank only within the same part).
RANKS = {
    "errors": 0, "types": 0, "_fsutil": 0, "_lmdb": 0, "_oserror": 0, "_reserve": 0, "_record": 0,
    "_sha": 0,
    "filters": 0, "config": 0, "mount": 0, "notices": 0, "__init__": 0, "__main__": 13,
    "store": 1, "snapshotters": 2, "differ": 2, "metadata": 3, "leases": 4, "gc": 5,
    "fsck": 6, "client": 7, "images": 8, "fetch": 9, "tasks": 10, "probes": 11,
    "service": 11, "cli": 12,
}
BASE = {"errors", "types", "_fsutil", "_lmdb", "_oserror", "_reserve", "_record", "_sha",
        "filters", "config", "mount", "notices", "__init__"}


def part_of(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def imported_parts(path: pathlib.Path) -> set[str]:
    """Every part ``path`` imports, at run time or only for type checking (an annotation that
    names a higher layer is a dependency on it all the same)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "cargohold":
            # from cargohold import mount (a part); __version__ and the like are the package's
            names = [f"cargohold.{a.name}" for a in node.names if not a.name.startswith("__")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for n in names:
            if n.startswith("cargohold."):
                out.add(n.split(".")[1])
    return out


def test_imports_point_down():
    bad = []
    for path in SRC.rglob("*.py"):
        me = part_of(path)
        for other in imported_parts(path):
            if other == me:
                continue
            assert other in RANKS, f"{other} is not in the layer table: add it"
            if me in BASE and other in BASE:
                continue
            if RANKS[other] >= RANKS[me]:
                bad.append(f"{path.relative_to(SRC)} imports cargohold.{other}")
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_snapshotters_and_differ_do_not_know_each_other():
    for part, forbidden in (("snapshotters", "differ"), ("differ", "snapshotters")):
        for path in (SRC / part).rglob("*.py"):
            assert forbidden not in imported_parts(path), path
