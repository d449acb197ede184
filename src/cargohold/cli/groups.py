"""The click groups of ``hold``: ctr's aliases for every command, subcommands loaded lazily.

Every group of the command line is a :class:`Group`. A group answers to the aliases ``ctr``
accepts for the same command (``ls``/``list``, ``rm``/``delete``/``del``/``remove``, ...;
``names.VERB_ALIASES``, or the group's own ``aliases=``), and ``--help`` lists them next to the
name, as ``ctr`` does. A group given ``lazy={name: module}`` imports a subcommand's module only
when that subcommand runs (or help lists it), so ``hold`` starts fast.
"""

from __future__ import annotations

import importlib

import click

from cargohold.cli.names import VERB_ALIASES


class Group(click.Group):
    """A click group whose commands also answer to aliases and may live in other modules.

    ``aliases``: command name -> the other names it answers to (default ``names.VERB_ALIASES``;
    an alias of a command the group lacks is ignored). ``lazy``: command name -> ``(module,
    attribute)`` imported on first use; a module that does not exist (yet) is simply not
    listed, while an import error inside an existing module propagates.
    """

    def __init__(self, *args: object, aliases: dict[str, tuple[str, ...]] | None = None,
                 lazy: dict[str, tuple[str, str]] | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.aliases = VERB_ALIASES if aliases is None else aliases
        self.lazy = lazy or {}
        self._alias_of = {a: name for name, al in self.aliases.items() for a in al}

    def canonical(self, name: str) -> str:
        """The command an alias stands for (``name`` itself when it is no alias)."""
        if name in self.commands or name in self.lazy:
            return name
        return self._alias_of.get(name, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = list(self.commands)
        names += [n for n in self.lazy if n not in self.commands]
        return [n for n in names if self._load(n) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(self.canonical(cmd_name))

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        # Name the command by its own name (help, errors), whatever alias was typed.
        return (cmd.name if cmd is not None else name), cmd, rest

    def _load(self, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        if name not in self.lazy:
            return None
        mod, attr = self.lazy[name]
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                return None
            raise
        return getattr(module, attr, None)

    def names_of(self, name: str) -> list[str]:
        """``name`` and its aliases, as help lists them."""
        return [name, *self.aliases.get(name, ())]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self._load(name)
            if cmd is None or cmd.hidden:
                continue
            rows.append((", ".join(self.names_of(name)), cmd))
        if not rows:
            return
        limit = formatter.width - 6 - max(len(n) for n, _ in rows)
        with formatter.section("Commands"):
            formatter.write_dl([(n, cmd.get_short_help_str(limit)) for n, cmd in rows])
