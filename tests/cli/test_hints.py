"""Every `hold ...` command that a message, hint or help text names exists, with its flags.

Scans the sources for quoted commands ('hold images rm', "hold fsck --repair", ...) and
resolves each through the real click tree: a hint that points at a command not built yet fails.
"""

from __future__ import annotations

import pathlib
import re

import click

from cargohold.cli.main import cli

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "cargohold"
QUOTED = re.compile(r"""['"`](hold(?: [^'"`\n]*)?)['"`]""")
GLOBAL_VALUE = {"-n", "--namespace", "--root", "--state", "--config", "--snapshotter",
                "--lease"}


def _commands() -> list[tuple[str, str]]:
    out = []
    for path in SRC.rglob("*.py"):
        for m in QUOTED.finditer(path.read_text()):
            out.append((f"{path.relative_to(SRC)}", m.group(1)))
    return out


def _resolve(text: str) -> str | None:
    """None when ``text`` names a real command and flags; else what is wrong."""
    words = text.replace("{", " {").split()[1:]
    ctx = click.Context(cli, info_name="hold")
    cmd: click.Command = cli
    i = 0
    while i < len(words):
        w = words[i]
        if w.startswith("--") or w.startswith("-"):
            name = w.split("=", 1)[0]
            if isinstance(cmd, click.Group) and cmd is cli and name in GLOBAL_VALUE:
                i += 2
                continue
            known = {o for p in cmd.params for o in p.opts + p.secondary_opts}
            if name not in known and name not in ("-h", "--help"):
                return f"{text!r}: {cmd.name} has no option {name}"
            i += 1
            continue
        if not isinstance(cmd, click.Group) or not re.match(r"^[a-z][a-z-]*$", w):
            i += 1  # an argument (KEY, {target}, <name>, ...)
            continue
        sub = cmd.get_command(ctx, w)
        if sub is None:
            return f"{text!r}: {cmd.name} has no command {w!r}"
        cmd = sub
        i += 1
    return None


def test_every_quoted_hold_command_exists():
    found = _commands()
    assert len(found) > 20, "the scan should find the hints"
    bad = [f"{where}: {why}" for where, text in found if (why := _resolve(text))]
    assert bad == [], "\n".join(bad)
