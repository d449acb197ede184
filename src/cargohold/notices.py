"""Telling the user something that is not an error while work goes on (a long lock wait).

The library never prints: it calls :func:`notice`, and whoever drives it decides where that goes
(:func:`set_notice`; the ``hold`` command prints on stderr). By default notices go nowhere.
Kept apart from everything else so that setting the hook costs a command nothing at start-up.
"""

from __future__ import annotations

from collections.abc import Callable

_notice: Callable[[str], None] | None = None


def set_notice(fn: Callable[[str], None] | None) -> None:
    """Where :func:`notice` messages go (None: nowhere)."""
    global _notice
    _notice = fn


def notice(message: str) -> None:
    """Tell the user ``message`` (a line, no trailing newline), if anyone listens."""
    if _notice is not None:
        _notice(message)
