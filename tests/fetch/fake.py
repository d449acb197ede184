"""An in-process fake registry, mounted with requests' transport adapters (``Session.mount``).

``FakeRegistry`` answers the distribution API for ``https://fake.test`` (and any host you
mount it on) from dicts, and can misbehave on purpose: queued statuses per request, basic or
bearer auth (its token realm is ``https://auth.fake.test/token``), tokens that expire, a
registry that ignores ``Range``, a body that drops part-way. ``log`` records every request.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections import deque

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.response import HTTPResponse


class _Dropping(io.BytesIO):
    """A body that raises a connection reset after ``limit`` bytes."""

    def __init__(self, data: bytes, limit: int) -> None:
        super().__init__(data)
        self.limit = limit

    def read(self, n: int = -1) -> bytes:
        pos = self.tell()
        if pos >= self.limit:
            raise ConnectionResetError(104, "Connection reset by peer")
        if n < 0 or pos + n > self.limit:
            n = self.limit - pos
        return super().read(n)


class FakeRegistry(BaseAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.queued: deque[tuple[str, str, int, dict]] = deque()  # method, regex, status, hdrs
        self.auth = ""  # "", "basic", "bearer"
        self.users = {"alice": "secret"}
        self.tokens: set[str] = set()
        self.token_log: list[dict] = []
        self.ranges = True
        self.drop: dict[str, int] = {}  # digest -> cut the next GET body after N bytes
        self.head_digest = True
        self.log: list[tuple[str, str, dict]] = []
        self.timeouts: list[object] = []  # the timeout requests gave each send
        self.uploads: dict[str, bytearray] = {}

    # --- content -------------------------------------------------------------------------
    def add_blob(self, data: bytes) -> str:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[d] = data
        return d

    def add_manifest(self, repo: str, tag: str, media: str, doc: dict) -> tuple[str, int]:
        data = json.dumps(doc).encode()
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        self.manifests[(repo, tag)] = (media, data)
        self.manifests[(repo, d)] = (media, data)
        return d, len(data)

    # --- adapter -------------------------------------------------------------------------
    def close(self) -> None:
        pass

    def _resp(self, req, status: int, body: bytes = b"", headers: dict | None = None,
              raw_body: io.BytesIO | None = None) -> requests.Response:
        h = dict(headers or {})
        h.setdefault("Content-Length", str(len(body)))
        r = requests.Response()
        r.status_code = status
        r.headers = CaseInsensitiveDict(h)
        r.raw = HTTPResponse(body=raw_body or io.BytesIO(body if req.method != "HEAD" else b""),
                             headers=h, status=status, preload_content=False,
                             decode_content=False, request_method=req.method)
        r.url = req.url
        r.request = req
        r.reason = {200: "OK", 401: "Unauthorized"}.get(status, "X")
        return r

    def send(self, req, **kw):  # noqa: ANN001, ANN003
        from urllib.parse import parse_qs, urlsplit

        self.log.append((req.method, req.url, dict(req.headers)))
        self.timeouts.append(kw.get("timeout"))
        u = urlsplit(req.url)
        for i, (method, pat, status, hdrs) in enumerate(self.queued):
            if method == req.method and re.search(pat, u.path):
                del self.queued[i]
                return self._resp(req, status, b'{"errors":[{"code":"X","message":"queued"}]}',
                                  {"Content-Type": "application/json", **hdrs})
        if u.netloc == "auth.fake.test":
            q = parse_qs(u.query)
            if req.method == "POST":  # OAuth2 form: grant_type, refresh_token, scope, ...
                body = req.body.decode() if isinstance(req.body, bytes) else req.body or ""
                q.update({k: v if k != "scope" else v[0].split(" ")
                          for k, v in parse_qs(body).items()})
            return self._token(req, q)
        if self.auth and not self._authorized(req):
            ch = ('Basic realm="fake"' if self.auth == "basic" else
                  'Bearer realm="https://auth.fake.test/token",service="fake.test"')
            return self._resp(req, 401, b"", {"WWW-Authenticate": ch})
        m = re.match(r"^/v2/(.+)/(manifests|blobs)/([^/]+)$", u.path)
        if m:
            repo, kind, obj = m.groups()
            if kind == "manifests":
                return self._manifest(req, repo, obj)
            return self._blob(req, obj)
        if u.path == "/v2/":
            return self._resp(req, 200, b"{}")
        return self._resp(req, 404, b"")

    def _authorized(self, req) -> bool:  # noqa: ANN001
        auth = req.headers.get("Authorization", "")
        if self.auth == "basic" and auth.startswith("Basic "):
            u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
            return self.users.get(u) == p
        return self.auth == "bearer" and auth.startswith("Bearer ") and auth[7:] in self.tokens

    def _token(self, req, q: dict) -> requests.Response:  # noqa: ANN001
        auth = req.headers.get("Authorization", "")
        user = ""
        if auth.startswith("Basic "):
            user, _, p = base64.b64decode(auth[6:]).decode().partition(":")
            if self.users.get(user) != p:
                return self._resp(req, 401)
        tok = f"tok-{len(self.token_log)}"
        self.token_log.append({"user": user, "scope": q.get("scope", []),
                               "service": q.get("service", [""])[0],
                               "method": req.method,
                               "refresh_token": q.get("refresh_token", [""])[0]})
        self.tokens.add(tok)
        return self._resp(req, 200, json.dumps({"token": tok, "expires_in": 300}).encode(),
                          {"Content-Type": "application/json"})

    def _manifest(self, req, repo: str, obj: str) -> requests.Response:  # noqa: ANN001
        hit = self.manifests.get((repo, obj))
        if hit is None:
            return self._resp(req, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN",'
                              b'"message":"manifest unknown"}]}',
                              {"Content-Type": "application/json"})
        media, data = hit
        h = {"Content-Type": media}
        if self.head_digest or req.method == "GET":
            h["Docker-Content-Digest"] = "sha256:" + hashlib.sha256(data).hexdigest()
        return self._resp(req, 200, data, h)

    def _blob(self, req, digest: str) -> requests.Response:  # noqa: ANN001
        data = self.blobs.get(digest)
        if data is None:
            return self._resp(req, 404, b'{"errors":[{"code":"BLOB_UNKNOWN",'
                              b'"message":"blob unknown"}]}',
                              {"Content-Type": "application/json"})
        rng = req.headers.get("Range", "")
        status, start, end = 200, 0, len(data)
        if rng and self.ranges:
            a, _, b = rng[6:].partition("-")
            start, end = int(a), (int(b) + 1 if b else len(data))
            status = 206
        body = data[start:end]
        h = {"Content-Length": str(len(body))}
        if status == 206:
            h["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        raw = None
        if digest in self.drop and req.method == "GET":
            raw = _Dropping(body, self.drop.pop(digest))
        return self._resp(req, status, body, h, raw)
