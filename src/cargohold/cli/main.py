"""The ``hold`` command: global options, lazy subcommands, errors mapped to exit codes.

Subcommand modules are imported only when used, so ``hold`` starts fast.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from cargohold.errors import CargoholdError

# name -> (module, attribute, aliases). A module that does not exist yet is simply not listed.
COMMANDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "images": ("cargohold.cli.images", "images", ("i", "image")),
    "content": ("cargohold.cli.content", "content", ()),
    "snapshots": ("cargohold.cli.snapshots", "snapshots", ("snapshot",)),
    "leases": ("cargohold.cli.leases", "leases", ("lease",)),
    "namespaces": ("cargohold.cli.namespaces", "namespaces", ("ns", "namespace")),
    "containers": ("cargohold.cli.containers", "containers", ("c", "container")),
    "tasks": ("cargohold.cli.tasks", "tasks", ("t", "task")),
    "run": ("cargohold.cli.run", "run", ()),
    "gc": ("cargohold.cli.gc", "gc", ()),
    "fsck": ("cargohold.cli.fsck", "fsck", ()),
    "df": ("cargohold.cli.df", "df", ()),
    "plugins": ("cargohold.cli.plugins", "plugins", ()),
    "config": ("cargohold.cli.config", "config", ()),
    "hosts": ("cargohold.cli.hosts", "hosts", ("host",)),
    "airgap": ("cargohold.cli.airgap", "airgap", ()),
    "serve": ("cargohold.cli.serve", "serve", ()),
    "status": ("cargohold.cli.status", "status", ()),
    "version": ("cargohold.cli.version", "version", ()),
}
ALIASES = {a: name for name, (_m, _a, al) in COMMANDS.items() for a in al}


class LazyGroup(click.Group):
    """A click group that imports each subcommand's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from importlib.util import find_spec

        return [n for n, (m, _a, _al) in COMMANDS.items() if find_spec(m) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        name = ALIASES.get(cmd_name, cmd_name)
        if name not in COMMANDS:
            return None
        mod, attr, _al = COMMANDS[name]
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                return None
            raise
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", metavar="DIR", help="Store root [HOLD_ROOT; /var/lib/cargohold].")
@click.option("--state", metavar="DIR", help="State directory [HOLD_STATE; /run/cargohold].")
@click.option("-n", "--namespace", metavar="NS", help="Namespace [HOLD_NAMESPACE; default].")
@click.option("--config", "config_file", metavar="FILE", help="Config file (TOML).")
@click.option("--snapshotter", metavar="NAME", help="Snapshotter [HOLD_SNAPSHOTTER; overlayfs].")
@click.option("--lease", metavar="ID", help="Run this command's writes inside lease ID.")
@click.option("--read-only", "read_only", is_flag=True, default=None,
              help="Open the root read-only: reads work, nothing on disk changes, writes "
                   "fail [HOLD_READ_ONLY=1].")
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
    from cargohold import _fsutil
    from cargohold.cli import signals

    # What the library wants a user to know while it works (a long lock wait, say).
    _fsutil.set_notice(lambda msg: click.echo(f"hold: {msg}", err=True))
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
        if os.environ.get("HOLD_DEBUG"):
            raise
        click.echo(f"hold: internal error: {type(exc).__name__}: {exc}", err=True)
        click.echo("hint: run again with HOLD_DEBUG=1 for the traceback, and report it",
                   err=True)
        sys.exit(1)
    sys.exit(0)
