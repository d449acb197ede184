"""The differ: apply layer tars to mounts and compare mounts into layer tars.

``apply(desc, mounts, *, reader, ...)`` and ``compare(lower, upper, *, store, ...)`` are
imported lazily so that ``import cargohold.differ`` stays cheap (``hold`` must start fast).
"""

from __future__ import annotations

from typing import Any

__all__ = ["apply", "compare"]


def __getattr__(name: str) -> Any:
    if name == "apply":
        from cargohold.differ.apply import apply

        return apply
    if name == "compare":
        from cargohold.differ.compare import compare

        return compare
    raise AttributeError(name)
