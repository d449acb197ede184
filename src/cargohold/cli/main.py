"""The ``hold`` command: global options, lazy subcommands, errors mapped to exit codes.

Subcommand modules are imported only when used, so ``hold`` starts fast; every group answers
to ctr's aliases (:mod:`cargohold.cli.groups`). An error prints ``hold: <message>`` and its
hint; ``--debug`` adds the traceback (an internal error asks for it).
"""

from __future__ import annotations

import os
import sys

import click

from cargohold.cli.groups import Group
from cargohold.errors import CargoholdError

# name -> (module, attribute). A module that does not exist yet is simply not listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "images": ("cargohold.cli.images", "images"),
    "content": ("cargohold.cli.content", "content"),
    "snapshots": ("cargohold.cli.snapshots", "snapshots"),
    "leases": ("cargohold.cli.leases", "leases"),
    "namespaces": ("cargohold.cli.namespaces", "namespaces"),
    "containers": ("cargohold.cli.containers", "containers"),
    "tasks": ("cargohold.cli.tasks", "tasks"),
    "run": ("cargohold.cli.run", "run"),
    "gc": ("cargohold.cli.gc", "gc"),
    "fsck": ("cargohold.cli.fsck", "fsck"),
    "df": ("cargohold.cli.df", "df"),
    "plugins": ("cargohold.cli.plugins", "plugins"),
    "config": ("cargohold.cli.config", "config"),
    "hosts": ("cargohold.cli.hosts", "hosts"),
    "airgap": ("cargohold.cli.airgap", "airgap"),
    "serve": ("cargohold.cli.serve", "serve"),
    "status": ("cargohold.cli.status", "status"),
    "version": ("cargohold.cli.version", "version"),
}
# The noun aliases of `ctr -h` ("images, image, i", "namespaces, namespace, ns", ...).
ALIASES: dict[str, tuple[str, ...]] = {
    "images": ("image", "i"),
    "snapshots": ("snapshot",),
    "leases": ("lease",),
    "namespaces": ("namespace", "ns"),
    "containers": ("container", "c"),
    "tasks": ("task", "t"),
    "plugins": ("plugin",),
    "hosts": ("host",),
}

_debug = False  # --debug: tracebacks for errors (set by the option, read by main())


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    global _debug
    _debug = _debug or bool(value)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from cargohold.cli.version import print_version

    print_version()
    ctx.exit(0)


def _check_namespace(ctx: click.Context, param: click.Parameter, value: str | None
                     ) -> str | None:
    if value is not None:
        from cargohold.types import validate_identifier

        validate_identifier("namespace", value)  # InvalidArgument: exit 2, one line
    return value


@click.group(cls=Group, lazy=COMMANDS, aliases=ALIASES,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", metavar="DIR", help="Store root [HOLD_ROOT; /var/lib/cargohold].")
@click.option("--state", metavar="DIR", help="State directory [HOLD_STATE; /run/cargohold].")
@click.option("-n", "--namespace", metavar="NS", callback=_check_namespace,
              help="Namespace [HOLD_NAMESPACE; default]; containerd's rules: letters and "
                   "digits joined by single '.', '_' or '-', at most 76 characters.")
@click.option("--config", "config_file", metavar="FILE", help="Config file (TOML).")
@click.option("--snapshotter", metavar="NAME", help="Snapshotter [HOLD_SNAPSHOTTER; overlayfs].")
@click.option("--lease", metavar="ID", help="Run this command's writes inside lease ID.")
@click.option("--read-only", "read_only", is_flag=True, default=None,
              help="Open the root read-only: reads work, nothing on disk changes, writes "
                   "fail [HOLD_READ_ONLY=1].")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
              help="Print the traceback of an error (to report an internal one).")
@click.option("-v", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Print the version (as 'hold version') and exit.")
@click.pass_context
def cli(ctx: click.Context, root: str | None, state: str | None, namespace: str | None,
        config_file: str | None, snapshotter: str | None, lease: str | None,
        read_only: bool | None) -> None:
    """cargohold: a content store and snapshot engine for container images."""
    from cargohold.cli.app import App

    ctx.obj = App(root=root, state=state, namespace=namespace, config_file=config_file,
                  snapshotter=snapshotter, lease=lease, read_only=read_only or None)
    ctx.call_on_close(ctx.obj.close)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``hold`` console script."""
    global _debug
    _debug = False
    from cargohold import notices
    from cargohold.cli import signals

    # What the library wants a user to know while it works (a long lock wait, say).
    notices.set_notice(lambda msg: click.echo(f"hold: {msg}", err=True))
    signals.install()
    try:
        cli.main(args=argv, prog_name="hold", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("hold: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code or 1)
    except CargoholdError as exc:
        _trace()
        click.echo(f"hold: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        # `hold content get X | head` closes the pipe early: not an error worth a trace.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("hold: interrupted", err=True)
        sys.exit(130)
    except signals.Terminated:
        click.echo("hold: terminated", err=True)
        sys.exit(signals.EXIT_CODE)
    except Exception as exc:  # noqa: BLE001 - a bug: say so plainly, trace on request
        _trace()
        click.echo(f"hold: internal error: {type(exc).__name__}: {exc}", err=True)
        if not _debug:
            click.echo("hint: run it again with 'hold --debug' for the traceback, and report it",
                       err=True)
        sys.exit(1)
    sys.exit(0)


def _trace() -> None:
    """With --debug, the traceback of the exception being handled, on stderr."""
    if _debug:
        import traceback

        traceback.print_exc(file=sys.stderr)
