"""Progress of long transfers (import, unpack, export): bars, plain lines, JSON events, nothing.

The library reports; :class:`Progress` decides what a person or a script sees. The API is five
calls, safe from any thread::

    p = Progress.open("auto")          # bars on a terminal, nothing in a pipe
    p.start("sha256:ab…", "layer 1/3", total=1234)
    p.advance("sha256:ab…", 4096)      # many times
    p.done("sha256:ab…")               # or done(key, "exists") / done(key, "failed")
                                       # done(key, label="blob 1a2b…"): the name learnt
    p.note("imported docker.io/library/alpine:3")
    p.close()

Modes:

- ``bars``: one line per item in flight (label, bytes, total, rate), redrawn in place on
  stderr at most ten times a second; a finished item is printed once and stays.
- ``plain``: one line per finished item and per note, nothing in between (good for logs).
- ``json``: one JSON object per line on stderr: ``{"event": "start"|"progress"|"done"|"note",
  "key", "label", "current", "total", "status", "text", "time"}``; ``progress`` events are
  throttled to about two per second per item.
- ``none``: nothing. ``auto`` is ``bars`` when stderr is a terminal, else ``none``.

An item started with ``total=0`` has no known size (a compressed layer's plain size is known
only at its end): bars show its bytes and rate without a percentage, JSON events carry
``"total": 0``. Calls with a key that was never started are ignored, so a caller never has
to track what a mode shows. Closing twice is fine.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

MODES = ("auto", "bars", "plain", "json", "none")


def human_bytes(n: float) -> str:
    """Decimal units, like ``hold`` tables (``12.3 MB``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


@dataclass
class _Item:
    key: str
    label: str
    total: int
    current: int = 0
    started: float = 0.0
    last_event: float = 0.0


class Progress:
    """Base class, and the ``none`` mode: accepts every call and shows nothing."""

    mode = "none"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self._items: dict[str, _Item] = {}
        self._mu = threading.Lock()
        self._closed = False

    @staticmethod
    def open(mode: str = "auto", stream: TextIO | None = None) -> Progress:
        """A reporter for ``mode`` (one of :data:`MODES`) writing to ``stream`` (stderr)."""
        out = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bars" if _isatty(out) and os.environ.get("TERM") != "dumb" else "none"
        cls = {"bars": _Bars, "plain": _Plain, "json": _Json, "none": Progress}.get(mode)
        if cls is None:
            raise ValueError(f"progress mode {mode!r}: not one of {', '.join(MODES)}")
        return cls(out)

    # --- the API --------------------------------------------------------------------------
    def start(self, key: str, label: str, total: int = 0) -> None:
        """Begin an item; starting a key again restarts it."""
        now = time.monotonic()
        with self._mu:
            item = _Item(key, label, max(0, int(total)), 0, now, 0.0)
            self._items[key] = item
            self._on_start(item)

    def advance(self, key: str, n: int) -> None:
        """Add ``n`` bytes to the item (ignored for unknown keys)."""
        with self._mu:
            item = self._items.get(key)
            if item is None:
                return
            item.current += n
            self._on_advance(item)

    def done(self, key: str, status: str = "done", label: str = "") -> None:
        """Finish the item with ``status`` (``done``, ``exists``, ``skipped``, ``failed``);
        a ``label`` replaces the one it started with (a name learnt on the way, a digest).
        """
        with self._mu:
            item = self._items.pop(key, None)
            if item is not None:
                if label:
                    item.label = label
                self._on_done(item, status)

    def note(self, text: str) -> None:
        """A line of text between the items."""
        with self._mu:
            self._on_note(text)

    def close(self) -> None:
        """Finish the display; items still open are left as they are."""
        with self._mu:
            if not self._closed:
                self._closed = True
                self._on_close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what each mode shows (called with the lock held) ---------------------------------
    def _on_start(self, item: _Item) -> None:
        pass

    def _on_advance(self, item: _Item) -> None:
        pass

    def _on_done(self, item: _Item, status: str) -> None:
        pass

    def _on_note(self, text: str) -> None:
        pass

    def _on_close(self) -> None:
        pass

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


def _rate(item: _Item, now: float) -> str:
    secs = now - item.started
    if secs <= 0.05:
        return ""
    return f"{human_bytes(item.current / secs)}/s"


def _summary(item: _Item, status: str, now: float) -> str:
    secs = now - item.started
    size = human_bytes(item.current or item.total)
    rate = _rate(item, now)
    tail = f" in {secs:.1f}s" + (f" ({rate})" if rate and item.current else "")
    return f"{item.label}: {status} {size}{tail if status == 'done' else ''}"


class _Plain(Progress):
    mode = "plain"

    def _on_done(self, item: _Item, status: str) -> None:
        self._write(_summary(item, status, time.monotonic()) + "\n")

    def _on_note(self, text: str) -> None:
        self._write(text + "\n")


class _Json(Progress):
    mode = "json"
    INTERVAL = 0.5

    def _event(self, event: str, item: _Item | None = None, **kw: object) -> None:
        obj: dict[str, object] = {"event": event, "time": round(time.time(), 3)}
        if item is not None:
            obj.update(key=item.key, label=item.label, current=item.current, total=item.total)
        obj.update(kw)
        self._write(json.dumps(obj, sort_keys=True) + "\n")

    def _on_start(self, item: _Item) -> None:
        self._event("start", item)

    def _on_advance(self, item: _Item) -> None:
        now = time.monotonic()
        if now - item.last_event >= self.INTERVAL:
            item.last_event = now
            self._event("progress", item)

    def _on_done(self, item: _Item, status: str) -> None:
        self._event("done", item, status=status,
                    seconds=round(time.monotonic() - item.started, 3))

    def _on_note(self, text: str) -> None:
        self._event("note", text=text)


class _Bars(Progress):
    mode = "bars"
    INTERVAL = 0.1
    WIDTH = 24

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._drawn = 0  # lines of live items currently on screen
        self._last = 0.0

    def _line(self, item: _Item, now: float) -> str:
        if item.total:
            frac = min(1.0, item.current / item.total)
            fill = int(frac * self.WIDTH)
            bar = "=" * fill + (">" if fill < self.WIDTH else "") + " " * (self.WIDTH - fill - 1)
            size = f"{human_bytes(item.current)} / {human_bytes(item.total)}"
        else:
            bar = "." * self.WIDTH
            size = human_bytes(item.current)
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

    def _on_start(self, item: _Item) -> None:
        self._redraw(force=True)

    def _on_advance(self, item: _Item) -> None:
        self._redraw()

    def _on_done(self, item: _Item, status: str) -> None:
        self._redraw(force=True, finished=[_summary(item, status, time.monotonic())])

    def _on_note(self, text: str) -> None:
        self._redraw(force=True, finished=[text])

    def _on_close(self) -> None:
        self._redraw(force=True)
