"""Configuration: defaults, file, environment and flags in rising precedence."""

from __future__ import annotations

import tomllib

import pytest

from cargohold import config
from cargohold.errors import InvalidArgument


def test_defaults_data_equals_the_commented_default_file():
    parsed = tomllib.loads(config.default_text())
    assert parsed == config._defaults()


def test_precedence_and_unknown_keys(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text('namespace = "fromfile"\n[gc]\nsweep_batch = 7\n')
    monkeypatch.setenv("HOLD_NAMESPACE", "fromenv")
    c = config.load(str(f))
    assert c.namespace == "fromenv" and c.section("gc")["sweep_batch"] == 7
    assert config.load(str(f), namespace="flag").namespace == "flag"
    f.write_text("[gc]\nsweep_bacth = 7\n")
    with pytest.raises(InvalidArgument, match="gc.sweep_bacth: unknown key"):
        config.load(str(f))
    with pytest.raises(InvalidArgument, match="no such file"):
        config.load(str(tmp_path / "missing.toml"))


def test_read_only_from_flag_env_and_file(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text("read_only = true\n")
    monkeypatch.delenv("HOLD_READ_ONLY", raising=False)
    assert config.load(str(tmp_path / "c.toml")).read_only is True
    f.write_text("")
    assert config.load(str(f)).read_only is False
    assert config.load(str(f), read_only=True).read_only is True
    monkeypatch.setenv("HOLD_READ_ONLY", "1")
    assert config.load(str(f)).read_only is True
    monkeypatch.setenv("HOLD_READ_ONLY", "0")
    f.write_text("read_only = true\n")
    assert config.load(str(f)).read_only is False, "the environment beats the file"
    monkeypatch.setenv("HOLD_READ_ONLY", "maybe")
    with pytest.raises(InvalidArgument, match="HOLD_READ_ONLY='maybe': not a boolean"):
        config.load(str(f))
