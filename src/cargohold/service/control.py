"""The control API: JSON over HTTP on the unix socket ``<state>/hold.sock``.

::

    GET  /v1/status    the service's status (what ``hold status`` prints)
    POST /v1/reload    reload config.toml and the hosts directory; answers the reload state
                       (200 when applied, 409 when refused: the running config stays)
    POST /v1/gc        ask the GC scheduler for a collection now (202)
    GET  /metrics      the Prometheus metrics

The socket is made mode 0660 in the state directory (which is 0711), so only its owner and
group can use it. :func:`call` is the client side (``hold status``, ``hold serve --reload``).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cargohold.errors import NotFound, Unavailable

if TYPE_CHECKING:
    from cargohold.service.core import Service
    from cargohold.service.settings import Settings

TIMEOUT = 30.0


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    service: Service


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj, indent=1, sort_keys=True).encode())

    def do_GET(self) -> None:  # noqa: N802 - stdlib's name
        svc = self.server.service
        if self.path == "/v1/status":
            self._json(200, svc.status())
        elif self.path == "/metrics":
            self._send(200, svc.metrics_text().encode(), "text/plain; version=0.0.4")
        else:
            self._json(404, {"error": f"no such endpoint {self.path}"})

    def do_POST(self) -> None:  # noqa: N802 - stdlib's name
        svc = self.server.service
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(min(n, 1 << 16))
        if self.path == "/v1/reload":
            st = svc.reload(source="hold serve --reload")
            self._json(200 if st["state"] == "ok" else 409, st)
        elif self.path == "/v1/gc":
            svc.collect_now()
            self._json(202, {"scheduled": True})
        else:
            self._json(404, {"error": f"no such endpoint {self.path}"})


class ControlAPI:
    """The control socket as an :class:`~cargohold.service.core.API`."""

    name = "control"

    def __init__(self) -> None:
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.path = ""

    def start(self, service: Service) -> None:
        self.path = service.paths["socket"]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by a killed service: the state lock says it is ours
        old = os.umask(0o117)
        try:
            self._server = _Server(self.path, _Handler)
        finally:
            os.umask(old)
        self._server.service = service
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.2,),
                                        name="cargohold-control", daemon=True)
        self._thread.start()

    def prepare(self, new: Settings) -> tuple[Callable[[], None], Callable[[], None]]:
        return (lambda: None), (lambda: None)

    def stop(self, grace: float) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self._server = None

    def status(self) -> dict[str, Any]:
        return {"socket": self.path}


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def call(state: str, method: str, path: str, *, timeout: float = TIMEOUT
         ) -> tuple[int, Any]:
    """One request to the service of state directory ``state``: (status, parsed JSON or
    text). Raises NotFound when no service listens there.
    """
    from cargohold.service.core import SOCKET_NAME

    sock = os.path.join(state, SOCKET_NAME)
    conn = _UnixConnection(sock, timeout)
    try:
        conn.request(method, path, headers={"Content-Length": "0"} if method == "POST" else {})
        r = conn.getresponse()
        body = r.read()
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NotFound(f"service socket {sock}: no hold serve answers there",
                       hint="start it with 'hold serve' (or check --state)") from exc
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"service socket {sock}: no answer ({exc})",
                          hint="check that it runs: see its log") from exc
    finally:
        conn.close()
    ctype = r.getheader("Content-Type", "")
    return r.status, json.loads(body) if ctype.startswith("application/json") else body.decode()
