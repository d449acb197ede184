"""The hot commands import only what they use: a guard on their import lists.

Each command runs in a child Python that prints, at exit, the modules it loaded beyond what the
bare interpreter loads in the same environment (site hooks differ between machines). Heavy or
unrelated parts (HTTP, decompressors, the differ, GC, the service, tasks) must stay out: every
``hold`` pays at start for whatever its command imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.conftest import run_hold

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="images mount needs root")

DUMP = r"""
import atexit, json, sys
base = set(json.loads(sys.argv[1]))
sys.argv = ["hold", *sys.argv[2:]]
atexit.register(lambda: sys.stderr.write("MODULES " + json.dumps(
    sorted(set(sys.modules) - base)) + "\n"))
from cargohold.cli.main import main
main()
"""

NEVER = ("requests", "urllib3", "ssl", "http", "zstandard", "isal", "lzma", "bz2", "tarfile",
         "zipfile", "concurrent", "subprocess", "tomllib", "cargohold.fetch",
         "cargohold.service", "cargohold.tasks", "cargohold.differ", "cargohold.gc",
         "cargohold.fsck", "cargohold.probes", "cargohold.images.importer",
         "cargohold.images.exporter", "cargohold.images.unpack", "cargohold.images.pack",
         "cargohold.cli.progress",
         # the hot commands run through cli.fast: click (and its parser) only for other lines
         "click", "cargohold.cli.root", "platform")
EXTRA = {
    "version": ("lmdb", "json", "cargohold.metadata", "cargohold.store", "cargohold.client",
                "cargohold.images", "cargohold.snapshotters", "cargohold.leases",
                "cargohold.mount"),
    "content ls": ("hashlib", "cargohold.images", "cargohold.snapshotters", "cargohold.leases",
                   "cargohold.mount"),
    "images ls": ("cargohold.snapshotters", "cargohold.leases", "cargohold.mount"),
    "images mount": (),
    "images unmount": (),
}


def _baseline(env: dict[str, str]) -> list[str]:
    p = subprocess.run([sys.executable, "-c", "import sys, json; print(json.dumps("
                        "sorted(sys.modules)))"], env=env, capture_output=True, text=True,
                       check=True)
    return json.loads(p.stdout)


def _loaded(root: str, *args: str) -> set[str]:
    env = dict(os.environ, HOLD_ROOT=root, HOLD_STATE=os.path.join(root, "_state"),
               HOLD_CONFIG=os.path.join(root, "_no_config.toml"))
    base = _baseline(env)
    p = subprocess.run([sys.executable, "-c", DUMP, json.dumps(base), *args], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    line = [x for x in p.stderr.splitlines() if x.startswith("MODULES ")][-1]
    return set(json.loads(line[len("MODULES "):]))


def _offending(mods: set[str], banned: tuple[str, ...]) -> list[str]:
    return sorted(m for m in mods for b in banned if m == b or m.startswith(b + "."))


def test_hot_commands_import_only_what_they_use(root, tmp_path):
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hello").write_text("hi\n")
    run_hold(root, "images", "pack", str(tree), "localhost/x:1")
    target = str(tmp_path / "mnt")
    runs = {"version": ("version",), "content ls": ("content", "ls"),
            "images ls": ("images", "ls"),
            "images mount": ("images", "mount", "localhost/x:1", target),
            "images unmount": ("images", "unmount", target)}
    bad = {}
    for name, args in runs.items():
        found = _offending(_loaded(root, *args), NEVER + EXTRA[name])
        if found:
            bad[name] = found
    assert bad == {}, f"hot commands import what they do not use: {bad}"
