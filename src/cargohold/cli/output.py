"""Formatting for the command line: tables like ctr's, JSON, sizes, ages and times.

Sizes are ctr's IEC units (:func:`human_size`), ages ctr's words (:func:`age`), table times
RFC 3339 local to the second (:func:`created_at`), and every time in ``--format json`` an RFC
3339 UTC string with nanoseconds (:func:`json_time`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence

from cargohold.types import format_time
from cargohold.types import human_size as human_size  # re-exported: the CLI imports it here

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def age(ns: int) -> str:
    """How long ago a nanosecond timestamp was, in ctr's words (``Less than a second``,
    ``About a minute``, ``5 minutes``, ``About an hour``, ``3 hours``, ``2 days``, ...).
    """
    if not ns:
        return "-"
    secs = max(0.0, time.time() - ns / 1e9)
    if secs < 1:
        return "Less than a second"
    if secs < 60:
        return "1 second" if int(secs) == 1 else f"{int(secs)} seconds"
    minutes = int(secs // 60)
    if minutes < 60:
        return "About a minute" if minutes == 1 else f"{minutes} minutes"
    hours = round(secs / 3600)
    if hours == 1:
        return "About an hour"
    for limit, length, unit in ((48, 1, "hours"), (24 * 14, 24, "days"),
                                (24 * 60, 24 * 7, "weeks"), (24 * 730, 24 * 30, "months")):
        if hours < limit:
            return f"{hours // length} {unit}"
    return f"{int(secs // 3600) // 24 // 365} years"


def created_at(ns: int) -> str:
    """A table's time: RFC 3339 in local time to the second, as ctr prints CREATED AT
    (``2026-12-01T23:29:37Z`` when the local zone is UTC).
    """
    if not ns:
        return "-"
    from datetime import datetime

    text = datetime.fromtimestamp(ns // 1_000_000_000).astimezone().isoformat(
        timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def json_time(ns: int) -> str | None:
    """A JSON time: RFC 3339 UTC with nanoseconds (None for "never")."""
    return format_time(ns) if ns else None


def labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def echo(text: str = "") -> None:
    """Print a line on standard output (``click.echo`` without click: the hot commands print
    through this and never import it).
    """
    out = sys.stdout
    out.write(text + "\n")
    out.flush()


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
    echo("\n".join(out))


def emit_json(obj: Any) -> None:
    echo(json.dumps(obj, indent=2, sort_keys=True))


def is_tty() -> bool:
    return sys.stdout.isatty()

