"""The registry: lazy imports, probing with reasons, opening by name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cargohold.errors import InvalidArgument
from cargohold.snapshotters import registry
from cargohold.snapshotters.native import Native


def test_importing_the_registry_imports_no_backend():
    code = ("import sys, cargohold.snapshotters.registry as r; "
            "print(sorted(m for m in sys.modules if m.startswith('cargohold.snapshotters.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "overlayfs" not in out and "btrfs" not in out and "native" not in out


def test_open_and_probe(tmp_path):
    sn = registry.open_snapshotter("native", str(tmp_path / "n"), {})
    assert isinstance(sn, Native)
    sn.close()
    assert registry.probe("native", str(tmp_path / "n2")) == (
        "ok", f"support check passed for {tmp_path / 'n2'}")
    status, reason = registry.probe("btrfs", str(tmp_path / "b"))
    assert status == "skip" and "not on a btrfs filesystem" in reason


def test_missing_modules_skip_as_not_built(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.BACKENDS, "ghost", "cargohold.snapshotters.ghost:Ghost")
    assert registry.probe("ghost", str(tmp_path)) == ("skip", "snapshotter ghost: not built yet")


def test_unknown_name():
    with pytest.raises(InvalidArgument, match="unknown"):
        registry.load("nope")


def test_probe_all_lists_every_backend(tmp_path):
    rows = registry.probe_all(str(tmp_path))
    assert [r[0] for r in rows] == list(registry.BACKENDS)
    assert all(r[1] in ("ok", "skip", "error") for r in rows)
    assert registry.default_root("/h", "native") == "/h/snapshots/native"
