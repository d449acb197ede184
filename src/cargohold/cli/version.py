"""``hold version`` (and ``hold --version``, which prints the same; see cli.hot)."""

from __future__ import annotations

import click

from cargohold.cli import hot
from cargohold.cli.params import apply


@click.command()
@apply(hot.VERSION)
def version() -> None:
    """Print the cargohold version (the same as 'hold --version')."""
    hot.version()
