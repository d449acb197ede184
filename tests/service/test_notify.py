"""systemd's notify protocol, against a fake NOTIFY_SOCKET; and the shipped unit file."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.service.servekit import Serve

UNIT = os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "systemd",
                    "cargohold.service")


def _messages(sock: socket.socket, want: str, timeout: float = 30) -> list[dict[str, str]]:
    """Datagrams until one carries ``want`` (bounded)."""
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        msg = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        out.append(msg)
        if want in msg:
            return out
    raise AssertionError(f"no {want} in {out}")


def test_ready_reloading_stopping(root, tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        s = Serve(root, env={"NOTIFY_SOCKET": path})
        try:
            s.start()
            ready = _messages(sock, "READY")
            assert ready[-1]["READY"] == "1" and "serving http://" in ready[-1]["STATUS"]
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            s.signal(signal.SIGHUP)
            msgs = _messages(sock, "RELOADING")
            usec = int(msgs[-1]["MONOTONIC_USEC"])
            assert before <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert _messages(sock, "READY")[-1]["READY"] == "1"
            s.signal(signal.SIGTERM)
            assert _messages(sock, "STOPPING")[-1]["STOPPING"] == "1"
            assert s.proc.wait(30) == 0
        finally:
            s.stop()


def test_unit_file():
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # keys are case-sensitive
    p.read(UNIT)
    svc = p["Service"]
    assert svc["Type"] == "notify" and svc["KillMode"] == "process"
    assert svc["Delegate"] == "yes" and svc["OOMScoreAdjust"] == "-999"
    assert svc["Restart"] == "always" and "hold serve" in svc["ExecStart"]
    assert "HUP" in svc["ExecReload"]


def test_unit_file_is_what_systemd_reads(tmp_path):
    """systemd's own parser finds no unknown key, bad value or missing page in the unit
    (ExecStart pointed at this checkout's hold, which need not be installed).
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (tools/setup installs systemd)")
    with open(UNIT) as f:
        text = f.read()
    unit = tmp_path / "cargohold.service"
    unit.write_text(re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={sys.executable} -m cargohold "
                           "serve", text))
    p = subprocess.run([analyze, "verify", str(unit)], capture_output=True, timeout=60)
    assert p.returncode == 0 and not p.stderr.strip() and not p.stdout.strip(), (
        p.stdout.decode() + p.stderr.decode())
