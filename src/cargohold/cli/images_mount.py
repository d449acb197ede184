"""``hold images mount|unmount|mounts``: an image on a directory, leased while mounted."""

from __future__ import annotations

import click

from cargohold.cli import hot
from cargohold.cli.app import App
from cargohold.cli.output import emit_json, table
from cargohold.cli.params import apply, format_option, quiet_option


@click.command("mount")
@apply(hot.IMAGES_MOUNT)
@click.pass_obj
def mount_cmd(app: App, rw: bool, platform: str | None, snapshotter: str | None, ref: str,
              target: str) -> None:
    """Mount the image REF on TARGET (created when missing), read-only unless --rw.

    The mount holds a lease that never expires (ctr's lasts an hour, and a long-lived mount
    can lose its snapshot to GC), so GC keeps it until 'hold images unmount'. Prints the
    chain ID of the mounted layers.
    """
    hot.images_mount(app, rw, platform, snapshotter, ref, target)


@click.command("unmount")
@apply(hot.IMAGES_UNMOUNT)
@click.pass_obj
def unmount_cmd(app: App, rm: bool | None, target: str) -> None:
    """Unmount TARGET (not an error when nothing is mounted there)."""
    hot.images_unmount(app, rm, target)


@click.command("mounts")
@quiet_option
@format_option
@click.pass_obj
def mounts_cmd(app: App, quiet: bool, fmt: str) -> None:
    """List image mounts (and those of 'hold snapshots mount') and flag stale ones (not
    mounted, snapshot or lease gone).
    """
    from cargohold.images import mount as mounting

    found = mounting.list_mounts(app.client)
    if quiet:
        for s in found:
            click.echo(s.record.target)
    elif fmt == "json":
        emit_json([{**s.record.to_json(), "state": s.state, "problems": list(s.problems)}
                   for s in found])
    else:
        table(["TARGET", "IMAGE", "NAMESPACE", "SNAPSHOTTER", "MODE", "STATE"],
              [[s.record.target, _what(s.record), s.record.namespace,
                s.record.snapshotter or "-", "rw" if s.record.rw else "ro", s.state]
               for s in found])


def _what(rec) -> str:  # noqa: ANN001 - a mount.MountRecord
    if rec.kind == "snapshot":
        return f"(snapshot {rec.snapshot})"
    return rec.image or "-"
