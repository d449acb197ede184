"""Fixtures for the differ tests: a real LocalStore, a root check, overlay mounts."""

from __future__ import annotations

import contextlib
import os

import pytest

from cargohold.mount import unmount_all


@pytest.fixture
def store(tmp_path):
    from cargohold.store.local import LocalStore

    return LocalStore(str(tmp_path / "content"))


@pytest.fixture
def as_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (device nodes, owners, overlay mounts)")


@pytest.fixture
def mounts_to_clean():
    paths: list[str] = []
    yield paths
    for p in reversed(paths):
        with contextlib.suppress(Exception):
            unmount_all(p)
