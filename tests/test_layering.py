"""Imports point down the layer list of DESIGN.md §1: a lower layer never imports a higher."""

from __future__ import annotations

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "cargohold"

# Rank of each top-level part; a module may import only parts of equal or lower rank
# (equal rank only within the same part).
RANKS = {
    "errors": 0, "types": 0, "_fsutil": 0, "_lmdb": 0, "_oserror": 0, "_reserve": 0,
    "filters": 0, "config": 0, "mount": 0, "overlaymount": 0, "__init__": 0, "__main__": 13,
    "store": 1, "snapshotters": 2, "differ": 2, "metadata": 3, "leases": 4, "gc": 5,
    "fsck": 6, "images": 7, "fetch": 8, "tasks": 9, "client": 10, "service": 11, "cli": 12,
}
BASE = {"errors", "types", "_fsutil", "_lmdb", "_oserror", "_reserve", "filters", "config",
        "mount", "overlaymount", "__init__"}


def part_of(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``if TYPE_CHECKING:`` blocks (not runtime dependencies)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            out.update(id(n) for n in ast.walk(node))
    return out


def imported_parts(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree)
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for n in names:
            if n == "cargohold":
                continue
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
