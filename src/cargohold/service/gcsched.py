"""The GC scheduler: when to collect, with containerd's knobs and their meaning.

:class:`Policy` is containerd's ``plugins/gc/scheduler.go`` as a state machine with the clock
passed in (tested with a fake one); :class:`SchedulerThread` drives it over a root:

- the first collection runs ``startup_delay`` after start;
- every metadata write since the last collection is a *mutation*, and every record removed
  (an image, a blob, a snapshot, a lease) a *deletion*. Both are read from counters in the
  database (``epoch`` and ``removals``, :mod:`cargohold.metadata.db`), so writes by any
  process count — the embedded ``hold`` beside the service included;
- ``deletion_threshold`` > 0: that many deletions schedule a collection ``schedule_delay``
  later; 0: a deletion makes the next periodic tick run (and schedules one when none is
  pending). ``mutation_threshold`` mutations schedule one when none is pending;
- after each collection the next tick comes ``interval`` later, where ``interval = avg /
  pause_threshold - avg`` and ``avg`` is the mean pause of all collections so far (5 ms at
  least), so GC holds the metadata for about ``pause_threshold`` of the time. A tick with no
  deletion and too few mutations since the last collection is skipped (rescheduled);
- a failed collection (another ``hold gc`` holds the GC lock, say) is retried one interval
  plus a second later.

The pause of a collection is its metadata phase (mark and sweep: ``mark_seconds +
sweep_seconds``), as containerd counts the time its metadata lock is held. With
``pause_threshold = 0`` there are no periodic ticks: only thresholds and triggers collect.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cargohold._record import record
from cargohold.service.settings import GCSettings

MIN_PAUSE = 0.005
FIRST_INTERVAL = 1.0


@record
class Policy:
    """containerd's scheduling rules (see the module docstring); times in seconds."""

    settings: GCSettings
    interval: float = FIRST_INTERVAL
    due: float | None = None  # when the pending tick fires; None = none pending
    deletions: int = 0
    mutations: int = 0
    triggered: bool = False
    collections: int = 0
    pause_total: float = 0.0

    def start(self, now: float) -> None:
        self._schedule(now, self.settings.startup_delay)

    def _schedule(self, now: float, delay: float) -> None:
        self.due = now + max(0.0, delay)

    def event(self, now: float, *, deletions: int = 0, mutations: int = 0,
              manual: bool = False) -> None:
        """Deletions and mutations seen since the last event, or a manual trigger."""
        s = self.settings
        self.deletions += deletions
        self.mutations += mutations
        self.triggered = self.triggered or manual
        pending = self.due is not None
        if (self.triggered
                or (s.deletion_threshold > 0 and self.deletions >= s.deletion_threshold)
                or (not pending and (
                    (s.deletion_threshold == 0 and self.deletions > 0)
                    or (s.mutation_threshold > 0 and self.mutations >= s.mutation_threshold)))):
            if self.due is None or self.due > now + s.schedule_delay:
                self._schedule(now, s.schedule_delay)

    def should_run(self, now: float) -> bool:
        """At a due tick: whether to collect (True) or skip it (rescheduled here)."""
        if self.due is None or now < self.due:
            return False
        self.due = None
        s = self.settings
        if (not self.triggered and self.collections > 0 and self.deletions == 0
                and (s.mutation_threshold == 0 or self.mutations < s.mutation_threshold)):
            self._periodic(now)
            return False
        return True

    def _periodic(self, now: float) -> None:
        if self.settings.pause_threshold > 0:
            self._schedule(now, self.interval)

    def collected(self, now: float, pause: float) -> None:
        """A collection finished after ``pause`` seconds of metadata work."""
        self.collections += 1
        self.pause_total += pause
        self.deletions = self.mutations = 0
        self.triggered = False
        avg = max(MIN_PAUSE, self.pause_total / self.collections)
        t = self.settings.pause_threshold
        if t > 0:
            self.interval = avg / t - avg
        self._periodic(now)

    def failed(self, now: float) -> None:
        """A collection failed: try again one interval and a second later."""
        self._schedule(now, self.interval + 1.0)


class SchedulerThread:
    """Runs :class:`Policy` over a root in a thread.

    ``counters()`` returns ``(epoch, removals)`` as the database has them now; ``collect()``
    runs one collection and returns its result (a :class:`cargohold.gc.collector.Result`),
    raising CargoholdError on failure; ``extra_trigger()`` is asked at each poll whether
    something else (a lease or ingest that expired) wants a collection. ``on_done(result,
    error, seconds)`` reports each run.
    """

    POLL = 0.5

    def __init__(self, settings: GCSettings, *, counters: Callable[[], tuple[int, int]],
                 collect: Callable[[], Any], extra_trigger: Callable[[], str] | None = None,
                 on_done: Callable[[Any, str, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = Policy(settings)
        self.counters = counters
        self.collect = collect
        self.extra_trigger = extra_trigger or (lambda: "")
        self.on_done = on_done or (lambda r, e, s: None)
        self.clock = clock
        self.running = False  # a collection is in progress
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._mu = threading.Lock()
        self._thread: threading.Thread | None = None
        self._seen = (0, 0)

    def configure(self, settings: GCSettings) -> None:
        """New knobs (a reload): they apply from the next event on; the averages stay."""
        with self._mu:
            self.policy.settings = settings
        self._wake.set()

    def trigger(self) -> None:
        with self._mu:
            self.policy.event(self.clock(), manual=True)
        self._wake.set()

    def start(self) -> None:
        self._seen = self.counters()
        self.policy.start(self.clock())
        self._thread = threading.Thread(target=self._run, name="cargohold-gc", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop ticking; a collection in progress finishes first (bounded by ``timeout``)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _poll(self, now: float) -> None:
        epoch, removals = self.counters()
        de, dr = epoch - self._seen[0], removals - self._seen[1]
        self._seen = (epoch, removals)
        why = self.extra_trigger()
        with self._mu:
            if de > 0 or dr > 0 or why:
                self.policy.event(now, deletions=max(0, dr) + (1 if why else 0),
                                  mutations=max(0, de))

    def next_due(self) -> float | None:
        with self._mu:
            return self.policy.due

    def _run(self) -> None:
        while not self._stop.is_set():
            now = self.clock()
            try:
                self._poll(now)
            except Exception:  # noqa: BLE001 - a failed poll (busy root) is tried again
                pass
            with self._mu:
                run = self.policy.should_run(now)
            if run:
                self._collect_once()
            due = self.next_due()
            wait = self.POLL if due is None else min(self.POLL, max(0.0, due - self.clock()))
            self._wake.wait(wait)
            self._wake.clear()

    def _collect_once(self) -> None:
        before = self.counters()
        self.running = True
        t0 = self.clock()
        try:
            res = self.collect()
        except Exception as exc:  # noqa: BLE001 - reported, retried; the loop must go on
            self.running = False
            with self._mu:
                self.policy.failed(self.clock())
            self.on_done(None, str(exc), self.clock() - t0)
            return
        self.running = False
        after = self.counters()
        own = sum(1 for r in res.removed if r.kind in ("content", "image", "snapshot", "lease"))
        others = max(0, after[1] - before[1] - own)  # removals by other writers meanwhile
        self._seen = after
        with self._mu:
            self.policy.collected(self.clock(), res.mark_seconds + res.sweep_seconds)
            if others:
                self.policy.event(self.clock(), deletions=others)
        self.on_done(res, "", self.clock() - t0)
