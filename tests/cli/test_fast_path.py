"""The fast parser (cli.fast) runs a hot command exactly as click would, or leaves it to click.

Each command line runs twice in-process, once through the fast path and once through click,
with the hot bodies replaced by recorders: both must call the same body with the same
arguments and the same global settings. Lines the fast parser must not take (help, typos,
bad choices, missing or extra arguments, a file where a directory goes) go to click.
"""

from __future__ import annotations

import inspect

import pytest

from cargohold.cli import fast, hot
from cargohold.cli.root import cli

BODIES = ("version", "content_ls", "images_ls", "images_mount", "images_unmount")


@pytest.fixture
def calls(monkeypatch):
    seen: list = []
    for name in BODIES:
        real = getattr(hot, name)

        def record(*args, _real=real, _name=name, **kwargs):
            bound = inspect.signature(_real).bind(*args, **kwargs)
            got = dict(bound.arguments)
            app = got.pop("app", None)
            glob = None if app is None else (app._args, app._config_file, app.lease)
            seen.append((_name, got, glob))
        monkeypatch.setattr(hot, name, record)
    return seen


def _click(argv: list[str]) -> None:
    try:
        cli.main(args=argv, prog_name="hold", standalone_mode=False)
    except SystemExit:
        pass


def _fast(argv: list[str]) -> None:
    parsed = fast.parse(argv)
    assert parsed is not None, f"the fast parser left {argv} to click"
    fast.run(parsed)


def test_every_hot_line_runs_the_same_on_both_paths(calls, tmp_path):
    t = str(tmp_path / "mnt")
    r = str(tmp_path / "root")
    lines = [
        ["version"], ["--version"], ["-v"], ["--root", r, "--version"],
        ["content", "ls"], ["content", "list", "-q"],
        ["--root", r, "content", "ls", "--format=json", 'labels."x"==y'],
        ["-n", "ns1", "--state", r, "content", "ls", "--format", "json", "--quiet"],
        ["--namespace=ns2", "content", "ls", "a", "--", "-q"],
        ["i", "ls", "--quiet"], ["image", "list", "name~=a", "--format", "table"],
        ["--read-only", "--config", "/nonexistent.toml", "images", "ls"],
        ["images", "mount", "--rw", "--platform", "linux/amd64", "ref:1", t],
        ["--lease", "L1", "--snapshotter", "native", "images", "mount", "r", t,
         "--snapshotter", "btrfs"],
        ["images", "mount", "--", "r", t],
        ["images", "unmount", "--no-rm", t], ["i", "unmount", t, "--rm"],
        ["--debug", "images", "unmount", t],
    ]
    for argv in lines:
        calls.clear()
        _click(argv)
        via_click = list(calls)
        calls.clear()
        _fast(argv)
        assert calls == via_click and len(calls) == 1, argv


@pytest.mark.parametrize("argv", [
    [], ["--help"], ["content", "ls", "--help"], ["content", "ls", "-h"],
    ["content", "ls", "--format", "xml"], ["content", "ls", "--format"],
    ["content", "ls", "-qx"], ["-nfoo", "content", "ls"], ["--bogus", "version"],
    ["images", "mount", "onlyref"], ["images", "mount", "a", "b", "c"],
    ["images", "unmount"], ["images", "unmount", "--rm=yes", "t"], ["version", "extra"],
    ["content", "get", "sha256:00"], ["images", "check"], ["namespaces", "ls"],
    ["--root"], ["images"], ["i", "delete", "x"], ["content", "ls", "--quiet=1"],
])
def test_what_the_fast_parser_leaves_to_click(argv):
    assert fast.parse(argv) is None


def test_a_file_where_a_directory_goes_is_clicks_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert fast.parse(["images", "unmount", str(f)]) is None
    assert fast.parse(["images", "unmount", str(tmp_path)]) is not None


def test_the_click_commands_take_the_declared_parameters():
    """One declaration: each hot click command's parameters are exactly its hot.* list."""
    from cargohold.cli.content import content
    from cargohold.cli.images_manage import ls_cmd
    from cargohold.cli.images_mount import mount_cmd, unmount_cmd
    from cargohold.cli.version import version

    for cmd, decl in ((content.commands["ls"], hot.CONTENT_LS), (ls_cmd, hot.IMAGES_LS),
                      (mount_cmd, hot.IMAGES_MOUNT), (unmount_cmd, hot.IMAGES_UNMOUNT),
                      (version, hot.VERSION)):
        got = [(p.name, tuple(p.opts), tuple(p.secondary_opts)) for p in cmd.params]
        want = [(p.dest, p.names if not p.off else (p.names[-1],), p.off)
                if isinstance(p, hot.Opt) else (p.name, (p.name,), ()) for p in decl]
        assert got == want, cmd.name
    assert [p.name for p in cli.params] == [o.dest for o in hot.GLOBAL]
