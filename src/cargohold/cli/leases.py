"""``hold leases``: ls, create, rm (aliases as ctr's: list; delete, del, remove)."""

from __future__ import annotations

import click

from cargohold.cli.app import App
from cargohold.cli.groups import Group
from cargohold.cli.output import created_at, emit_json, json_time, labels_text, table
from cargohold.cli.params import format_option, quiet_option


@click.group(cls=Group)
def leases() -> None:
    """Manage leases (they keep what they hold safe from GC).

    Unlike ctr's 1-hour lease of 'ctr images mount', the lease of 'hold images mount' has no
    expiry: GC cannot take a mounted image's snapshot however long it stays mounted.
    """


@leases.command("ls")
@quiet_option
@format_option
@click.argument("filters", nargs=-1)
@click.pass_obj
def ls(app: App, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List leases, by ID (columns as ctr's: ID, CREATED AT in RFC 3339, LABELS).

    --format json adds each lease's resources.
    """
    mgr = app.client.leases
    items = sorted(mgr.list(list(filters)), key=lambda lease: lease.id)
    if quiet:
        for lease in items:
            click.echo(lease.id)
    elif fmt == "json":
        emit_json([{"id": x.id, "created_at": json_time(x.created_at), "labels": x.labels,
                    "resources": [str(r) for r in mgr.list_resources(x.id)]} for x in items])
    else:
        table(["ID", "CREATED AT", "LABELS"],
              [[x.id, created_at(x.created_at), labels_text(x.labels)] for x in items])


@leases.command("create")
@click.option("--id", "lease_id", default=None, help="Lease id (default: generated).")
@click.option("-x", "--expires", default=None, metavar="DURATION",
              help="Expire after DURATION (e.g. 1h, 30m); an expired lease protects nothing.")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Label it (repeatable).")
@click.argument("more_labels", nargs=-1, metavar="[K=V]...")
@click.pass_obj
def create(app: App, lease_id: str | None, expires: str | None, labels: tuple[str, ...],
           more_labels: tuple[str, ...]) -> None:
    """Create a lease and print its id; labels K=V as arguments (as ctr) or with --label."""
    from cargohold.types import parse_duration, parse_labels

    lease = app.client.leases.create(
        lease_id, expire=parse_duration(expires) if expires else None,
        labels={k: v for k, v in parse_labels(labels + more_labels).items() if v})
    click.echo(lease.id)


@leases.command("rm")
@click.option("--sync", is_flag=True, help="Run garbage collection before returning.")
@click.argument("ids", nargs=-1, required=True)
@click.pass_obj
def rm(app: App, sync: bool, ids: tuple[str, ...]) -> None:
    """Delete leases (what they held becomes collectable)."""
    for i, lid in enumerate(ids):
        result = app.client.leases.delete(lid, sync=sync and i == len(ids) - 1)
        click.echo(lid)
        if result is not None:
            from cargohold.cli.gc import print_result

            print_result(result, "table")
