"""containerd's GC scheduling rules, as a table over a fake clock."""

from __future__ import annotations

import pytest

from cargohold.service.gcsched import Policy
from cargohold.service.settings import GCSettings


def test_startup_delay_then_skipped_ticks():
    p = Policy(GCSettings(startup_delay=0.1))
    p.start(0.0)
    assert not p.should_run(0.05) and p.should_run(0.1)
    p.collected(0.2, pause=0.01)  # interval = 0.01/0.02 - 0.01 = 0.49
    assert p.interval == pytest.approx(0.49)
    assert p.due == pytest.approx(0.69)
    assert not p.should_run(0.69), "nothing happened: the tick is skipped"
    assert p.due == pytest.approx(0.69 + 0.49)


@pytest.mark.parametrize("settings,events,runs_at", [
    # deletion_threshold 0: a deletion schedules at once when nothing is pending ...
    (GCSettings(), [(1.0, 1, 0)], 1.0),
    # ... schedule_delay later
    (GCSettings(schedule_delay=0.5), [(1.0, 1, 0)], 1.5),
    # deletion_threshold 3: two deletions do not, the third does
    (GCSettings(deletion_threshold=3), [(1.0, 2, 0), (2.0, 1, 0)], 2.0),
    # mutations: the threshold schedules when none is pending
    (GCSettings(mutation_threshold=5), [(1.0, 0, 4), (1.5, 0, 1)], 1.5),
])
def test_thresholds(settings, events, runs_at):
    p = Policy(settings)
    p.collections = 1  # after the first collection, with no periodic tick pending
    p.due = None
    for t, dels, muts in events:
        p.event(t, deletions=dels, mutations=muts)
    assert p.due == pytest.approx(runs_at)
    assert p.should_run(runs_at)


def test_pending_tick_runs_after_a_deletion_and_failures_back_off():
    p = Policy(GCSettings())
    p.collections, p.interval, p.due = 1, 2.0, 10.0
    p.event(5.0, deletions=1)  # deletion_threshold 0: no new schedule, the tick will run
    assert p.due == 10.0 and p.should_run(10.0)
    p.failed(10.0)
    assert p.due == pytest.approx(13.0)
    p.event(11.0, manual=True)
    assert p.due == pytest.approx(11.0), "a manual trigger runs now"


def test_zero_pause_threshold_has_no_periodic_ticks():
    p = Policy(GCSettings(pause_threshold=0.0))
    p.start(0.0)
    assert p.should_run(0.1)
    p.collected(0.2, 0.01)
    assert p.due is None
    p.event(1.0, deletions=1)
    assert p.due == 1.0
