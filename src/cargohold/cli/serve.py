"""``hold serve``: the storage service in the foreground (see cargohold.service)."""

from __future__ import annotations

import sys

import click

from cargohold.cli.app import App


def _reload(app: App) -> None:
    import os
    import signal

    from cargohold._fsutil import lock_holder
    from cargohold.errors import NotFound
    from cargohold.service.control import call
    from cargohold.service.core import state_paths

    state = _state_dir(app)
    try:
        code, st = call(state, "POST", "/v1/reload")
    except NotFound:
        # No socket answers: a service whose socket file went away still has its pid file.
        # Only while the service's lock is held does that pid name it: after a kill -9 the
        # file stays, and its pid may since be another process that SIGHUP would end.
        paths = state_paths(state)
        gone = NotFound(f"service state {state}: no hold serve runs there",
                        hint="start it with 'hold serve' (or check --state)")
        if not lock_holder(paths["lock"]):
            raise gone from None
        try:
            with open(paths["pid"]) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            raise gone from None
        os.kill(pid, signal.SIGHUP)
        click.echo(f"sent SIGHUP to hold serve (pid {pid}); 'hold status' shows the outcome")
        return
    if st.get("state") == "ok":
        click.echo(f"reloaded {st.get('file') or '(defaults)'}")
        return
    click.echo(f"hold: reload refused, the running configuration stays: {st.get('error')}",
               err=True)
    sys.exit(1)


def _state_dir(app: App) -> str:
    """The state directory, even when the config file no longer validates (a reload of a
    broken file must reach the service, which refuses it and says why).
    """
    import os

    from cargohold import config as config_mod
    from cargohold.errors import InvalidArgument

    try:
        return app.config.state
    except InvalidArgument:
        pass
    state = app._args.get("state") or os.environ.get("HOLD_STATE")
    if state:
        return str(state)
    path = app._config_file or os.environ.get("HOLD_CONFIG") or config_mod.default_config_file()
    try:
        import tomllib

        with open(path, "rb") as f:
            value = tomllib.load(f).get("state")
    except (OSError, ValueError):
        value = None
    return value if isinstance(value, str) and value else config_mod.default_state()


@click.command()
@click.option("--reload", "reload_", is_flag=True,
              help="Make the running service re-read config.toml and the hosts directory.")
@click.option("--grace", type=click.FloatRange(0, 3600), default=10.0, show_default=True,
              help="Seconds requests in flight get to finish at shutdown.")
@click.pass_obj
def serve(app: App, reload_: bool, grace: float) -> None:
    """Run the storage service over --root in the foreground, beside the embedded hold.

    Duties: GC on containerd's thresholds ([gc] in config.toml), lease and ingest expiry,
    the stale-mount sweep. APIs: an OCI registry over one namespace ([serve]
    registry_address, loopback by default) and a status socket under --state ('hold
    status'). SIGHUP (or 'hold serve --reload') reloads the config; a bad one is refused
    and the running one stays. SIGTERM finishes requests in flight and a running GC, then
    exits 0. Speaks systemd's notify protocol under Type=notify.
    """
    if reload_:
        _reload(app)
        return
    import logging
    import signal
    import threading

    from cargohold import config as config_mod
    from cargohold.service.control import ControlAPI
    from cargohold.service.core import Service
    from cargohold.service.registry.server import RegistryAPI

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s hold serve: %(levelname)s %(message)s")
    first = app.config

    def load() -> config_mod.Config:
        # The flags and environment as resolved at start; the file is read again.
        return config_mod.load(app._config_file, root=first.root, state=first.state,
                               namespace=first.namespace, snapshotter=first.snapshotter,
                               read_only=first.read_only or None)

    svc = Service(load)
    # The registry first: the control socket answering 'hold status' then means every API
    # is listening (tests and scripts wait on it).
    svc.attach(RegistryAPI())
    svc.attach(ControlAPI())
    wake = threading.Event()
    flags = {"stop": False, "reload": 0}

    def on_stop(signum: int, frame: object) -> None:
        flags["stop"] = True
        wake.set()

    def on_hup(signum: int, frame: object) -> None:
        flags["reload"] += 1
        wake.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    svc.start()
    try:
        st = svc.status()
        reg = st["apis"].get("registry", {}).get("endpoint") or "off"
        logging.getLogger("cargohold.serve").info(
            "ready: registry %s, status socket %s", reg, svc.paths["socket"])
        while not flags["stop"]:
            wake.wait(1.0)
            wake.clear()
            if flags["reload"] and not flags["stop"]:
                flags["reload"] = 0
                svc.reload("SIGHUP")
    finally:
        logging.getLogger("cargohold.serve").info("stopping")
        svc.stop(grace)
