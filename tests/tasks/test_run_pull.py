"""``hold run`` of a registry reference the store lacks: pulled first (real docker-registry)."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import run_hold
from tests.tasks.conftest import IMAGE, need_runc

pytestmark = [pytest.mark.peer, pytest.mark.slow]


def test_run_pulls_a_missing_image_then_runs_it(hold, image, tmp_path):
    need_runc()
    from tests.fetch.registry import DockerRegistry, need_registry

    need_registry()
    reg = DockerRegistry(str(tmp_path / "registry")).start()
    try:
        ref = f"{reg.host}/test/busybox:1"
        hold("images", "push", ref, IMAGE)
        other = str(tmp_path / "other")
        os.makedirs(other)
        p = run_hold(other, "run", "--rm", ref, "t1", "sh", "-c", "echo pulled; exit 4",
                     check=False)
        assert (p.returncode, p.stdout) == (4, b"pulled\n"), p.stderr
        names = [i["name"] for i in json.loads(run_hold(other, "images", "ls", "--format",
                                                        "json").stdout)]
        assert names == [ref]
        # Present now: a second run pulls nothing (the registry is gone).
        reg.stop()
        p = run_hold(other, "run", "--rm", ref, "t1", "echo", "again")
        assert p.stdout == b"again\n"
    finally:
        reg.stop()
        from tests.tasks.conftest import reap_state

        reap_state(os.path.join(str(tmp_path / "other"), "_state"))
