"""HTTP for the registry: routes, manifests, blobs, tags, catalog, errors (the read side).

Routes (distribution spec v1.1; ``?ns=HOST`` accepted everywhere)::

    GET       /v2/                              200 (401 asking for Basic when push is on
                                                and no valid credentials came)
    GET       /v2/_catalog?n=&last=             repository paths of the namespace
    GET       /v2/<name>/tags/list?n=&last=
    GET|HEAD  /v2/<name>/manifests/<tag|digest>
    GET|HEAD  /v2/<name>/blobs/<digest>         Range: bytes=a-b | a- | -n (one range;
                                                other units and several ranges: all of it)
    POST|PATCH|PUT|GET|DELETE /v2/<name>/blobs/uploads/[<uuid>]   (see :mod:`.uploads`)
    PUT       /v2/<name>/manifests/<tag|digest>
    GET       /metrics                          Prometheus text

The raw path is matched (nothing is percent-decoded: ``%2e%2e`` is not a name) and every part
checked by :mod:`.catalog` before any lookup. Blob bodies are sent from the store's file with
``os.sendfile`` (no copy through Python), opened by digest with ``O_NOFOLLOW``.
Errors are the spec's JSON: ``{"errors": [{"code", "message", "detail"}]}``.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import select
import socket
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from cargohold.errors import CargoholdError, IntegrityError, InvalidArgument, NotFound
from cargohold.service.registry.catalog import (
    NameInvalid,
    Unknown,
    check_digest,
    check_host,
    check_repository,
    check_tag,
)
from cargohold.types import is_digest

if TYPE_CHECKING:
    from cargohold.service.registry.server import RegistryAPI

ROUTE = re.compile(r"^/v2/(?P<name>[^?#]+?)/(?:(?P<tags>tags/list)|"
                   r"manifests/(?P<ref>[^/]+)|blobs/uploads/(?P<uuid>[^/]*)|"
                   r"blobs/(?P<digest>[^/]+))$")
SERVE_JSON_MAX = 20 << 20
CATALOG_PAGE = 1000


class RegistryError(Exception):
    """An answer other than success: HTTP status, distribution code, message."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def from_cargohold(exc: CargoholdError) -> RegistryError:
    """The HTTP answer for a library error."""
    code = getattr(exc, "code", "")
    if isinstance(exc, NameInvalid):
        return RegistryError(400, code, exc.message)
    if isinstance(exc, Unknown):
        return RegistryError(404, code, exc.message)
    if isinstance(exc, NotFound):
        return RegistryError(404, "BLOB_UNKNOWN", exc.message)
    if isinstance(exc, IntegrityError):
        return RegistryError(400, "DIGEST_INVALID", exc.message)
    if isinstance(exc, InvalidArgument):
        return RegistryError(400, "UNSUPPORTED", exc.message)
    from cargohold.errors import Unavailable

    if isinstance(exc, Unavailable):
        return RegistryError(503, "UNAVAILABLE", exc.message, {"Retry-After": "1"})
    return RegistryError(500, "UNKNOWN", exc.message)


class Handler(http.server.BaseHTTPRequestHandler):
    """One connection of the registry (HTTP/1.1, keep-alive); see the module docstring."""

    protocol_version = "HTTP/1.1"
    server_version = "cargohold"
    sys_version = ""
    api: RegistryAPI  # set on the subclass the server makes

    # --- plumbing --------------------------------------------------------------------------
    def setup(self) -> None:
        self.timeout = self.api.settings.client_timeout
        super().setup()
        self.rfile.close()  # the stdlib's reader: replaced by one that knows the deadline
        self._reader = _DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)
        self.api.connection_opened(self)

    def handle_one_request(self) -> None:
        # The request line and headers must all arrive within client_timeout, not just each
        # byte of them: a client dribbling a byte at a time (slowloris) would hold its thread
        # forever under a per-read timeout alone. The stdlib closes the connection on it.
        self._reader.deadline = time.monotonic() + self.timeout
        super().handle_one_request()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.api.connection_closed(self)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.api.counters.add("registry_requests_total", label=str(code))

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        # The stdlib's own errors (a bad request line, headers too long, an unknown method):
        # as JSON, and the connection closed.
        self.close_connection = True
        self._error(RegistryError(code, "UNSUPPORTED" if code == 501 else "BAD_REQUEST",
                                  message or explain or "bad request"))

    def _start(self, status: int, headers: dict[str, str], length: int) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.end_headers()

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              *, head: bool = False, length: int | None = None) -> None:
        self._start(status, headers or {}, len(body) if length is None else length)
        if body and not head:
            self.wfile.write(body)
            self.api.counters.add("registry_bytes_served_total", len(body))

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(),
                   {"Content-Type": "application/json", **(headers or {})})

    def _error(self, err: RegistryError) -> None:
        body = json.dumps({"errors": [{"code": err.code, "message": err.message,
                                       "detail": {}}]}).encode()
        head = self.command == "HEAD"
        self._send(err.status, body, {"Content-Type": "application/json", **err.headers},
                   head=head)

    # --- dispatch --------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - stdlib's name
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch()

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch()

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        # Headers are in: a body (an upload) and the answer get the per-read/write timeout.
        self._reader.deadline = None
        self.connection.settimeout(self.timeout)
        self.api.request_started(self)
        try:
            self._route()
        except RegistryError as err:
            self._drain_on_error()
            self._error(err)
        except CargoholdError as exc:
            self._drain_on_error()
            self._error(from_cargohold(exc))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        finally:
            self.api.request_finished(self)

    def _drain_on_error(self) -> None:
        # A refused request whose body was not read: the connection cannot be reused.
        if self.command in ("PUT", "PATCH", "POST") and not getattr(self, "_body_read", False):
            self.close_connection = True

    def _route(self) -> None:
        u = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
        path = u.path
        ns = self.query.get("ns", "")
        self.ns = check_host(ns) if ns else ""
        host = self.headers.get("Host", "")
        self.host = host if host and _valid_host(host) else ""
        m = self.command
        if path == "/metrics" and m == "GET":
            self._send(200, self.api.service.metrics_text().encode(),
                       {"Content-Type": "text/plain; version=0.0.4"})
            return
        if path in ("/v2", "/v2/"):
            if m not in ("GET", "HEAD"):
                raise RegistryError(405, "UNSUPPORTED", f"method {m} not allowed on /v2/")
            if self.api.settings.push and not self.api.auth.user(self):
                raise self.api.auth.challenge()
            self._json(200, {})
            return
        if path == "/v2/_catalog" and m == "GET":
            self._catalog()
            return
        r = ROUTE.match(path)
        if not r:
            raise RegistryError(404, "NOT_FOUND", f"no route for {path[:200]!r}")
        name = check_repository(r.group("name"))
        if r.group("uuid") is not None or m in ("POST", "PUT", "PATCH", "DELETE"):
            from cargohold.service.registry import uploads

            uploads.route(self, name, r)
            return
        if m not in ("GET", "HEAD"):
            raise RegistryError(405, "UNSUPPORTED", f"method {m} not allowed")
        if r.group("tags"):
            self._tags(name)
        elif r.group("ref") is not None:
            self._manifest(name, r.group("ref"))
        else:
            self._blob(name, check_digest(r.group("digest")))

    # --- read side -------------------------------------------------------------------------
    def _page(self, items: list[str], base: str) -> tuple[list[str], dict[str, str]]:
        try:
            n = int(self.query.get("n") or 0)
        except ValueError as exc:
            raise RegistryError(400, "PAGINATION_NUMBER_INVALID", "n: not a number") from exc
        last = self.query.get("last", "")
        if last:
            items = [i for i in items if i > last]
        n = min(n, CATALOG_PAGE) if n > 0 else CATALOG_PAGE
        if len(items) <= n:
            return items, {}
        page = items[:n]
        return page, {"Link": f'<{base}?n={n}&last={page[-1]}>; rel="next"'}

    def _catalog(self) -> None:
        repos, link = self._page(self.api.catalog.repositories(), "/v2/_catalog")
        self._json(200, {"repositories": repos}, link)

    def _tags(self, name: str) -> None:
        tags, link = self._page(self.api.catalog.tags(name, self.ns, self.host),
                                f"/v2/{name}/tags/list")
        self._json(200, {"name": name, "tags": tags}, link)

    def _manifest(self, name: str, ref: str) -> None:
        cat = self.api.catalog
        if is_digest(ref) or ":" in ref:
            digest = check_digest(ref)
            media = cat.reaches(name, digest, self.ns, self.host)
            if not media:
                raise Unknown("MANIFEST_UNKNOWN", f"manifest {digest}: not a manifest of {name}")
        else:
            found = cat.resolve_tag(name, check_tag(ref), self.ns, self.host)
            digest, media = found.target.digest, found.target.media_type
        info = self.api.content.info(digest)
        if info.size > SERVE_JSON_MAX:
            raise RegistryError(500, "MANIFEST_INVALID", f"manifest {digest}: too big")
        with self.api.content.reader(digest) as rd:
            data = rd.read()
        self._send(200, data, {"Content-Type": media or cat.manifest_type(digest, data),
                               "Docker-Content-Digest": digest, "ETag": f'"{digest}"'},
                   head=self.command == "HEAD")

    def _blob(self, name: str, digest: str) -> None:
        self.api.catalog.reaches(name, digest, self.ns, self.host)
        self.api.content.info(digest)  # recorded in the served namespace
        path = self.api.store.blob_path(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise Unknown("BLOB_UNKNOWN", f"blob {digest}: not in the store") from exc
        try:
            size = os.fstat(fd).st_size
            start, end = 0, size
            headers = {"Content-Type": "application/octet-stream",
                       "Docker-Content-Digest": digest, "Accept-Ranges": "bytes",
                       "ETag": f'"{digest}"'}
            status = 200
            rng = self.headers.get("Range", "")
            # One bytes range is served; another unit must be ignored (RFC 9110 14.2) and
            # several ranges may be: those get the whole blob, not a 416.
            if rng.strip().startswith("bytes=") and "," not in rng:
                parsed = _parse_range(rng, size)
                if parsed is None:
                    raise RegistryError(416, "RANGE_INVALID", f"range {rng!r}: not satisfiable "
                                        f"for {size} bytes", {"Content-Range": f"bytes */{size}"})
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            self._start(status, headers, end - start)
            if self.command == "GET":
                self._sendfile(fd, start, end - start)
        finally:
            os.close(fd)

    def _sendfile(self, fd: int, offset: int, count: int) -> None:
        """``count`` bytes of ``fd`` from ``offset`` to the client, in the kernel."""
        sock = self.connection
        out = sock.fileno()
        timeout_ms = int(self.api.settings.client_timeout * 1000)
        poller = select.poll()
        poller.register(out, select.POLLOUT)
        counters = self.api.counters
        while count > 0:
            try:
                n = os.sendfile(out, fd, offset, min(count, 1 << 30))
            except BlockingIOError:
                if not poller.poll(timeout_ms):
                    raise TimeoutError("client read nothing for the timeout") from None
                continue
            if n == 0:
                raise BrokenPipeError("blob file ended early")
            offset += n
            count -= n
            counters.add("registry_bytes_served_total", n)


class _DeadlineReader(io.RawIOBase):
    """The connection's reads: each waits at most ``timeout`` seconds, and none goes past
    ``deadline`` (a monotonic time) while it is set; TimeoutError past either.
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self.timeout = timeout
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        wait = self.timeout
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request line and headers: not complete within "
                                   "client_timeout")
            wait = min(wait, left)
        self._sock.settimeout(wait)
        return self._sock.recv_into(b)


def _valid_host(host: str) -> bool:
    try:
        check_host(host)
    except NameInvalid:
        return False
    return True


def _parse_range(text: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range → (start, end exclusive); None when unsatisfiable or malformed."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", text)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):
        n = int(m.group(2))
        if n == 0:
            return None
        return max(0, size - n), size
    start = int(m.group(1))
    end = int(m.group(2)) + 1 if m.group(2) else size
    end = min(end, size)
    if start >= size or end <= start:
        return None
    return start, end
