"""HTTP to registries: one ``requests`` session per TLS setting, retries, auth, clear errors.

:class:`Transport` is the only place that touches the network. Its seam for tests is requests'
own: ``Transport(mounts={"https://fake.test": adapter})`` mounts a transport adapter on every
session it makes (and on the one token realms are reached through), so an in-process fake
registry answers instead of a socket.

:meth:`Transport.request` sends one API request to an endpoint:

- headers from ``hosts.toml`` and the Authorization the :class:`~.auth.Authorizer` has; a 401
  runs the challenge and sends again (at most twice);
- 429 and 5xx answers and dropped connections are retried with exponential backoff
  (``Retry-After`` is honoured up to :data:`MAX_RETRY_AFTER` s), :data:`RETRIES` times;
- an unknown host, a refused connection, a timeout or a TLS failure is not retried here — the
  caller moves on to the next endpoint — and becomes :class:`~.api.Unreachable` or
  :class:`~.api.TLSFailure`, naming the endpoint and what to do.

Other statuses come back to the caller, which turns them into errors with
:func:`status_error`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cargohold.errors import CargoholdError
from cargohold.fetch.api import (
    Endpoint,
    Forbidden,
    RegistryError,
    RegistryNotFound,
    TLSFailure,
    Unauthorized,
    Unreachable,
)
from cargohold.fetch.auth import Authorizer

if TYPE_CHECKING:
    import requests

RETRY_STATUSES = (429, 500, 502, 503, 504)
RETRIES = 4
BACKOFF = 0.5  # seconds before the first retry; doubles each time
MAX_RETRY_AFTER = 30.0
READ_TIMEOUT = 300.0
USER_AGENT = "cargohold/0.1"


def connection_error(what: str, exc: Exception) -> CargoholdError:
    """The error for a request to ``what`` that never got an answer."""
    import requests

    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        import re

        # urllib3 wraps OpenSSL's "[SSL: CODE] reason (_ssl.c:N)" in its retry text.
        m = re.search(r"\[SSL: ([A-Z0-9_]+)\] ([^(']+)", text)
        code = m.group(1) if m else ""
        if code in _CLIENT_CERT_ALERTS:
            return TLSFailure(f"{what}: TLS handshake failed: the registry wants a client "
                              "certificate it trusts", hint='give one with client = [["CERT", '
                              '"KEY"]] in its hosts.toml (--hosts-dir); \'hold hosts explain '
                              'REF\' shows the TLS files used')
        reason = "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in text else \
            (m.group(2).strip() if m else _short(text))
        return TLSFailure(f"{what}: TLS handshake failed: {reason}",
                          hint="give the registry's CA with ca = \"FILE\" in its hosts.toml "
                               "(--hosts-dir), or skip_verify = true for a test registry; "
                               "'hold hosts explain REF' shows the TLS files used")
    if ("NameResolutionError" in text or "Name or service not known" in text
            or "nodename nor servname" in text or "Temporary failure in name resolution" in text
            or "No address associated" in text):
        return Unreachable(f"{what}: unknown host",
                           hint="check the registry name in the reference, or the mirror URL "
                                "in hosts.toml ('hold hosts explain REF')")
    if "Connection refused" in text or "Errno 111" in text:
        return Unreachable(f"{what}: connection refused",
                           hint="is the registry running there (and on that port)? A plain "
                                "HTTP registry needs --plain-http or an http:// URL in "
                                "hosts.toml")
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return Unreachable(f"{what}: no answer (connect timeout)",
                           hint="check the network; dial_timeout in hosts.toml sets the limit")
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return Unreachable(f"{what}: stopped answering (read timeout)",
                           hint="try again; the registry or the network is overloaded")
    return Unreachable(f"{what}: connection failed: {_short(text)}",
                       hint="check the network and the endpoint ('hold hosts explain REF')")


#: alerts a server sends when it wants a client certificate, or refused the one we showed
_CLIENT_CERT_ALERTS = ("SSLV3_ALERT_BAD_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
                       "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_CERTIFICATE_UNKNOWN")


def _short(text: str) -> str:
    return text if len(text) < 200 else text[:200] + "…"


def is_final_connection_error(err: CargoholdError) -> bool:
    """Errors a retry on the same endpoint cannot fix (next endpoint instead)."""
    return isinstance(err, TLSFailure) or (isinstance(err, Unreachable) and (
        "unknown host" in err.message or "refused" in err.message
        or "connect timeout" in err.message))


def status_error(where: str, r: requests.Response, what: str) -> CargoholdError:
    """The error for an unexpected answer ``r`` to a request for ``what`` at ``where``."""
    detail = _registry_message(r)
    if r.status_code == 400 and b"HTTP request to an HTTPS server" in _body_head(r):
        host = r.url.split("://", 1)[-1].split("/", 1)[0] if r.url else "HOST"
        return RegistryError(f"{where}: {what}: the endpoint speaks HTTPS, not plain HTTP",
                             hint=f'ask it over HTTPS: server = "https://{host}" in '
                                  f"{host}/hosts.toml under the hosts directory (--hosts-dir)")
    if r.status_code == 404:
        return RegistryNotFound(f"{where}: {what}: not found{detail}",
                                hint="check the repository and tag (or digest); on a mirror, "
                                     "whether it has the image")
    if r.status_code == 403:
        return Forbidden(f"{where}: {what}: 403 forbidden{detail}",
                         hint="these credentials may not do this; check the account's access "
                              "to the repository")
    if r.status_code == 401:
        return Unauthorized(f"{where}: {what}: 401 unauthorized{detail}",
                            hint="give credentials with --user USER[:PASSWORD] or in "
                                 "~/.docker/config.json")
    if r.status_code == 429:
        return RegistryError(f"{where}: {what}: 429 too many requests{detail} (after "
                             f"{RETRIES} retries)", hint="wait and try again; a mirror "
                             "(hosts.toml) avoids the rate limit")
    return RegistryError(f"{where}: {what}: unexpected status {r.status_code}{detail}",
                         hint="try again later; if it persists, the registry is broken")


def _body_head(r: requests.Response) -> bytes:
    """The start of an error answer's body; b"" when it was streamed away or is unreadable."""
    try:
        return (r.content or b"")[:512]
    except Exception:  # noqa: BLE001 - a consumed or closed stream: no body to show
        return b""


def _registry_message(r: requests.Response) -> str:
    """The first ``errors[].message`` of a distribution error body, as ``(CODE: text)``."""
    try:
        if "json" not in r.headers.get("Content-Type", ""):
            return ""
        errs = r.json().get("errors") or []
        e = errs[0]
        return f" ({e.get('code', '')}: {e.get('message', '')})"
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""


class Transport:
    """Sessions, auth and retries for one operation (see the module docstring)."""

    def __init__(self, authorizer: Authorizer | None = None, *,
                 mounts: dict[str, Any] | None = None, backoff: float = BACKOFF,
                 retries: int = RETRIES, sleep: Callable[[float], None] = time.sleep,
                 pool_size: int = 16) -> None:
        self.mounts = dict(mounts or {})
        self.authorizer = authorizer or Authorizer(session_for=self.session_for_url)
        if authorizer is not None and authorizer._session_for is None:
            authorizer._session_for = self.session_for_url
        self.backoff = backoff
        self.retries = retries
        self.sleep = sleep
        self.pool_size = pool_size
        self._sessions: dict[tuple, requests.Session] = {}
        self._mu = threading.Lock()

    # --- sessions ----------------------------------------------------------------------
    def session(self, ep: Endpoint | None = None) -> requests.Session:
        """The session for ``ep``'s TLS settings (made once)."""
        key = (ep.skip_verify, ep.ca, ep.client) if ep is not None else (False, (), ())
        with self._mu:
            s = self._sessions.get(key)
            if s is None:
                s = self._sessions[key] = self._make_session(*key)
            return s

    def session_for_url(self, url: str) -> requests.Session:
        return self.session(None)

    def _make_session(self, skip_verify: bool, ca: tuple[str, ...],
                      client: tuple[tuple[str, str], ...]) -> requests.Session:
        import requests
        from requests.adapters import HTTPAdapter

        ctx = _ssl_context(skip_verify, ca, client)
        if skip_verify:
            import urllib3

            # Asked for in hosts.toml (and shown by 'hold hosts explain'): urllib3 would
            # otherwise print a warning on stderr for every request, pipes included.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

        class _Adapter(HTTPAdapter):
            def init_poolmanager(self, *a: Any, **kw: Any) -> None:
                kw["ssl_context"] = ctx
                super().init_poolmanager(*a, **kw)

        s = requests.Session()
        s.trust_env = False  # no netrc or proxy surprises; hosts.toml is the configuration
        s.verify = not skip_verify
        s.headers["User-Agent"] = USER_AGENT
        ad = _Adapter(pool_connections=4, pool_maxsize=self.pool_size, max_retries=0)
        s.mount("https://", ad)
        s.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_size,
                                       max_retries=0))
        for prefix, adapter in self.mounts.items():
            s.mount(prefix, adapter)
        return s

    def close(self) -> None:
        with self._mu:
            for s in self._sessions.values():
                s.close()
            self._sessions.clear()

    # --- requests ----------------------------------------------------------------------
    def request(self, ep: Endpoint, method: str, path: str = "", *, url: str = "",
                scopes: tuple[str, ...] = (), headers: dict[str, str] | None = None,
                params: list[tuple[str, str]] | None = None, data: Any = None,
                stream: bool = False, what: str = "", retry: bool = True
                ) -> requests.Response:
        """Send ``method`` to ``url`` (or ``ep.url + path``); the answer, of any status but
        401 and (after retries) 429/5xx-then-success. Raises Unreachable/TLSFailure when no
        answer came, Unauthorized when authentication failed. ``data`` may be a callable that
        makes the body afresh for each attempt.
        """
        import requests

        target = url or (ep.url + path)
        where = ep.describe()
        session = self.session(ep)
        hdrs = ep.header_dict()
        hdrs.update(headers or {})
        auth = self.authorizer.header(ep.host, scopes)
        challenges = 0
        attempt = 0
        while True:
            h = dict(hdrs)
            if auth:
                h["Authorization"] = auth
            body = data() if callable(data) else data
            try:
                r = session.request(method, target, headers=h, params=params, data=body,
                                    stream=stream, allow_redirects=True,
                                    timeout=(ep.dial_timeout, READ_TIMEOUT))
            except requests.RequestException as exc:
                err = connection_error(where, exc)
                if not retry or is_final_connection_error(err) or attempt >= self.retries:
                    raise err from exc
                attempt += 1
                self.sleep(self.backoff * (2 ** (attempt - 1)))
                continue
            if r.status_code == 401 and challenges < 2:
                challenges += 1
                sent = auth
                auth = self.authorizer.challenge(ep.host, r, scopes, sent, where,
                                                 session=session)
                r.close()
                if auth == sent:
                    raise Unauthorized(f"{where}: {what or target}: credentials refused",
                                       hint="check the user and password (--user)")
                continue
            if retry and r.status_code in RETRY_STATUSES and attempt < self.retries:
                attempt += 1
                delay = self.backoff * (2 ** (attempt - 1))
                ra = r.headers.get("Retry-After", "")
                if ra.isdigit():
                    delay = max(delay, min(float(ra), MAX_RETRY_AFTER))
                r.close()
                self.sleep(delay)
                continue
            return r


def _ssl_context(skip_verify: bool, ca: tuple[str, ...],
                 client: tuple[tuple[str, str], ...]) -> Any:
    """A TLS context: the system's CAs plus ``ca`` (as containerd adds them), client certs."""
    import ssl

    ctx = ssl.create_default_context()
    if skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for f in ca:
        try:
            ctx.load_verify_locations(cafile=f)
        except (OSError, ssl.SSLError) as exc:
            raise TLSFailure(f"CA file {f}: cannot load: {exc}",
                             hint="ca must name PEM certificate files") from exc
    for cert, key in client:
        try:
            ctx.load_cert_chain(cert, key or None)
        except (OSError, ssl.SSLError) as exc:
            raise TLSFailure(f"client certificate {cert}: cannot load: {exc}",
                             hint="client must name a PEM certificate and its key") from exc
    return ctx
