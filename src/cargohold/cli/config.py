"""``hold config default|show``."""

from __future__ import annotations

import click

from cargohold.cli.app import App
from cargohold.cli.groups import Group


@click.group(cls=Group)
def config() -> None:
    """Inspect the configuration."""


@config.command("default")
def default() -> None:
    """Print a commented default config.toml."""
    from cargohold import config as cfg

    click.echo(cfg.default_text(), nl=False)


@config.command("show")
@click.pass_obj
def show(app: App) -> None:
    """Print the settings in force and where they came from."""
    c = app.config
    click.echo(f"config file: {c.source or '(none; defaults)'}")
    click.echo(f"root:        {c.root}")
    click.echo(f"state:       {c.state}")
    click.echo(f"namespace:   {app.namespace}")
    click.echo(f"snapshotter: {c.snapshotter}")
