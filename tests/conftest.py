"""Shared fixtures: a fresh root per test, and the `hold` command run in-process or as a child."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Every child Python a test starts (hold itself, helper scripts) runs this checkout's code,
# whatever copy of cargohold is installed on the machine.
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if SRC not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return str(r)


def run_hold(root: str, *args: str, input: bytes | None = None, check: bool = True,
             env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real `hold` command in a child process against ``root``."""
    e = dict(os.environ)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    e["PYTHONPATH"] = src + os.pathsep + e.get("PYTHONPATH", "")
    e.update({"HOLD_ROOT": root, "HOLD_STATE": os.path.join(root, "_state"),
              "HOLD_CONFIG": os.path.join(root, "_no_config.toml")})
    if env:
        e.update(env)
    p = subprocess.run([sys.executable, "-m", "cargohold", *args], input=input,
                       capture_output=True, env=e, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"hold {' '.join(args)} failed ({p.returncode}):\n"
                             f"{p.stderr.decode()}\n{p.stdout.decode()}")
    return p


@pytest.fixture
def client(root):
    """A library Client on ``root`` (open_client's default namespace), closed after the test."""
    from tests.peers import open_client

    c = open_client(root)
    yield c
    c.close()


@pytest.fixture
def hold(root):
    def _run(*args, **kw):
        return run_hold(root, *args, **kw)
    return _run


@pytest.fixture
def mnt(tmp_path):
    """``mnt(name)`` makes a directory under tmp_path to mount on; whatever is still mounted
    on one at teardown is unmounted, so a failed test leaves no mount behind."""
    from cargohold.mount import is_mountpoint, unmount_all
    made: list[str] = []

    def _make(name: str = "mnt") -> str:
        d = str(tmp_path / name)
        os.makedirs(d, exist_ok=True)
        made.append(d)
        return d
    yield _make
    for d in made:
        if is_mountpoint(d):
            unmount_all(d)
