"""``hold plugins ls``: every component, whether it can run here, and why not."""

from __future__ import annotations

import click

from cargohold.cli.app import App
from cargohold.cli.groups import Group
from cargohold.cli.output import emit_json, table
from cargohold.cli.params import format_option


@click.group(cls=Group)
def plugins() -> None:
    """Inspect cargohold's components."""


@plugins.command("ls")
@format_option
@click.pass_obj
def ls(app: App, fmt: str) -> None:
    """List components with status ok / skip / error and what its probe saw.

    Every status comes from a probe that ran just now (see cargohold.probes).
    """
    from cargohold.probes import probe_all

    rows = probe_all(app.client)
    if fmt == "json":
        emit_json([r._asdict() for r in rows])
        return
    table(["TYPE", "ID", "STATUS", "REASON"], [[r.type, r.id, r.status, r.reason or "-"]
                                               for r in rows])
