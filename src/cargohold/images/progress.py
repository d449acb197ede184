"""Progress events of long transfers (import, unpack, export, pull, push): the library's side.

The library reports; it never draws. :class:`Progress` is the reporter every transfer takes:
five calls, safe from any thread, that keep track of the items in flight and hand each event to
a hook (``_on_start``, ``_on_advance``, ``_on_done``, ``_on_note``, ``_on_close``) which does
nothing here. What a person or a script sees (bars, plain lines, JSON) is drawn by
:mod:`cargohold.cli.progress`, which subclasses it::

    p.start("sha256:ab…", "layer 1/3", total=1234)
    p.advance("sha256:ab…", 4096)      # many times
    p.done("sha256:ab…")               # or done(key, "exists") / done(key, "failed")
                                       # done(key, label="blob 1a2b…"): the name learnt
    p.note("imported docker.io/library/alpine:3")
    p.close()

An item started with ``total=0`` has no known size (a compressed layer's plain size is known
only at its end). Calls with a key that was never started are ignored, so a caller never has
to track what is shown. Closing twice is fine.
"""

from __future__ import annotations

import threading
import time

from cargohold._record import record


@record
class Item:
    """One transfer in flight, as the hooks see it."""

    key: str
    label: str
    total: int
    current: int = 0
    started: float = 0.0
    last_event: float = 0.0


class Progress:
    """A reporter that keeps track of items and shows nothing (the ``none`` mode)."""

    mode = "none"

    def __init__(self) -> None:
        self._items: dict[str, Item] = {}
        self._mu = threading.Lock()
        self._closed = False

    # --- the API --------------------------------------------------------------------------
    def start(self, key: str, label: str, total: int = 0) -> None:
        """Begin an item; starting a key again restarts it."""
        now = time.monotonic()
        with self._mu:
            item = Item(key, label, max(0, int(total)), 0, now, 0.0)
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

    # --- what a display shows (called with the lock held) ----------------------------------
    def _on_start(self, item: Item) -> None:
        pass

    def _on_advance(self, item: Item) -> None:
        pass

    def _on_done(self, item: Item, status: str) -> None:
        pass

    def _on_note(self, text: str) -> None:
        pass

    def _on_close(self) -> None:
        pass
