"""``hold status``: what the running ``hold serve`` reports on its socket."""

from __future__ import annotations

import click

from cargohold.cli.app import App
from cargohold.cli.output import emit_json, human_size
from cargohold.cli.params import format_option


def _ago(seconds: float) -> str:
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60}m"
    if s >= 60:
        return f"{s // 60}m{s % 60}s"
    return f"{s}s"


@click.command()
@format_option
@click.pass_obj
def status(app: App, fmt: str) -> None:
    """Show the running service: version, uptime, root, last GC, reload state, registry.

    Reads <state>/hold.sock (--state); exits 1 when no service runs there.
    """
    from cargohold.service.control import call

    _code, st = call(app.config.state, "GET", "/v1/status")
    if fmt == "json":
        emit_json(st)
        return
    out = [f"hold serve {st['version']}, pid {st['pid']}, up {_ago(st['uptime_seconds'])} "
           f"(since {st['started']})",
           f"root:     {st['root']}{' (read-only)' if st['read_only'] else ''}",
           f"state:    {st['state']}"]
    cfg, rl = st["config"], st["reload"]
    line = f"config:   {cfg['file'] or '(defaults)'}, generation {cfg['generation']}"
    if rl.get("count"):
        line += f"; last reload {rl['state']} at {rl['at']}"
    out.append(line)
    if rl.get("state") == "refused":
        out.append(f"          refused: {rl['error']}")
    gc = st["gc"]
    if not gc["enabled"]:
        out.append("gc:       off (read-only root)")
    else:
        line = (f"gc:       {gc['runs']} run(s), {human_size(gc['bytes_freed_total'])} freed"
                + (f", {gc['failures']} failed" if gc["failures"] else ""))
        if gc.get("running"):
            line += "; running now"
        elif gc.get("next_in_seconds") is not None:
            line += f"; next check in {gc['next_in_seconds']:.1f}s"
        out.append(line)
        last = gc.get("last")
        if last:
            if last.get("bytes_freed") is None:
                out.append(f"          last at {last['at']}: failed: {last['error']}")
            else:
                n = sum(last.get("removed", {}).values())
                out.append(f"          last at {last['at']}: {last['seconds']:.3f}s, removed "
                           f"{n} object(s), freed {human_size(last['bytes_freed'])} (pause "
                           f"{last['pause_seconds']:.3f}s)")
    m = st["mounts"]
    out.append(f"mounts:   {m['swept_total']} stale record(s) cleaned up, every "
               f"{m['interval_seconds']:g}s")
    reg = st["apis"].get("registry")
    if reg is not None:
        if reg["endpoint"]:
            codes = " ".join(f"{k}={v}" for k, v in reg["requests"].items()) or "none"
            out.append(f"registry: {reg['endpoint']} namespace {reg['namespace']}, "
                       f"{'push with credentials' if reg['push'] else 'read-only'}")
            out.append(f"          requests {codes}; served {human_size(reg['bytes_served'])}"
                       f", received {human_size(reg['bytes_received'])}")
        else:
            out.append("registry: off")
    click.echo("\n".join(out))
