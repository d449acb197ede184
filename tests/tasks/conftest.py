"""Fixtures for the task layer: real runc on a busybox image built here, and a cleanup that
leaves no container, shim, mount or cgroup behind, even when a test fails.

- ``busybox_rootfs`` (session): ``/bin/busybox`` from busybox-static with every applet as a
  symlink, ``/etc/passwd`` and ``/etc/group`` with root and a user ``app`` (1000:1000, also in
  group ``extra`` 2000), ``/tmp``, ``/home/app``;
- ``image`` : that rootfs packed into the test's root as ``test/busybox:1`` (unpacked);
- ``hold`` / ``hold_bg``: the real ``hold`` in a child process (``hold_bg`` returns the Popen);
- the autouse ``reap`` fixture kills and deletes every runc container under the test's own
  runc roots (``<state>/runc/*``), kills the shims, unmounts what is under the root and
  removes the test's cgroups: never anything outside this test's state directory.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

IMAGE = "test/busybox:1"
BUSYBOX = "/bin/busybox"


def need_runc() -> None:
    if shutil.which("runc") is None:
        pytest.skip("missing runc: install the Debian package runc (tools/setup does)")
    if not os.path.exists(BUSYBOX):
        pytest.skip("missing /bin/busybox: install busybox-static (tools/setup does)")
    if os.geteuid() != 0:
        pytest.skip("needs root (runc containers, overlay mounts, cgroups)")


def hold_env(root: str, extra: dict | None = None) -> dict:
    """The environment of ``run_hold`` (tests/conftest.py put this checkout on PYTHONPATH)."""
    e = dict(os.environ)
    e.update({"HOLD_ROOT": root, "HOLD_STATE": os.path.join(root, "_state"),
              "HOLD_CONFIG": os.path.join(root, "_no_config.toml")})
    e.update(extra or {})
    return e


def state_of(root: str) -> str:
    return os.path.join(root, "_state")


def _mounts_under(prefix: str) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    return sorted((p for p in points if p.startswith(prefix + "/")), key=len, reverse=True)


def reap_state(state: str) -> list[str]:
    """Kill and delete everything a test's state directory runs; returns what it found."""
    from cargohold import mount as kmount
    from cargohold.tasks import cgroups
    from cargohold.tasks.api import cgroup_parent, process_alive

    found = []
    for root in glob.glob(os.path.join(state, "runc", "*")):
        p = subprocess.run(["runc", "--root", root, "list", "-q"], capture_output=True,
                           text=True, timeout=30)
        for cid in p.stdout.split():
            found.append(f"runc container {cid}")
            subprocess.run(["runc", "--root", root, "kill", "--all", cid, "KILL"],
                           capture_output=True, timeout=30)
            subprocess.run(["runc", "--root", root, "delete", "--force", cid],
                           capture_output=True, timeout=30)
    for pidfile in glob.glob(os.path.join(state, "tasks", "*", "*", "shim.pid")):
        with contextlib.suppress(OSError, ValueError):
            pid, ticks = (int(x) for x in open(pidfile).read().split()[:2])
            if process_alive(pid, ticks):
                found.append(f"shim {pid}")
                os.kill(pid, signal.SIGKILL)
    for mp in _mounts_under(os.path.dirname(state)):
        found.append(f"mount {mp}")
        with contextlib.suppress(Exception):
            kmount.unmount(mp, detach=True)
    parent = cgroup_parent(state)
    for d in cgroups.exists_anywhere(parent):
        for sub, _dirs, _files in sorted(os.walk(d), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(sub)
    return found


@pytest.fixture(scope="session", autouse=True)
def _sweep_earlier_runs():
    """What a killed earlier run left under this run's TMPDIR (containers, shims, mounts)."""
    if os.geteuid() == 0 and shutil.which("runc"):
        base = os.path.realpath(tempfile.gettempdir())
        for state in glob.glob(os.path.join(base, "pytest-of-*", "*", "*", "*", "_state")):
            reap_state(state)
    yield


@pytest.fixture(autouse=True)
def reap(root):
    yield
    reap_state(state_of(root))


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory):
    need_runc()
    d = str(tmp_path_factory.mktemp("busybox") / "rootfs")
    for sub in ("bin", "etc", "tmp", "home/app", "root"):
        os.makedirs(os.path.join(d, sub))
    shutil.copy2(BUSYBOX, os.path.join(d, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", os.path.join(d, "bin", a))
    with open(os.path.join(d, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
    with open(os.path.join(d, "etc", "group"), "w") as f:
        f.write("root:x:0:\napp:x:1000:\nextra:x:2000:app\n")
    os.chmod(os.path.join(d, "tmp"), 0o1777)
    os.chown(os.path.join(d, "home", "app"), 1000, 1000)
    return d


@pytest.fixture
def image(client, busybox_rootfs):
    from cargohold.images.pack import PackOptions, pack

    pack(client, busybox_rootfs, IMAGE, PackOptions())
    return IMAGE


@pytest.fixture
def hold_bg(root):
    procs: list[subprocess.Popen] = []

    def _start(*args, env=None, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen([sys.executable, "-m", "cargohold", *args],
                             env=hold_env(root, env), **kw)
        procs.append(p)
        return p

    yield _start
    for p in procs:
        if p.poll() is None:
            p.kill()
        with contextlib.suppress(Exception):
            p.communicate(timeout=10)


def tasks_json(hold) -> dict:
    return {t["id"]: t for t in json.loads(hold("tasks", "ls", "--format", "json").stdout)}


def wait_for(pred, timeout: float = 30.0, what: str = "condition"):
    """Poll ``pred`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def read_line(stream, timeout: float = 30.0) -> bytes:
    """One line from a pipe, failing instead of hanging."""
    import select

    buf = b""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no line within {timeout}s (got {buf!r})")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            c = os.read(fd, 1)
            if not c:
                break
            buf += c
    return buf
