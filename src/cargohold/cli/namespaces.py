"""``hold namespaces``: ls, create, rm, label (aliases as ctr's: list; c; remove)."""

from __future__ import annotations

import click

from cargohold.cli.app import App
from cargohold.cli.groups import Group
from cargohold.cli.output import emit_json, labels_text, table
from cargohold.cli.params import format_option, quiet_option
from cargohold.metadata import namespaces as ns_records
from cargohold.types import parse_labels


# `ctr namespaces -h`: "create, c", "list, ls", "remove, rm" (no delete/del there).
@click.group(cls=Group, aliases={"ls": ("list",), "rm": ("remove",), "create": ("c",)})
def namespaces() -> None:
    """Manage namespaces.

    Names follow containerd's rule: letters and digits joined by single '.', '_' or '-', at
    most 76 characters.
    """


@namespaces.command("ls")
@quiet_option
@format_option
@click.pass_obj
def ls(app: App, quiet: bool, fmt: str) -> None:
    """List namespaces."""
    db = app.client.db
    with db.view() as tx:
        rows = [(n, ns_records.get_labels(tx, n)) for n in ns_records.list_all(tx)]
    if quiet:
        for n, _ in rows:
            click.echo(n)
    elif fmt == "json":
        emit_json([{"name": n, "labels": lab} for n, lab in rows])
    else:
        # ctr leaves LABELS empty for a namespace without labels (not "-").
        table(["NAME", "LABELS"], [[n, labels_text(lab) if lab else ""] for n, lab in rows])


@namespaces.command("create")
@click.argument("name")
@click.argument("labels", nargs=-1)
@click.pass_obj
def create(app: App, name: str, labels: tuple[str, ...]) -> None:
    """Create namespace NAME with optional labels K=V."""
    with app.client.db.update() as tx:
        ns_records.create(tx, name, {k: v for k, v in parse_labels(labels).items() if v})
    click.echo(name)


@namespaces.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def rm(app: App, names: tuple[str, ...]) -> None:
    """Remove empty namespaces (a non-empty one is refused, saying what is left in it)."""
    for n in names:
        with app.client.db.update() as tx:
            ns_records.delete(tx, n)
        click.echo(n)


@namespaces.command("label")
@click.argument("name")
@click.argument("labels", nargs=-1, required=True)
@click.pass_obj
def label(app: App, name: str, labels: tuple[str, ...]) -> None:
    """Set labels K=V on namespace NAME (K= removes K)."""
    with app.client.db.update() as tx:
        result = ns_records.set_labels(tx, name, parse_labels(labels))
    click.echo(labels_text(result))
