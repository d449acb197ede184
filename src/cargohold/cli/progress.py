"""How ``hold`` shows the progress of long transfers: bars, plain lines, JSON events, nothing.

The library reports events to a :class:`~cargohold.images.progress.Progress`; the classes here
subclass it and draw, always on stderr (or the stream given), never on stdout:

- ``bars``: one line per item in flight (label, bytes, total, rate), redrawn in place at most
  ten times a second; a finished item is printed once and stays.
- ``plain``: one line per finished item and per note, nothing in between (good for logs).
- ``json``: one JSON object per line: ``{"event": "start"|"progress"|"done"|"note", "key",
  "label", "current", "total", "status", "text", "time"}``; ``progress`` events are throttled
  to about two per second per item. ``"total": 0`` means the size is not known.
- ``none``: nothing. ``auto`` is ``bars`` when stderr is a terminal, else ``none``.

Sizes are in IEC units, as everywhere in hold's output.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TextIO

from cargohold.images.progress import Item, Progress
from cargohold.types import human_size

MODES = ("auto", "bars", "plain", "json", "none")


def open_progress(mode: str = "auto", stream: TextIO | None = None) -> Progress:
    """A display for ``mode`` (one of :data:`MODES`) writing to ``stream`` (stderr)."""
    out = stream if stream is not None else sys.stderr
    if mode == "auto":
        mode = "bars" if _isatty(out) and os.environ.get("TERM") != "dumb" else "none"
    if mode == "none":
        return Progress()
    cls = {"bars": _Bars, "plain": _Plain, "json": _Json}.get(mode)
    if cls is None:
        raise ValueError(f"progress mode {mode!r}: not one of {', '.join(MODES)}")
    return cls(out)


class _Shown(Progress):
    """A display: where it writes."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed terminal must not fail the transfer


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _rate(item: Item, now: float) -> str:
    secs = now - item.started
    if secs <= 0.05:
        return ""
    return f"{human_size(item.current / secs)}/s"


def _summary(item: Item, status: str, now: float) -> str:
    secs = now - item.started
    size = human_size(item.current or item.total)
    rate = _rate(item, now)
    tail = f" in {secs:.1f}s" + (f" ({rate})" if rate and item.current else "")
    return f"{item.label}: {status} {size}{tail if status == 'done' else ''}"


class _Plain(_Shown):
    mode = "plain"

    def _on_done(self, item: Item, status: str) -> None:
        self._write(_summary(item, status, time.monotonic()) + "\n")

    def _on_note(self, text: str) -> None:
        self._write(text + "\n")


class _Json(_Shown):
    mode = "json"
    INTERVAL = 0.5

    def _event(self, event: str, item: Item | None = None, **kw: object) -> None:
        obj: dict[str, object] = {"event": event, "time": round(time.time(), 3)}
        if item is not None:
            obj.update(key=item.key, label=item.label, current=item.current, total=item.total)
        obj.update(kw)
        self._write(json.dumps(obj, sort_keys=True) + "\n")

    def _on_start(self, item: Item) -> None:
        self._event("start", item)

    def _on_advance(self, item: Item) -> None:
        now = time.monotonic()
        if now - item.last_event >= self.INTERVAL:
            item.last_event = now
            self._event("progress", item)

    def _on_done(self, item: Item, status: str) -> None:
        self._event("done", item, status=status,
                    seconds=round(time.monotonic() - item.started, 3))

    def _on_note(self, text: str) -> None:
        self._event("note", text=text)


class _Bars(_Shown):
    mode = "bars"
    INTERVAL = 0.1
    WIDTH = 24

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._drawn = 0  # lines of live items currently on screen
        self._last = 0.0

    def _line(self, item: Item, now: float) -> str:
        if item.total:
            frac = min(1.0, item.current / item.total)
            fill = int(frac * self.WIDTH)
            bar = "=" * fill + (">" if fill < self.WIDTH else "") + " " * (self.WIDTH - fill - 1)
            size = f"{human_size(item.current)} / {human_size(item.total)}"
        else:
            bar = "." * self.WIDTH
            size = human_size(item.current)
        return f"{item.label[:40]:<40} [{bar[:self.WIDTH]}] {size:>21} {_rate(item, now):>11}"

    def _redraw(self, force: bool = False, finished: list[str] | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.INTERVAL:
            return
        self._last = now
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}A")  # back to the first live line
        for text in finished or ():
            out.append("\x1b[2K" + text + "\n")
        live = list(self._items.values())
        for item in live:
            out.append("\x1b[2K" + self._line(item, now) + "\n")
        # Clear lines left over from a longer previous frame.
        extra = self._drawn - len(live) - len(finished or ())
        for _ in range(max(0, extra)):
            out.append("\x1b[2K\n")
        if extra > 0:
            out.append(f"\x1b[{extra}A")
        self._drawn = len(live)
        self._write("".join(out))

    def _on_start(self, item: Item) -> None:
        self._redraw(force=True)

    def _on_advance(self, item: Item) -> None:
        self._redraw()

    def _on_done(self, item: Item, status: str) -> None:
        self._redraw(force=True, finished=[_summary(item, status, time.monotonic())])

    def _on_note(self, text: str) -> None:
        self._redraw(force=True, finished=[text])

    def _on_close(self) -> None:
        self._redraw(force=True)
