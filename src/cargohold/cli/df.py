"""``hold df``: disk used by content, snapshots and each image (see cargohold.images.usage)."""

from __future__ import annotations

import click

from cargohold.cli.app import App
from cargohold.cli.output import emit_json, human_size, table
from cargohold.cli.params import format_option


@click.command("df")
@click.option("--snapshotter", default="", metavar="NAME",
              help="Count snapshots of this snapshotter [the global one].")
@format_option
@click.pass_obj
def df(app: App, snapshotter: str, fmt: str) -> None:
    """Bytes used by content, snapshots and each image (shared versus exclusive), from the
    sizes stored at commit: no tree walks. EXCLUSIVE is what removing the image would free.
    """
    from cargohold.images.usage import disk_usage

    u = disk_usage(app.client, snapshotter or None)
    if fmt == "json":
        emit_json(u.to_json())
        return
    active = f" (+{u.snapshot_active} active)" if u.snapshot_active else ""
    table(["TYPE", "COUNT", "SIZE", "RECLAIMABLE"],
          [["content", u.content_count, human_size(u.content_bytes),
            human_size(u.content_reclaimable)],
           [f"snapshots ({u.snapshotter})", f"{u.snapshot_count}{active}",
            human_size(u.snapshot_bytes), human_size(u.snapshot_reclaimable)]])
    if u.images:
        click.echo()
        table(["IMAGE", "CONTENT", "SNAPSHOTS", "SHARED", "EXCLUSIVE"],
              [[", ".join(i.names), human_size(i.content), human_size(i.snapshots),
                human_size(i.shared), human_size(i.exclusive)] for i in u.images])
