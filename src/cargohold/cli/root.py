"""The click root group of ``hold``: global options (declared in :mod:`cargohold.cli.hot`) and
lazily loaded commands (named in :mod:`cargohold.cli.names`).

:func:`cargohold.cli.main.main` comes here for every command line the fast parser does not
run; ``--help`` and usage errors always come from here.
"""

from __future__ import annotations

import click

from cargohold.cli import hot
from cargohold.cli.groups import Group
from cargohold.cli.names import ALIASES, COMMANDS
from cargohold.cli.params import option


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    from cargohold.cli import main

    main.set_debug(bool(value))


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    hot.version()
    ctx.exit(0)


def _check_namespace(ctx: click.Context, param: click.Parameter, value: str | None
                     ) -> str | None:
    if value is not None:
        from cargohold.types import validate_identifier

        validate_identifier("namespace", value)  # InvalidArgument: exit 2, one line
    return value


_EXTRA = {
    "namespace": {"callback": _check_namespace},
    "read_only": {"default": None},
    "debug": {"expose_value": False, "is_eager": True, "callback": _set_debug},
    "version": {"expose_value": False, "is_eager": True, "callback": _print_version},
}


def _global_options(f):  # noqa: ANN001, ANN202 - a click decorator
    for opt in reversed(hot.GLOBAL):
        f = option(opt, **_EXTRA.get(opt.dest, {}))(f)
    return f


@click.group(cls=Group, lazy=COMMANDS, aliases=ALIASES,
             context_settings={"help_option_names": ["-h", "--help"]})
@_global_options
@click.pass_context
def cli(ctx: click.Context, root: str | None, state: str | None, namespace: str | None,
        config_file: str | None, snapshotter: str | None, lease: str | None,
        read_only: bool | None) -> None:
    """cargohold: a content store and snapshot engine for container images."""
    from cargohold.cli.app import App

    ctx.obj = App(root=root, state=state, namespace=namespace, config_file=config_file,
                  snapshotter=snapshotter, lease=lease, read_only=read_only or None)
    ctx.call_on_close(ctx.obj.close)
