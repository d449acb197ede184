"""A real ``hold serve`` process for tests, and images to serve.

``Serve(root, config)`` writes ``config`` (TOML text; ``{port}`` is a free port on
127.0.0.1) and starts ``python -m cargohold serve`` (and ``args``) on ``root`` with its state
under ``root/_state``; ``wait_ready()`` polls the status socket (bounded). Use it as a context
manager: the process is stopped (SIGTERM, then SIGKILL) even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from tests.fetch.registry import free_port, make_layout
from tests.images.imagekit import tar_layout

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                   "src")


def hold_env(root: str, **extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update({"HOLD_ROOT": root, "HOLD_STATE": os.path.join(root, "_state"),
              "HOLD_CONFIG": os.path.join(root, "config.toml"),
              "PYTHONPATH": SRC + os.pathsep + e.get("PYTHONPATH", "")})
    e.update(extra)
    return e


class Serve:
    """See the module docstring."""

    def __init__(self, root: str, config: str = "", *, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.root = root
        self.args = args
        self.port = free_port()
        self.config_path = os.path.join(root, "config.toml")
        self.write_config(config)
        self.env = hold_env(root, **(env or {}))
        self.log = os.path.join(root, "serve.log")
        self.proc: subprocess.Popen | None = None

    def write_config(self, text: str) -> None:
        if "registry_address" not in text:
            text = '[serve]\nregistry_address = "127.0.0.1:{port}"\n' + text \
                if "[serve]" not in text else text.replace(
                    "[serve]\n", '[serve]\nregistry_address = "127.0.0.1:{port}"\n', 1)
        with open(self.config_path, "w") as f:
            f.write(text.replace("{port}", str(self.port)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Serve:
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([sys.executable, "-m", "cargohold", "serve", *self.args],
                                     env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        logf.close()
        self.wait_ready()
        return self

    def status(self) -> dict:
        from cargohold.service.control import call

        return call(os.path.join(self.root, "_state"), "GET", "/v1/status", timeout=10)[1]

    def wait_ready(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"hold serve exited {self.proc.returncode}:\n"
                                     + self.log_text())
            try:
                return self.status()
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                time.sleep(0.05)
        raise AssertionError(f"hold serve did not answer ({last}):\n{self.log_text()}")

    def wait_for(self, pred, what: str, timeout: float = 30) -> dict:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        st: dict = {}
        while time.monotonic() < deadline:
            st = self.status()
            if pred(st):
                return st
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; status: {st}\n{self.log_text()}")

    def log_text(self) -> str:
        with contextlib.suppress(OSError), open(self.log, errors="replace") as f:
            return f.read()[-4000:]
        return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def __enter__(self) -> Serve:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def hold(root: str, *args: str, check: bool = True, input: bytes | None = None,
         timeout: float = 120, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "cargohold", *args],
                       env=hold_env(root, **(env or {})), capture_output=True, input=input,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"hold {' '.join(args)} failed ({p.returncode}):\n"
                             f"{p.stderr.decode()}\n{p.stdout.decode()}")
    return p


def image_archive(workdir: str, name: str, layers: list[dict[str, bytes]]) -> tuple[str, dict]:
    """An OCI archive of one image named ``name`` (gzip layers from files); and its digests."""
    lay = os.path.join(workdir, "layout-" + name.replace("/", "_").replace(":", "_"))
    info = make_layout(lay, layers, tag=name)
    return tar_layout(lay, lay + ".tar"), info


def import_image(root: str, workdir: str, name: str, layers: list[dict[str, bytes]], *,
                 unpack: bool = False) -> dict:
    path, info = image_archive(workdir, name, layers)
    hold(root, "images", "import", *([] if unpack else ["--no-unpack"]), path)
    return info
