"""Formatting for the command line: tables like ctr's, JSON, sizes and ages."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import click

from cargohold.types import human_size as human_size  # re-exported: the CLI imports it here


def age(ns: int) -> str:
    """How long ago a nanosecond timestamp was, roughly."""
    if not ns:
        return "-"
    secs = max(0, time.time() - ns / 1e9)
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= length:
            n = int(secs // length)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{int(secs)} seconds"


def labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print rows under headers in aligned columns (tab-separated when not a terminal)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    fmt = "  ".join("{:<%d}" % w for w in widths[:-1]) + ("  {}" if len(widths) > 1 else "{}")
    out = [fmt.format(*headers).rstrip()]
    out += [fmt.format(*r).rstrip() for r in rows]
    click.echo("\n".join(out))


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def is_tty() -> bool:
    return sys.stdout.isatty()


format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]),
                             default="table", show_default=True, help="Output format.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="Print only names/ids.")
