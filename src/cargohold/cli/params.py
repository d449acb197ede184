"""click parameters built from :mod:`cargohold.cli.hot` declarations, and the shared options
(``--format``, ``-q``, ``--progress``).

:func:`apply` turns a declaration into click options and arguments, so a hot command has one
list of parameters for both click and the fast parser (:mod:`cargohold.cli.fast`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from cargohold.cli.hot import FORMAT, Arg, Opt
from cargohold.cli.progress import MODES

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def option(opt: Opt, **extra: Any) -> Decorator:
    """One :class:`~cargohold.cli.hot.Opt` as a click option (``extra``: click-only settings,
    such as a callback).
    """
    kw: dict[str, Any] = {"help": opt.help, **extra}
    if opt.metavar:
        kw["metavar"] = opt.metavar
    if opt.off:
        decls = ["/".join((opt.names[-1], *opt.off))]
        kw.update(default=opt.default)
    elif opt.value:
        decls = list(opt.names)
        if opt.choices:
            kw.update(type=click.Choice(list(opt.choices)), show_default=opt.default is not None)
        kw.update(default=opt.default)
    else:
        decls = list(opt.names)
        kw.update(is_flag=True)
    return click.option(*decls, opt.dest, **kw)


def apply(params: Sequence[Opt | Arg]) -> Decorator:
    """Decorate a click command with ``params``, in their order."""
    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        for p in reversed(params):
            if isinstance(p, Opt):
                f = option(p)(f)
            elif p.many:
                f = click.argument(p.name, nargs=-1)(f)
            else:
                f = click.argument(p.name, type=click.Path(file_okay=False) if p.path else None
                                   )(f)
        return f
    return deco


format_option = option(FORMAT)
progress_option = click.option("--progress", "progress_mode", type=click.Choice(MODES),
                               default="auto", show_default=True, help="Progress on stderr.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="Print only names/ids.")
