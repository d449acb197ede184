"""Registry authentication: anonymous, basic, and bearer tokens from ``WWW-Authenticate``.

:class:`Authorizer` is shared by every request of one operation:

- :meth:`Authorizer.header` gives the ``Authorization`` value to send first: a cached bearer
  token for this host and these scopes, basic credentials for a host that asked for them
  before, or nothing;
- :meth:`Authorizer.challenge` handles a 401: for ``Basic`` it sends the credentials (an
  Unauthorized error when there are none, or they were just refused); for ``Bearer`` it asks
  the ``realm`` for a token with the challenge's ``service`` and the union of its ``scope`` and
  ours (``GET realm?service=…&scope=…`` with basic credentials, or an OAuth2 ``POST`` with
  ``grant_type=refresh_token`` for an identity token), caches it per (realm, service, scopes)
  until shortly before ``expires_in`` runs out, and returns the new header. A cached token that
  draws a 401 is dropped and fetched once more — renewed, not retried blindly.

Nothing here prints; secrets never appear in error messages.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cargohold._record import field, record
from cargohold.fetch.api import Forbidden, RegistryError, Unauthorized
from cargohold.fetch.credentials import Credentials, Secret

if TYPE_CHECKING:
    import requests

#: a token is renewed this long before the registry says it expires
EXPIRY_MARGIN = 10.0
DEFAULT_TOKEN_LIFETIME = 60.0  # the distribution token spec's default for expires_in
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@record(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: the scheme (lower case) and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse ``Bearer realm="…",service="…", Basic realm="…"`` into challenges."""
    out: list[Challenge] = []
    pos = 0
    text = header.strip()
    while pos < len(text):
        m = re.match(r"\s*,?\s*([A-Za-z][A-Za-z0-9_-]*)(?:\s+|$)", text[pos:])
        if not m:
            break
        scheme = m.group(1).lower()
        pos += m.end()
        params: dict[str, str] = {}
        while pos < len(text):
            pm = _PARAM.match(text, pos)
            if not pm:
                break
            # A bare word followed by a space is the next challenge's scheme, not a param.
            params[pm.group(1).lower()] = (re.sub(r"\\(.)", r"\1", pm.group(2))
                                           if pm.group(2) is not None else pm.group(3))
            pos = pm.end()
        out.append(Challenge(scheme, params))
    return out


def merge_scopes(scopes: list[str]) -> tuple[str, ...]:
    """One scope per resource, with the union of its actions (``repository:a:pull`` and
    ``repository:a:pull,push`` → ``repository:a:pull,push``), sorted.
    """
    acts: dict[str, list[str]] = {}
    for s in scopes:
        if not s:
            continue
        res, sep, actions = s.rpartition(":")
        if not sep or ":" not in res:
            acts.setdefault(s, [])
            continue
        have = acts.setdefault(res, [])
        have += [a for a in actions.split(",") if a and a not in have]
    return tuple(sorted(f"{r}:{','.join(a)}" if a else r for r, a in acts.items()))


def _basic(secret: Secret) -> str:
    import base64

    raw = f"{secret.username}:{secret.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class Authorizer:
    """Authorization state for one operation (see the module docstring).

    ``session_for(url)`` returns the HTTP session to reach a token realm with (so realms get
    the same TLS settings and test adapters as the registry).
    """

    def __init__(self, credentials: Credentials | None = None, *,
                 session_for: Callable[[str], requests.Session] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.credentials = credentials or Credentials()
        self._session_for = session_for
        self._clock = clock
        self._mu = threading.Lock()
        self._tokens: dict[tuple[str, str, tuple[str, ...]], tuple[str, float]] = {}
        self._bearer: dict[str, Challenge] = {}  # host -> its last bearer challenge
        self._basic: set[str] = set()  # hosts that asked for basic auth
        self.token_requests = 0  # how many tokens were fetched (for tests and stats)

    # --- before a request --------------------------------------------------------------
    def header(self, host: str, scopes: tuple[str, ...]) -> str | None:
        """The Authorization header to send to ``host`` now, or None."""
        with self._mu:
            if host in self._basic:
                secret = self.credentials.get(host)
                return _basic(secret) if secret is not None and secret.password else None
            ch = self._bearer.get(host)
            if ch is None:
                return None
            key = self._key(ch, scopes)
            hit = self._tokens.get(key)
            if hit is not None and hit[1] > self._clock():
                return f"Bearer {hit[0]}"
        return None

    # --- after a 401 -------------------------------------------------------------------
    def challenge(self, host: str, response: requests.Response, scopes: tuple[str, ...],
                  sent: str | None, where: str, *,
                  session: requests.Session | None = None) -> str:
        """A new Authorization value after ``response`` (a 401) from ``host``.

        ``sent`` is what the failed request carried. ``session`` is the endpoint's: its
        token realm is asked through it, with the endpoint's TLS settings (``ca``,
        ``client``, ``skip_verify`` of hosts.toml), as containerd does — a private registry's
        realm is usually on the same host, behind the same private CA. Raises Unauthorized
        when there is nothing new to try (no credentials, or these were refused).
        """
        chs = parse_challenges(response.headers.get("WWW-Authenticate", ""))
        bearer = next((c for c in chs if c.scheme == "bearer"), None)
        basic = next((c for c in chs if c.scheme == "basic"), None)
        secret = self.credentials.get(host)
        if bearer is not None and bearer.params.get("realm"):
            merged = merge_scopes([*scopes, *bearer.params.get("scope", "").split(" ")])
            with self._mu:
                self._bearer[host] = bearer
                key = self._key(bearer, scopes)
                if sent and sent.startswith("Bearer "):
                    self._tokens.pop(key, None)  # refused: renew it
            token, lifetime = self._fetch_token(bearer, merged, secret, where, host, session)
            with self._mu:
                self._tokens[key] = (token, self._clock() + max(lifetime - EXPIRY_MARGIN,
                                                                 1.0))
            return f"Bearer {token}"
        if basic is not None:
            if secret is None or not secret.password:
                raise Unauthorized(f"{where}: authentication required (basic)",
                                   hint=_login_hint(host))
            value = _basic(secret)
            if sent == value:
                raise Unauthorized(f"{where}: user {secret.username!r} ({secret.source}) was "
                                   "refused", hint=_login_hint(host))
            with self._mu:
                self._basic.add(host)
            return value
        raise Unauthorized(f"{where}: 401 without a usable WWW-Authenticate challenge "
                           f"({response.headers.get('WWW-Authenticate', 'none')!r})",
                           hint=_login_hint(host))

    @staticmethod
    def _key(ch: Challenge, scopes: tuple[str, ...]) -> tuple[str, str, tuple[str, ...]]:
        return (ch.params.get("realm", ""), ch.params.get("service", ""),
                tuple(sorted(scopes)))

    def _fetch_token(self, ch: Challenge, scopes: tuple[str, ...], secret: Secret | None,
                     where: str, host: str, session: requests.Session | None = None
                     ) -> tuple[str, float]:
        import requests

        realm = ch.params["realm"]
        service = ch.params.get("service", "")
        if session is None:
            session = self._session_for(realm) if self._session_for else requests.Session()
        what = f"token server {realm} (for {where})"
        try:
            if secret is not None and secret.identity_token:
                data = {"grant_type": "refresh_token", "refresh_token": secret.identity_token,
                        "service": service, "client_id": "cargohold",
                        "scope": " ".join(scopes)}
                r = session.post(realm, data=data, timeout=30)
            else:
                params: list[tuple[str, str]] = []
                if service:
                    params.append(("service", service))
                params += [("scope", s) for s in scopes]
                auth = (secret.username, secret.password) if secret and secret.password else None
                r = session.get(realm, params=params, auth=auth, timeout=30)
        except requests.RequestException as exc:
            from cargohold.fetch.transport import connection_error

            raise connection_error(what, exc) from exc
        self.token_requests += 1
        if r.status_code in (401, 403):
            who = f"user {secret.username!r} ({secret.source})" if secret else "anonymous"
            cls = Unauthorized if r.status_code == 401 else Forbidden
            raise cls(f"{what}: {r.status_code}: {who} refused for {' '.join(scopes) or '-'}",
                      hint=_login_hint(host))
        if r.status_code != 200:
            raise RegistryError(f"{what}: unexpected status {r.status_code}")
        try:
            doc: Any = r.json()
            token = str(doc.get("token") or doc.get("access_token") or "")
            lifetime = float(doc.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError) as exc:
            raise RegistryError(f"{what}: answer is not token JSON") from exc
        if not token:
            raise RegistryError(f"{what}: answer has no token")
        return token, lifetime


def _login_hint(host: str) -> str:
    return (f"give credentials for {host} with --user USER[:PASSWORD], or add them to "
            "~/.docker/config.json (auths, credHelpers or credsStore)")
