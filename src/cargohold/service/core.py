"""The service: the duties over one root, their state and counters, reload, start and stop.

:class:`Service` owns one :class:`~cargohold.client.Client` (the same library and root as the
embedded ``hold``, which keeps working beside it) and runs the duties in threads:

- the GC scheduler (:mod:`.gcsched`) fed by the database's counters and by lease and ingest
  expiry (:mod:`.expiry`);
- the stale-mount sweep (:mod:`.mountsweep`) every ``mount_sweep_interval``.

APIs (the registry, the control socket, later containerd's gRPC) are attached with
:meth:`Service.attach`: each is an :class:`API` that reads :meth:`Service.status` and calls
the service's methods; the service never imports one. On a read-only root the duties stay off
and the APIs serve reads.

Reload (:meth:`Service.reload`): the config file and the hosts directory are read again and
validated whole (:func:`.settings.load`); each API then prepares the change (a new listen
address is bound before the old one is closed), and only when every one could is it applied.
A refused reload changes nothing; its error is logged and kept for ``hold status``. The root
and the state directory cannot change while the service runs.

Stop (:meth:`Service.stop`): APIs stop taking requests and finish the ones in flight (up to
a grace period), a collection in progress completes, then the threads end. Nothing the
service holds only in memory matters to the store: ``kill -9`` loses counters, never data.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from cargohold import __version__
from cargohold._record import field, record
from cargohold.config import Config
from cargohold.errors import CargoholdError, InvalidArgument
from cargohold.service import notify
from cargohold.service import settings as settings_mod
from cargohold.service.metrics import Counters, prometheus_text
from cargohold.service.settings import Settings
from cargohold.types import format_time

log = logging.getLogger("cargohold.serve")

SOCKET_NAME = "hold.sock"
PID_NAME = "serve.pid"
LOCK_NAME = "serve.lock"


class API(Protocol):
    """Something that exposes the service (see the module docstring)."""

    name: str

    def start(self, service: Service) -> None:
        """Begin serving (bind, listen); raise CargoholdError when it cannot."""

    def prepare(self, new: Settings) -> tuple[Callable[[], None], Callable[[], None]]:
        """Get ready for ``new`` without changing what runs; return (apply, abandon).
        Raise CargoholdError to refuse the reload.
        """

    def stop(self, grace: float) -> None:
        """Stop taking requests; finish those in flight within ``grace`` seconds."""

    def status(self) -> dict[str, Any]:
        """This API's part of ``hold status``."""


@record
class RunRecord:
    """The last run of a duty, for status."""

    at: float = 0.0  # wall clock
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def to_json(self) -> dict[str, Any] | None:
        if not self.at:
            return None
        return {"at": format_time(int(self.at * 1e9)), "seconds": round(self.seconds, 4),
                **self.detail, "error": self.error}


def state_paths(state: str) -> dict[str, str]:
    return {"socket": os.path.join(state, SOCKET_NAME), "pid": os.path.join(state, PID_NAME),
            "lock": os.path.join(state, LOCK_NAME)}


class Service:
    """The duties over one root (see the module docstring).

    ``load_config`` reads the configuration as the command line resolved it (file,
    environment, flags); it is called at start and at every reload.
    """

    def __init__(self, load_config: Callable[[], Config]) -> None:
        self._load_config = load_config
        self.settings: Settings | None = None
        self.client: Any = None
        self.counters = Counters()
        self.apis: list[Any] = []
        self.started = 0.0
        self.started_mono = 0.0
        self.read_only = False
        self.gc_last = RunRecord()
        self.sweep_last = RunRecord()
        self.reload_state: dict[str, Any] = {"state": "initial", "count": 0}
        self.generation = 0
        self._scheduler: Any = None
        self._expiry: Any = None
        self._lock: Any = None
        self._stop = threading.Event()
        self._reload_mu = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self.paths: dict[str, str] = {}

    def attach(self, api: Any) -> None:
        self.apis.append(api)

    # --- start ---------------------------------------------------------------------------
    def start(self) -> None:
        """Validate the config, take the state directory, open the root, start the duties
        and the APIs. Raises CargoholdError (nothing left running) when any part cannot.
        """
        from cargohold import _fsutil
        from cargohold.client import Client

        st = settings_mod.load(self._load_config())
        self.settings = st
        cfg = st.config
        self.paths = state_paths(cfg.state)
        _fsutil.makedirs(cfg.state, 0o711)
        self._lock = _fsutil.FileLock(self.paths["lock"], f"hold serve on state {cfg.state}")
        self._lock.acquire(wait=False)
        try:
            self.client = Client(cfg)
            self.read_only = self.client.read_only
            self.client.db  # noqa: B018 - opened here, before threads share the client
            self.started, self.started_mono = time.time(), time.monotonic()
            # The outcome of the configuration's first load: settings.load validated it above
            # (a refused one never gets here), as a reload's outcome says of the next.
            self.reload_state = {"state": "ok", "count": 0, "source": "start",
                                 "at": format_time(time.time_ns()), "error": "",
                                 "file": cfg.source}
            if not self.read_only:
                self._start_duties(st)
            for api in self.apis:
                api.start(self)
            _fsutil.atomic_write(self.paths["pid"], f"{os.getpid()}\n".encode())
        except BaseException:
            self.stop(grace=0)
            raise
        log.info("serving root %s (state %s)%s", cfg.root, cfg.state,
                 " read-only: no GC, no sweeps" if self.read_only else "")
        notify.ready(self._status_line())

    def _start_duties(self, st: Settings) -> None:
        from cargohold.metadata.db import epoch, removals
        from cargohold.service.expiry import ExpiryWatch
        from cargohold.service.gcsched import SchedulerThread

        db = self.client.db
        self.client.store  # noqa: B018 - opened before the threads share it
        self.client.collector.batch = st.sweep_batch

        def counters() -> tuple[int, int]:
            with db.view() as tx:
                return epoch(tx), removals(tx)

        self._expiry = ExpiryWatch(db)
        self._scheduler = SchedulerThread(st.gc, counters=counters,
                                          collect=lambda: self.client.collector.collect(),
                                          extra_trigger=self._expiry.check,
                                          on_done=self._gc_done)
        self._scheduler.start()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="cargohold-mounts",
                                         daemon=True)
        self._sweeper.start()

    # --- duties ----------------------------------------------------------------------------
    def _gc_done(self, res: Any, error: str, seconds: float) -> None:
        c = self.counters
        if res is None:
            self.gc_last = RunRecord(time.time(), seconds, {}, error)
            c.add("gc_failures_total")
            log.warning("gc failed: %s", error)
            return
        pause = res.mark_seconds + res.sweep_seconds
        kinds: dict[str, int] = {}
        for r in res.removed:
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
        # The record first: a status read between the two never sees a run without it.
        self.gc_last = RunRecord(time.time(), seconds, {
            "bytes_freed": res.bytes_freed, "removed": kinds,
            "mark_seconds": round(res.mark_seconds, 4),
            "sweep_seconds": round(res.sweep_seconds, 4),
            "pause_seconds": round(pause, 4), "retries": res.retries,
            "longest_batch_seconds": round(res.longest_batch_seconds, 4),
            "problems": res.errors}, "; ".join(res.errors))
        c.add("gc_runs_total")
        c.add("gc_bytes_freed_total", res.bytes_freed)
        c.add("gc_objects_removed_total", len(res.removed))
        c.add("gc_pause_seconds_total", pause)
        c.set("gc_last_pause_seconds", pause)
        if res.removed:
            log.info("gc: removed %d object(s), freed %d bytes in %.3fs", len(res.removed),
                     res.bytes_freed, seconds)

    def _sweep_loop(self) -> None:
        from cargohold.service.mountsweep import sweep

        assert self.settings is not None
        delay = self.settings.gc.startup_delay
        while not self._stop.wait(delay):
            t0 = time.monotonic()
            try:
                res = sweep(self.client)
            except Exception as exc:  # noqa: BLE001 - reported; the next sweep tries again
                self.sweep_last = RunRecord(time.time(), time.monotonic() - t0, {}, str(exc))
            else:
                done = len(res.cleaned) + len(res.kept)
                self.counters.add("mounts_swept_total", done)
                self.sweep_last = RunRecord(time.time(), time.monotonic() - t0,
                                            {"cleaned": res.cleaned, "kept": res.kept},
                                            "; ".join(res.errors))
                if done:
                    log.info("mount sweep: cleaned up %s", ", ".join(res.cleaned + res.kept))
            delay = self.settings.mount_sweep_interval

    def collect_now(self) -> None:
        """Ask the scheduler for a collection as soon as possible."""
        if self._scheduler is not None:
            self._scheduler.trigger()

    # --- reload ----------------------------------------------------------------------------
    def reload(self, source: str = "SIGHUP") -> dict[str, Any]:
        """Read and apply the configuration again (see the module docstring); return the
        reload state ``hold status`` shows. Never raises: whatever makes a reload fail (a
        config that does not validate, cannot be read, or a bug) refuses it.
        """
        with self._reload_mu:
            notify.reloading()
            count = self.reload_state.get("count", 0) + 1
            try:
                new = settings_mod.load(self._load_config())
                self._check_fixed(new)
                prepared = []
                try:
                    for api in self.apis:
                        prepared.append(api.prepare(new))
                except BaseException:
                    for _apply, abandon in prepared:
                        abandon()
                    raise
                for apply, _abandon in prepared:
                    apply()
                self._apply(new)
            except Exception as exc:  # noqa: BLE001 - whatever fails, the running config stays
                bug = not isinstance(exc, CargoholdError)  # its traceback goes to the log
                msg = (f"internal error: {type(exc).__name__}: {exc}" if bug else
                       exc.message + (f" (hint: {exc.hint})" if exc.hint else ""))
                self.counters.add("reloads_total", label="refused")
                self.reload_state = {"state": "refused", "count": count, "source": source,
                                     "at": format_time(time.time_ns()), "error": msg,
                                     "file": self.reload_state.get("file", "")}
                log.error("reload (%s) refused, the running configuration stays: %s",
                          source, msg, exc_info=bug)
            else:
                self.generation += 1
                self.counters.add("reloads_total", label="ok")
                self.reload_state = {"state": "ok", "count": count, "source": source,
                                     "at": format_time(time.time_ns()), "error": "",
                                     "file": new.config.source}
                log.info("reload (%s): configuration %s applied", source,
                         new.config.source or "(defaults)")
            notify.ready(self._status_line())
            return dict(self.reload_state)

    def _check_fixed(self, new: Settings) -> None:
        assert self.settings is not None
        old = self.settings.config
        for what in ("root", "state"):
            if getattr(new.config, what) != getattr(old, what):
                raise InvalidArgument(f"config {what}: cannot change from "
                                      f"{getattr(old, what)} to {getattr(new.config, what)} "
                                      "while hold serve runs", hint="restart hold serve")

    def _apply(self, new: Settings) -> None:
        self.settings = new
        if self._scheduler is not None:
            self._scheduler.configure(new.gc)
            self.client.collector.batch = new.sweep_batch

    # --- status ----------------------------------------------------------------------------
    def _status_line(self) -> str:
        parts = [a.status().get("endpoint", "") for a in self.apis]
        return "serving " + ", ".join(p for p in parts if p) if any(parts) else "running"

    def _uptime(self) -> float:
        """Seconds since start, also set as the ``uptime_seconds`` gauge."""
        up = round(time.monotonic() - self.started_mono, 3)
        self.counters.set("uptime_seconds", up)
        return up

    def metrics_text(self) -> str:
        """The counters in Prometheus text, as ``GET /metrics`` serves them."""
        self._uptime()
        return prometheus_text(self.counters)

    def status(self) -> dict[str, Any]:
        """Everything ``hold status`` shows, as JSON-ready data."""
        assert self.settings is not None
        cfg = self.settings.config
        uptime = self._uptime()
        sched = self._scheduler
        gc: dict[str, Any] = {"enabled": sched is not None,
                              "runs": int(self.counters.get("gc_runs_total")),
                              "failures": int(self.counters.get("gc_failures_total")),
                              "bytes_freed_total": int(self.counters.get("gc_bytes_freed_total")),
                              "last": self.gc_last.to_json(),
                              "settings": vars(self.settings.gc)}
        if sched is not None:
            p = sched.policy
            due = sched.next_due()
            gc.update({"running": sched.running, "pending_deletions": p.deletions,
                       "pending_mutations": p.mutations, "interval_seconds": round(p.interval, 3),
                       "next_in_seconds": None if due is None
                       else round(max(0.0, due - time.monotonic()), 3)})
        if self._expiry is not None:
            nxt = self._expiry.next_expiry()
            gc["next_expiry"] = format_time(nxt) if nxt else None
            gc["expired_seen"] = self._expiry.expired
        return {
            "version": __version__, "pid": os.getpid(),
            "started": format_time(int(self.started * 1e9)),
            "uptime_seconds": uptime,
            "root": cfg.root, "state": cfg.state, "read_only": self.read_only,
            "config": {"file": cfg.source, "generation": self.generation,
                       "hosts_dir": self.settings.hosts_dir,
                       "hosts": self.settings.hosts},
            "reload": dict(self.reload_state),
            "gc": gc,
            "mounts": {"interval_seconds": self.settings.mount_sweep_interval,
                       "swept_total": int(self.counters.get("mounts_swept_total")),
                       "last": self.sweep_last.to_json()},
            "apis": {a.name: a.status() for a in self.apis},
        }

    # --- stop ------------------------------------------------------------------------------
    def stop(self, grace: float = 10.0) -> None:
        """Stop APIs (finishing requests in flight), then the duties; release the state
        directory. A second call does nothing.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        notify.stopping()
        for api in reversed(self.apis):
            try:
                api.stop(grace)
            except Exception as exc:  # noqa: BLE001 - the others must still stop
                log.warning("stopping %s: %s", api.name, exc)
        if self._scheduler is not None:
            self._scheduler.stop()
        if self._sweeper is not None:
            self._sweeper.join(grace)
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.paths["pid"])
            self._lock.release()
            self._lock = None

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout)
