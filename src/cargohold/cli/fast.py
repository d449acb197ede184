"""Run a hot command without importing click (see :mod:`cargohold.cli.hot`).

:func:`parse` reads a command line against the declarations in :mod:`cargohold.cli.hot` and
the names in :mod:`cargohold.cli.names`; it recognizes only what it can run exactly as click
would: global options before the command, the command's options (``--opt VALUE``,
``--opt=VALUE``, flags, ``--x/--no-x`` pairs) mixed with its arguments, and ``--``. Anything
else (``--help``, a typo, a missing or extra argument, a value not among the choices, ``-qv``
clusters) returns None, and click parses the line and reports the problem as it always does.
"""

from __future__ import annotations

import os

from cargohold.cli import hot, names

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


class Parsed:
    """A recognized command line: the global settings, the body to run and its arguments."""

    __slots__ = ("globals", "body", "kwargs")

    def __init__(self, globals_: dict[str, object], body: str, kwargs: dict[str, object]
                 ) -> None:
        self.globals, self.body, self.kwargs = globals_, body, kwargs


def _options(params: Sequence[hot.Opt | hot.Arg]) -> dict[str, tuple[hot.Opt, object]]:
    """Every option name -> (its declaration, the value a flag sets)."""
    table: dict[str, tuple[hot.Opt, object]] = {}
    for p in params:
        if isinstance(p, hot.Opt):
            for n in p.names:
                table[n] = (p, True)
            for n in p.off:
                table[n] = (p, False)
    return table


def _take_option(tok: str, rest: list[str], table: dict[str, tuple[hot.Opt, object]],
                 out: dict[str, object]) -> bool:
    """Consume option ``tok`` (and its value from ``rest``) into ``out``; False when it is
    not one the fast parser knows exactly.
    """
    name, eq, inline = tok.partition("=")
    if name not in table or (eq and not name.startswith("--")):
        return False
    opt, flag_value = table[name]
    if not opt.value:
        if eq:
            return False
        out[opt.dest] = flag_value
        return True
    if eq:
        value = inline
    elif rest and not rest[0].startswith("-"):
        value = rest.pop(0)
    else:
        return False
    if opt.choices and value not in opt.choices:
        return False
    out[opt.dest] = value
    return True


def parse(argv: Sequence[str]) -> Parsed | None:
    """The hot command ``argv`` names, parsed; None when click should parse it."""
    rest = list(argv)
    glob: dict[str, object] = {o.dest: o.default for o in hot.GLOBAL}
    gtable = _options(hot.GLOBAL)
    while rest and rest[0].startswith("-"):
        if not _take_option(rest.pop(0), rest, gtable, glob):
            return None
    if glob["version"]:
        return Parsed(glob, "version", {})
    if not rest:
        return None
    words = [names.canonical_command(rest.pop(0))]
    if words[0] not in hot.COMMANDS and (words[0],) not in hot.COMMANDS:
        if not rest:
            return None
        words.append(names.canonical_verb(words[0], rest.pop(0)))
    found = hot.COMMANDS.get(tuple(words))
    if found is None:
        return None
    params, body = found
    return _command(glob, params, body, rest)


def _command(glob: dict[str, object], params: Sequence[hot.Opt | hot.Arg], body: str,
             rest: list[str]) -> Parsed | None:
    kwargs: dict[str, object] = {p.dest: p.default for p in params if isinstance(p, hot.Opt)}
    table = _options(params)
    positional: list[str] = []
    while rest:
        tok = rest.pop(0)
        if tok == "--":
            positional += rest
            break
        if tok.startswith("-") and tok != "-":
            if not _take_option(tok, rest, table, kwargs):
                return None
        else:
            positional.append(tok)
    for a in (p for p in params if isinstance(p, hot.Arg)):
        if a.many:
            kwargs[a.name], positional = tuple(positional), []
            continue
        if not positional:
            return None
        value = positional.pop(0)
        if a.path and os.path.exists(value) and not os.path.isdir(value):
            return None  # click's "is a file" error
        kwargs[a.name] = value
    if positional:
        return None
    return Parsed(glob, body, kwargs)


def run(parsed: Parsed) -> None:
    """Run a parsed hot command as its click twin would (errors propagate to the caller)."""
    g = parsed.globals
    fn = getattr(hot, parsed.body)
    if parsed.body == "version":
        fn()
        return
    if g["namespace"] is not None:
        from cargohold.types import validate_identifier

        validate_identifier("namespace", g["namespace"])
    from cargohold.cli.app import App

    app = App(root=g["root"], state=g["state"], namespace=g["namespace"],
              config_file=g["config_file"], snapshotter=g["snapshotter"], lease=g["lease"],
              read_only=g["read_only"] or None)
    try:
        fn(app, **parsed.kwargs)
    finally:
        app.close()
