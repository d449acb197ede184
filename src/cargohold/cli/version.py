"""``hold version`` (and ``hold --version``, which prints the same)."""

from __future__ import annotations

import platform
import sys

import click

from cargohold import __version__


def print_version() -> None:
    """The version of cargohold, the Python running it and the kernel."""
    click.echo(f"hold {__version__}")
    click.echo(f"  python {platform.python_version()} ({sys.executable})")
    click.echo(f"  kernel {platform.release()}")


@click.command()
def version() -> None:
    """Print the cargohold version (the same as 'hold --version')."""
    print_version()
