"""`hold` says things as ctr 1.6 says them: sizes, ages, verb aliases, --version, --debug,
namespace names, RFC 3339 times in JSON and tables.

What ctr prints is cited next to each check (seen with ctr 1.6.20 against a private containerd,
as tests/peers.py starts one); the alias lists are read from the real `ctr <noun> -h` when ctr
is installed. Comparisons that need a running containerd are in tests/images/test_ctr_output.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import click
import pytest
from tests.peers import need

from cargohold.cli.main import cli
from cargohold.cli.output import age, created_at
from cargohold.types import human_size

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{9})?(Z|[+-]\d\d:\d\d)$")
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "src")


def _py(code: str, **env: str) -> subprocess.CompletedProcess:
    """Python ``code`` in a child that imports this checkout's cargohold."""
    e = {**os.environ, **env, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e)


def test_sizes_are_ctrs_iec_units():
    # ctr images ls: "782.0 B" for a 782-byte image, "2.9 MiB" for 3,002,xxx bytes;
    # ctr snapshots usage: "4.0 KiB", "8.0 KiB", "1.5 MiB", "1.0 GiB" for 4096, 8192,
    # 1572864 and 1073741824 bytes (go-units CustomSize("%02.1f %s", n, 1024, IEC)).
    assert human_size(782) == "782.0 B"
    assert human_size(3_002_000) == "2.9 MiB"
    assert [human_size(n) for n in (4096, 8192, 1572864, 1 << 30)] == [
        "4.0 KiB", "8.0 KiB", "1.5 MiB", "1.0 GiB"]
    assert [human_size(n) for n in (0, 1023, 1024, (1 << 40) * 3)] == [
        "0.0 B", "1023.0 B", "1.0 KiB", "3.0 TiB"]


def test_ages_are_ctrs_words():
    # ctr content ls AGE right after an import: "Less than a second" (go-units HumanDuration).
    now = time.time_ns()

    def ago(secs: float) -> str:
        return age(now - int(secs * 1e9))

    assert ago(0.2) == "Less than a second"
    assert ago(1.5) == "1 second" and ago(30) == "30 seconds"
    assert ago(90) == "About a minute" and ago(5 * 60 + 5) == "5 minutes"
    assert ago(3600) == "About an hour" and ago(3 * 3600) == "3 hours"
    assert ago(3 * 86400) == "3 days" and ago(21 * 86400) == "3 weeks"
    assert ago(90 * 86400) == "3 months" and ago(3 * 365 * 86400 + 86400) == "3 years"
    assert age(0) == "-"


def test_created_at_is_rfc3339_to_the_second():
    # ctr leases ls: "2026-12-01T23:29:37Z" (local time, time.RFC3339; Z when the zone is UTC).
    text = created_at(time.time_ns())
    assert RFC3339.match(text) and "." not in text, text
    p = _py("from cargohold.cli.output import created_at\n"
            "print(created_at(1796167710_307582058))", TZ="UTC")
    assert p.stdout.strip() == "2026-12-01T23:28:30Z", p.stderr
    p = _py("from cargohold.cli.output import created_at\n"
            "print(created_at(1796167710_307582058))", TZ="CET-1")
    assert p.stdout.strip() == "2026-12-02T00:28:30+01:00", p.stderr


# --- aliases --------------------------------------------------------------------------------

def _ctr_commands(*noun: str) -> list[list[str]]:
    """The name groups of `ctr NOUN -h`'s COMMANDS section ("delete, del, remove, rm")."""
    text = subprocess.run(["ctr", *noun, "-h"], capture_output=True, text=True,
                          check=True).stdout
    section = text.split("COMMANDS:", 1)[1].split("OPTIONS:", 1)[0]
    groups = []
    for line in section.splitlines():
        if line.strip():
            names = re.split(r"\s{2,}", line.strip())[0]
            groups.append([n.strip() for n in names.split(",")])
    return groups


def _group(*path: str) -> click.Group:
    ctx = click.Context(cli, info_name="hold")
    g: click.Command = cli
    for p in path:
        g = g.get_command(ctx, p)  # type: ignore[union-attr]
    return g  # type: ignore[return-value]


@pytest.mark.parametrize("noun", ["images", "content", "snapshots", "leases", "namespaces",
                                  "containers", "tasks"])
def test_every_alias_ctr_lists_names_the_same_command(noun):
    need("ctr")  # only its help: no daemon needed
    g = _group(noun)
    ctx = click.Context(g, info_name=noun)
    checked = 0
    for names in _ctr_commands(noun):
        found = {n: g.get_command(ctx, n) for n in names}
        have = {c.name for c in found.values() if c is not None}
        if noun == "snapshots" and "mounts" in names:
            # ctr: "mounts, m, mount" all print. hold's `mount` mounts for real (its help
            # says so); the others print.
            assert found["mounts"].name == found["m"].name == "mounts"
            assert found["mount"].name == "mount"
            checked += 1
            continue
        if not have:
            continue  # a verb hold does not have (convert, edit, ...)
        assert len(have) == 1 and None not in found.values(), (noun, names, have)
        checked += 1
    assert checked >= 3


def test_every_noun_alias_of_ctr_is_hold_s():
    need("ctr")
    ctx = click.Context(cli, info_name="hold")
    checked = 0
    for names in _ctr_commands():  # "images, image, i", "namespaces, namespace, ns", ...
        cmds = {n: cli.get_command(ctx, n) for n in names}
        if all(c is None for c in cmds.values()):
            continue  # a noun hold does not have (yet): containers, tasks, events, ...
        assert None not in cmds.values(), names
        assert len({c.name for c in cmds.values()}) == 1, names
        checked += 1
    assert checked >= 6


def test_help_lists_the_aliases(hold):
    text = hold("images", "-h").stdout.decode()
    assert re.search(r"^\s+ls, list\s", text, re.M)
    assert re.search(r"^\s+rm, delete, del, remove\s", text, re.M)
    text = hold("namespaces", "-h").stdout.decode()
    assert re.search(r"^\s+rm, remove\s", text, re.M)
    assert re.search(r"^\s+create, c\s", text, re.M)
    assert "images, image, i" in hold("-h").stdout.decode()


def test_aliases_run_the_command(hold):
    hold("namespaces", "c", "team")
    assert hold("ns", "list", "-q").stdout.decode().split() == ["team"]
    hold("leases", "create", "--id", "L", "a=b")
    assert hold("leases", "list", "-q").stdout.decode().split() == ["L"]
    assert hold("leases", "del", "L").stdout.decode().split() == ["L"]
    d = hold("--lease", "keep", "content", "ingest", "x", input=b"data", check=False)
    assert d.returncode == 1  # no lease "keep" yet: nothing written
    hold("leases", "create", "--id", "keep")
    digest = hold("--lease", "keep", "content", "ingest", "x", input=b"data").stdout.strip()
    assert hold("content", "list", "-q").stdout.strip() == digest
    assert hold("content", "remove", digest.decode()).stdout.strip() == digest
    assert hold("ns", "remove", "team").stdout.strip() == b"team"
    p = hold("images", "delete", "nope", check=False)
    assert p.returncode == 1 and b"image nope: not found" in p.stderr


# --- --version, --debug ---------------------------------------------------------------------

def test_version_flag_prints_what_version_prints(hold):
    want = hold("version").stdout
    assert want.startswith(b"hold ")
    assert hold("--version").stdout == want
    assert hold("-v").stdout == want


def _crash(*argv: str) -> subprocess.CompletedProcess:
    """`hold ARGV version` with a bug planted in the version command (an internal error)."""
    code = ("import cargohold.cli.hot as v\n"
            "def boom(): raise RuntimeError('planted bug')\n"
            "v.version = boom\n"
            "from cargohold.cli.main import main\n"
            f"main({[*argv, 'version']!r})\n")
    return _py(code)


def test_debug_prints_the_traceback_of_an_internal_error():
    p = _crash()
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.splitlines() == [
        "hold: internal error: RuntimeError: planted bug",
        "hint: run it again with 'hold --debug' for the traceback, and report it"]
    p = _crash("--debug")
    assert p.returncode == 1
    assert p.stderr.startswith("Traceback (most recent call last):")
    assert "in boom" in p.stderr and "RuntimeError: planted bug" in p.stderr
    assert p.stderr.splitlines()[-1] == "hold: internal error: RuntimeError: planted bug"
    assert "HOLD_DEBUG" not in p.stderr
    # The variable it replaces does nothing any more.
    p = _py("import cargohold.cli.hot as v\nv.version = lambda: 1 / 0\n"
            "from cargohold.cli.main import main\nmain(['version'])", HOLD_DEBUG="1")
    assert p.returncode == 1 and "Traceback" not in p.stderr


def test_debug_traces_an_ordinary_error_too(hold):
    p = hold("--debug", "images", "inspect", "nope", check=False)
    err = p.stderr.decode()
    assert p.returncode == 1 and err.startswith("Traceback") and "NotFound" in err
    assert "hold: image nope: not found" in err
    p = hold("images", "inspect", "nope", check=False)
    assert p.returncode == 1 and b"Traceback" not in p.stderr


# --- namespace names ------------------------------------------------------------------------

BAD = ["bad ns!", "a..b", "-a", "a-", ".a", "a_", "é", "a/b", "a b", "a\nb", "a" * 77, "a:b"]
GOOD = ["a", "default", "A.b_c-1", "k8s.io", "x" * 76, "1-2-3"]


@pytest.mark.parametrize("name", BAD)
def test_bad_namespace_is_a_usage_error_in_one_line(hold, name):
    for p in (hold("-n", name, "images", "ls", check=False),
              hold("images", "ls", check=False, env={"HOLD_NAMESPACE": name}),
              hold("namespaces", "create", "--", name, check=False)):
        err = p.stderr.decode()
        assert p.returncode == 2, err
        assert len(err.splitlines()) == 1 and err.startswith("hold: namespace "), err
        assert ("must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$" in err
                or "longer than 76 characters (77)" in err), err
        assert p.stdout == b""


def test_good_namespaces_work(hold):
    for name in GOOD:
        assert hold("-n", name, "images", "ls", "-q").stdout == b""
        assert hold("images", "ls", "-q", env={"HOLD_NAMESPACE": name}).stdout == b""
        hold("namespaces", "create", name)
    assert set(hold("namespaces", "ls", "-q").stdout.decode().split()) == set(GOOD)
    # ctr leaves LABELS empty for a namespace without labels ("default        ").
    rows = hold("namespaces", "ls").stdout.decode().splitlines()
    assert rows[0].split() == ["NAME", "LABELS"]
    assert ["default"] in [r.split() for r in rows[1:]]


# --- times ----------------------------------------------------------------------------------

def _times(doc) -> list[tuple[str, object]]:  # noqa: ANN001
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k.endswith("_at") or k == "time":
                out.append((k, v))
            out += _times(v)
    elif isinstance(doc, list):
        for v in doc:
            out += _times(v)
    return out


def test_json_times_are_rfc3339_strings_everywhere(hold, tmp_path):
    from datetime import datetime

    d = tmp_path / "tree"
    (d / "etc").mkdir(parents=True)
    (d / "etc" / "f").write_text("x\n")
    hold("images", "pack", "--no-unpack", str(d), "example.com/t:1")
    hold("leases", "create", "--id", "L", "team=a")
    hold("snapshots", "prepare", "s1")
    docs = {
        "content ls": json.loads(hold("content", "ls", "--format", "json").stdout),
        "leases ls": json.loads(hold("leases", "ls", "--format", "json").stdout),
        "snapshots ls": json.loads(hold("snapshots", "ls", "--format", "json").stdout),
        "snapshots info": json.loads(hold("snapshots", "info", "s1").stdout),
        "images ls": json.loads(hold("images", "ls", "--format", "json").stdout),
        "images inspect": json.loads(hold("images", "inspect", "example.com/t:1").stdout),
    }
    for what, doc in docs.items():
        times = _times(doc)
        assert times, what
        for k, v in times:
            assert isinstance(v, str) and RFC3339.match(v), (what, k, v)
            assert abs(datetime.fromisoformat(v).timestamp() - time.time()) < 600, (what, v)
    assert docs["snapshots ls"][0]["created_at"] == docs["snapshots info"]["created_at"]
    assert docs["images ls"][0]["created_at"] == docs["images inspect"]["created_at"]


def test_leases_ls_has_ctrs_columns(hold):
    # ctr leases ls: "ID             CREATED AT           LABELS", ordered by ID.
    hold("leases", "create", "--id", "zz", "k=v")
    hold("leases", "create", "--id", "aa")
    rows = hold("leases", "ls").stdout.decode().splitlines()
    assert re.split(r"\s{2,}", rows[0]) == ["ID", "CREATED AT", "LABELS"]
    cells = [re.split(r"\s{2,}", r.strip()) for r in rows[1:]]
    assert [c[0] for c in cells] == ["aa", "zz"]
    assert all(RFC3339.match(c[1]) and "." not in c[1] for c in cells), cells
    assert [c[2] for c in cells] == ["-", "k=v"]

