"""The conformance suite of cargohold.snapshotters.testing, run on every backend this host has."""

from __future__ import annotations

import os

import pytest

from cargohold.snapshotters import testing
from cargohold.snapshotters.registry import open_snapshotter

BACKENDS = ["overlayfs", "native", "btrfs"]


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    """(make, tmp) for one backend; btrfs works in a directory on the loop-mounted btrfs."""
    name = request.param
    if name == "btrfs":
        mnt = request.getfixturevalue("btrfs_mount")
        tmp = os.path.join(mnt, request.node.name.replace("/", "_")[:80])
        os.mkdir(tmp)
    else:
        tmp = str(tmp_path)
    return (lambda root: open_snapshotter(name, root, {})), tmp


@pytest.mark.parametrize("check", list(testing.ALL_CHECKS))
def test_conformance(backend, check):
    make, tmp = backend
    testing.ALL_CHECKS[check](make, tmp)
