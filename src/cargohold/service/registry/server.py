"""The registry's listener: :class:`RegistryAPI`, an :class:`~cargohold.service.core.API`.

The standard library's threading HTTP server (``http.server.ThreadingHTTPServer``), one thread
per connection, HTTP/1.1 keep-alive. It is enough here, by measurement
(``tools/bench/serve_pull.py``): blob bodies leave through ``os.sendfile`` — the kernel
copies page cache to socket, no Python in the data path and the GIL released — so what the
server costs per pull is a few header parses, and 20 parallel pulls of the ~110 MB fixture
image go at least as fast as from ``docker-registry`` on the same machine. An event-loop
server (aiohttp, uvicorn) would only add a dependency for the same sendfile call.

Limits: ``client_timeout`` applies to every read and write of a connection (a client that
sends or reads nothing for that long is dropped: stalled senders and readers alike), and a
request's line and headers must all arrive within it (a slowloris client that dribbles a byte
at a time is dropped as well; an idle keep-alive connection too); the stdlib's bounds on
request lines (64 KiB) and headers (100) apply, and at most ``MAX_CONNECTIONS`` connections
are served at once (more are answered 503 and closed). A request body (a push, which needs
credentials) gets the per-read timeout only.

Stop: the listener closes, idle keep-alive connections are shut at once, requests in flight
get ``grace`` seconds to finish, then their connections are shut as well.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cargohold.errors import Unavailable
from cargohold.service.registry.catalog import Catalog
from cargohold.service.registry.handler import Handler
from cargohold.service.registry.uploads import Auth

if TYPE_CHECKING:
    from cargohold.service.core import Service
    from cargohold.service.settings import RegistrySettings, Settings

MAX_CONNECTIONS = 512


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    block_on_close = False

    def __init__(self, host: str, port: int, handler: type[Handler], api: RegistryAPI) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.api = api
        super().__init__((host, port), handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.api.connections() >= MAX_CONNECTIONS:
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\nRetry-After: 1\r\n\r\n")
            return False
        return True


class RegistryAPI:
    """The OCI distribution registry over the service's root (see :mod:`.handler`)."""

    name = "registry"

    def __init__(self) -> None:
        self.service: Any = None
        self.settings: RegistrySettings | None = None  # type: ignore[assignment]
        self.auth = Auth({})
        self.catalog: Any = None
        self.content: Any = None
        self.store: Any = None
        self.db: Any = None
        self.counters: Any = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._mu = threading.Lock()
        self._conns: dict[Handler, bool] = {}  # connection -> a request is in flight
        self.endpoint = ""

    # --- connections (for limits and a graceful stop) -------------------------------------
    def connections(self) -> int:
        with self._mu:
            return len(self._conns)

    def connection_opened(self, h: Handler) -> None:
        with self._mu:
            self._conns[h] = False

    def connection_closed(self, h: Handler) -> None:
        with self._mu:
            self._conns.pop(h, None)

    def request_started(self, h: Handler) -> None:
        with self._mu:
            self._conns[h] = True
        self.counters.add("registry_active_requests", 1)

    def request_finished(self, h: Handler) -> None:
        with self._mu:
            if h in self._conns:
                self._conns[h] = False
        self.counters.add("registry_active_requests", -1)

    # --- API -------------------------------------------------------------------------------
    def _bind(self, rs: RegistrySettings) -> _Server:
        handler = type("BoundHandler", (Handler,), {"api": self})
        try:
            return _Server(rs.host, rs.port, handler, self)
        except OSError as exc:
            raise Unavailable(f"registry address {rs.host}:{rs.port}: cannot listen: "
                              f"{exc.strerror or exc}",
                              hint="set [serve] registry_address to a free port, or \"\" for "
                                   "no registry") from exc

    def _use(self, rs: RegistrySettings) -> None:
        from cargohold.metadata.content import NamespacedStore

        svc = self.service
        self.settings = rs
        self.auth = Auth(rs.users)
        self.content = NamespacedStore(svc.client.db, svc.client.store, rs.namespace)
        self.catalog = Catalog(svc.client.db, self.content, rs.namespace)

    def _serve(self, server: _Server) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.endpoint = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        self._thread = threading.Thread(target=server.serve_forever, args=(0.2,),
                                        name="cargohold-registry", daemon=True)
        self._thread.start()

    def start(self, service: Service) -> None:
        assert service.settings is not None
        self.service = service
        self.counters = service.counters
        self.db = service.client.db
        self.store = service.client.store
        rs = service.settings.registry
        self._use(rs)
        if rs.enabled:
            self._serve(self._bind(rs))

    def prepare(self, new: Settings) -> tuple[Callable[[], None], Callable[[], None]]:
        rs = new.registry
        old = self.settings
        same_address = old is not None and (old.host, old.port) == (rs.host, rs.port) \
            and self._server is not None
        fresh = None if (same_address or not rs.enabled) else self._bind(rs)

        def apply() -> None:
            self._use(rs)
            if same_address:
                return
            previous = self._server
            self._server, self.endpoint = None, ""
            if fresh is not None:
                self._serve(fresh)
            if previous is not None:
                threading.Thread(target=self._close, args=(previous, 10.0),
                                 daemon=True).start()

        def abandon() -> None:
            if fresh is not None:
                fresh.server_close()

        return apply, abandon

    def _close(self, server: _Server, grace: float) -> None:
        server.shutdown()
        server.server_close()
        self._drain(grace)

    def _drain(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        while True:
            with self._mu:
                busy = [h for h, active in self._conns.items() if active]
                idle = [h for h, active in self._conns.items() if not active]
            for h in idle:
                _shut(h)
            if not busy or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        for h in busy:
            _shut(h)

    def stop(self, grace: float) -> None:
        server, self._server = self._server, None
        if server is not None:
            self._close(server, grace)
        if self._thread is not None:
            self._thread.join(grace)

    def status(self) -> dict[str, Any]:
        rs = self.settings
        c = self.counters
        return {"endpoint": self.endpoint, "namespace": rs.namespace if rs else "",
                "push": bool(rs and rs.push),
                "requests": {k: int(v) for k, v in
                             sorted(c.labelled("registry_requests_total").items())} if c else {},
                "bytes_served": int(c.get("registry_bytes_served_total")) if c else 0,
                "bytes_received": int(c.get("registry_bytes_received_total")) if c else 0,
                "connections": self.connections(),
                "active_requests": int(c.get("registry_active_requests")) if c else 0}


def _shut(h: Handler) -> None:
    with contextlib.suppress(OSError):
        h.connection.shutdown(socket.SHUT_RDWR)
