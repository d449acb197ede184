"""The blob-store conformance suite against the namespaced metadata store."""

from __future__ import annotations

import os

import pytest

from cargohold.metadata.content import NamespacedStore
from cargohold.metadata.db import open_db
from cargohold.store.api import Store
from cargohold.store.local import LocalStore
from cargohold.store.testing import ALL_CHECKS


@pytest.fixture
def make(tmp_path):
    opened = []
    n = [0]

    def _make() -> NamespacedStore:
        n[0] += 1
        root = str(tmp_path / f"root{n[0]}")
        os.makedirs(root)
        db = open_db(root)
        opened.append(db)
        return NamespacedStore(db, LocalStore(os.path.join(root, "content")), f"ns{n[0]}")

    yield _make
    for db in opened:
        db.close()


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_conformance(check, make):
    check(make)


def test_is_a_store(make):
    assert isinstance(make(), Store)
