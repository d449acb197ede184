"""Counters of the service, and their Prometheus text exposition format.

:class:`Counters` is a small thread-safe bag of monotonically growing numbers, some with one
label (``code`` for requests). :func:`prometheus_text` renders them with ``# HELP`` and
``# TYPE`` lines, as ``GET /metrics`` serves them (``text/plain; version=0.0.4``).
"""

from __future__ import annotations

import threading
from collections import defaultdict

# name -> (type, help); the names a scrape sees are cargohold_<name>.
METRICS = {
    "gc_runs_total": ("counter", "Garbage collections run by the service."),
    "gc_failures_total": ("counter", "Garbage collections that failed."),
    "gc_bytes_freed_total": ("counter", "Bytes freed by the service's collections."),
    "gc_objects_removed_total": ("counter", "Records and files removed by collections."),
    "gc_pause_seconds_total": ("counter",
                               "Seconds collections spent marking and sweeping metadata."),
    "gc_last_pause_seconds": ("gauge", "Mark and sweep seconds of the last collection."),
    "reloads_total": ("counter", "Configuration reloads, by result."),
    "mounts_swept_total": ("counter", "Stale mount records cleaned up."),
    "registry_requests_total": ("counter", "Registry requests, by HTTP status code."),
    "registry_bytes_served_total": ("counter", "Body bytes the registry sent."),
    "registry_bytes_received_total": ("counter", "Body bytes the registry received."),
    "registry_active_requests": ("gauge", "Registry requests in progress."),
    "uptime_seconds": ("gauge", "Seconds since the service started."),
}


class Counters:
    """Thread-safe counters; ``add(name, n, label)``; ``snapshot()`` for reading."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._plain: dict[str, float] = defaultdict(float)
        self._labelled: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def add(self, name: str, n: float = 1, label: str = "") -> None:
        with self._mu:
            if label:
                self._labelled[name][label] += n
            else:
                self._plain[name] += n

    def set(self, name: str, value: float) -> None:
        with self._mu:
            self._plain[name] = value

    def get(self, name: str) -> float:
        with self._mu:
            return self._plain.get(name, 0)

    def labelled(self, name: str) -> dict[str, float]:
        with self._mu:
            return dict(self._labelled.get(name, {}))


LABEL_NAMES = {"registry_requests_total": "code", "reloads_total": "result"}


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def prometheus_text(c: Counters) -> str:
    """Every metric of :data:`METRICS`, zero when never counted."""
    out = []
    for name, (kind, help_) in METRICS.items():
        full = f"cargohold_{name}"
        out += [f"# HELP {full} {help_}", f"# TYPE {full} {kind}"]
        if name in LABEL_NAMES:
            for label, v in sorted(c.labelled(name).items()):
                out.append(f'{full}{{{LABEL_NAMES[name]}="{label}"}} {_num(v)}')
        else:
            out.append(f"{full} {_num(c.get(name))}")
    return "\n".join(out) + "\n"
