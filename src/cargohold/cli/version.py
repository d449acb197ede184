"""``hold version``."""

from __future__ import annotations

import platform
import sys

import click

from cargohold import __version__


@click.command()
def version() -> None:
    """Print the cargohold version."""
    click.echo(f"hold {__version__}")
    click.echo(f"  python {platform.python_version()} ({sys.executable})")
    click.echo(f"  kernel {platform.release()}")
