"""Fixtures for image tests: real archives built once per session, clients, `hold` runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import pytest


def _need_peers() -> None:
    missing = [b for b in ("umoci", "skopeo") if shutil.which(b) is None]
    if missing or not os.path.exists("/bin/busybox"):
        pytest.skip(f"needs umoci, skopeo and busybox-static (missing: "
                    f"{', '.join(missing) or '/bin/busybox'}); tools/setup installs them")
    if os.geteuid() != 0:
        pytest.skip("needs root (device nodes, owners and overlay mounts in the images)")


@pytest.fixture(scope="session")
def archives(tmp_path_factory):
    """Paths of every real archive (see tests/images/imagekit.py), built once."""
    _need_peers()
    from tests.images.imagekit import build_all

    return build_all(str(tmp_path_factory.mktemp("archives")))


@pytest.fixture(scope="module")
def ctrd():
    """A private containerd for the module's tests (needs root), stopped after them."""
    from tests.peers import containerd_daemon, need_root

    need_root()
    with containerd_daemon() as d:
        yield d


@pytest.fixture
def targets():
    """A list the test appends its mount points to; each is unmounted at teardown, last
    first, whatever the test left there."""
    from cargohold import mount as kmount

    made: list[str] = []
    yield made
    for t in reversed(made):
        with contextlib.suppress(Exception):
            kmount.unmount_all(t)


@pytest.fixture
def hold_json(hold):
    """Run `hold ... --format json` and parse stdout."""
    def _run(*args, **kw):
        return json.loads(hold(*args, "--format", "json", **kw).stdout)
    return _run
