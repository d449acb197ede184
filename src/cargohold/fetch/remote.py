"""The OCI distribution API of one repository, over the endpoints ``hosts.toml`` gives.

:class:`Remote` knows the repository, its endpoints and the transport. Reads try the endpoints
that have the capability (``resolve`` for tags, ``pull`` for blobs and manifests by digest)
in order and move on when one fails — not found, unreachable, refused, unauthorized, a wrong
digest — so a mirror that is down or incomplete falls back to the next, and the error after
the last one lists every earlier answer. Requests to mirrors carry ``?ns=<registry>``.

- :meth:`Remote.resolve`: ``HEAD /v2/<repo>/manifests/<tag|digest>`` with the OCI and Docker
  manifest types in ``Accept``; a registry that gives no ``Docker-Content-Digest`` on HEAD is
  asked with GET, and the body hashed. A digest reference must come back as that digest.
- :meth:`Remote.fetch_bytes`: a manifest or config, verified against its descriptor.
- :meth:`Remote.open_blob`: a streaming GET of a blob, optionally from an offset or a range
  (``206`` tells whether the registry honours ``Range``).
- push: :meth:`Remote.blob_exists`, :meth:`Remote.start_upload` (with a cross-repository
  mount when the blob is known to be in another repository of the same registry),
  :meth:`Remote.upload` (one PUT, or PATCH chunks then PUT), :meth:`Remote.put_manifest`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from cargohold._record import record
from cargohold.errors import CargoholdError, IntegrityError, InvalidArgument
from cargohold.fetch.api import Endpoint, Reference, RegistryError, attempts_text
from cargohold.fetch.hosts import HostsConfig
from cargohold.fetch.transport import Transport, status_error
from cargohold.images import mediatypes as mt
from cargohold.images.manifest import MAX_JSON
from cargohold.types import Descriptor, Digest

if TYPE_CHECKING:
    import requests

ACCEPT = ", ".join([mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_LIST, mt.DOCKER_MANIFEST, "*/*"])
T = TypeVar("T")


@record
class BlobStream:
    """An open blob download: the response, where it came from, and what it covers."""

    response: requests.Response
    endpoint: Endpoint
    start: int  # the offset of the first byte of the body
    ranged: bool  # the registry answered 206 to a Range request

    def read(self, n: int) -> bytes:
        return self.response.raw.read(n)

    def close(self) -> None:
        self.response.close()

    def abort(self) -> None:
        """Close from another thread: shut the socket down, so a read blocked on a silent
        registry returns at once instead of at the read timeout.
        """
        import socket

        raw = self.response.raw
        conn = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
        sock = getattr(conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self.close()


class Remote:
    """One repository on a registry, through its configured endpoints."""

    def __init__(self, ref: Reference, hosts: HostsConfig, transport: Transport, *,
                 push: bool = False, mount_from: tuple[str, ...] = ()) -> None:
        self.ref = ref
        self.hosts = hosts
        self.transport = transport
        action = "pull,push" if push else "pull"
        self.scopes = (f"repository:{ref.repository}:{action}",
                       *(f"repository:{r}:pull" for r in mount_from if r != ref.repository))

    # --- helpers -------------------------------------------------------------------------
    def _params(self, ep: Endpoint) -> list[tuple[str, str]] | None:
        return [("ns", self.ref.registry)] if ep.mirror else None

    def _api(self, ep: Endpoint, method: str, tail: str, **kw: Any) -> requests.Response:
        return self.transport.request(ep, method, f"/{self.ref.repository}/{tail}",
                                      scopes=self.scopes, params=self._params(ep), **kw)

    def _endpoints(self, capability: str) -> list[Endpoint]:
        eps = self.hosts.with_capability(capability)
        if not eps:
            src = self.hosts.file or "the defaults"
            raise InvalidArgument(f"registry {self.ref.registry}: no endpoint with capability "
                                  f"{capability!r} in {src}",
                                  hint="add it to a host's capabilities (or set server) in "
                                       "hosts.toml; 'hold hosts explain REF' lists them")
        return eps

    def each(self, capability: str, fn: Callable[[Endpoint], T]) -> T:
        """``fn(endpoint)`` on each endpoint with ``capability`` until one succeeds."""
        attempts: list[tuple[Endpoint, CargoholdError]] = []
        eps = self._endpoints(capability)
        for ep in eps:
            try:
                return fn(ep)
            except CargoholdError as exc:
                if ep is eps[-1]:
                    if attempts:
                        exc.message += attempts_text(attempts)
                        exc.args = (exc.message,)
                    raise
                attempts.append((ep, exc))
        raise AssertionError("unreachable")

    # --- reads ---------------------------------------------------------------------------
    def resolve(self) -> tuple[Descriptor, Endpoint]:
        """The descriptor the reference names now, and the endpoint that said so."""
        return self.each("resolve" if not self.ref.digest else "pull", self._resolve_at)

    def _resolve_at(self, ep: Endpoint) -> tuple[Descriptor, Endpoint]:
        obj = self.ref.object
        what = f"manifest {self.ref.repository}:{obj}" if not self.ref.digest else \
            f"manifest {self.ref.repository}@{obj}"
        r = self._api(ep, "HEAD", f"manifests/{obj}", headers={"Accept": ACCEPT}, what=what)
        r.close()
        digest = r.headers.get("Docker-Content-Digest", "")
        media = r.headers.get("Content-Type", "").split(";")[0].strip()
        size = int(r.headers.get("Content-Length") or 0)
        if r.status_code != 200 or not digest or not media or not size:
            if r.status_code not in (200, 405, 400) and r.status_code != 501:
                raise status_error(ep.describe(), r, what)
            g = self._api(ep, "GET", f"manifests/{obj}", headers={"Accept": ACCEPT},
                          what=what)
            if g.status_code != 200:
                raise status_error(ep.describe(), g, what)
            body = g.content
            media = g.headers.get("Content-Type", "").split(";")[0].strip()
            digest = Digest.from_bytes(body)
            size = len(body)
        digest = _digest(digest, ep, what)
        if self.ref.digest and digest != self.ref.digest:
            raise IntegrityError(f"{ep.describe()}: {what}: answered with digest {digest}",
                                 hint="the registry or mirror serves other content; do not "
                                      "trust it")
        mt.refuse_schema1(media, f"{ep.describe()}: {what}")
        return Descriptor(media, digest, size), ep

    def fetch_bytes(self, desc: Descriptor, *, manifest: bool) -> bytes:
        """A manifest/index (``manifest=True``) or a small blob, verified against ``desc``."""
        if desc.size > MAX_JSON:
            raise InvalidArgument(f"{desc.media_type} {desc.digest}: {desc.size} bytes is too "
                                  "big for a manifest or config")

        def at(ep: Endpoint) -> bytes:
            kind = "manifests" if manifest else "blobs"
            what = f"{'manifest' if manifest else 'blob'} {desc.digest}"
            headers = {"Accept": ACCEPT} if manifest else {}
            r = self._api(ep, "GET", f"{kind}/{desc.digest}", headers=headers, what=what)
            if r.status_code != 200:
                raise status_error(ep.describe(), r, what)
            body = r.content
            verify(body, desc, ep)
            return body

        return self.each("pull", at)

    def open_blob(self, desc: Descriptor, offset: int = 0, end: int = 0,
                  endpoint: Endpoint | None = None) -> BlobStream:
        """Start a GET of ``desc`` from ``offset`` (to ``end``, exclusive; 0 = the end).

        With ``endpoint`` only that one is asked (retries and parts stay where the blob was
        found); otherwise the pull endpoints in order.
        """
        headers = {"Accept-Encoding": "identity"}
        if offset or end:
            headers["Range"] = f"bytes={offset}-{end - 1 if end else ''}"

        def at(ep: Endpoint) -> BlobStream:
            what = f"blob {desc.digest}"
            r = self._api(ep, "GET", f"blobs/{desc.digest}", headers=headers, stream=True,
                          what=what)
            if r.status_code == 206:
                return BlobStream(r, ep, _range_start(r, ep, what), True)
            if r.status_code == 200:
                return BlobStream(r, ep, 0, False)
            r.close()
            if r.status_code == 416 and offset >= desc.size:
                raise RegistryError(f"{ep.describe()}: {what}: range {offset}- beyond the "
                                    f"{desc.size} bytes the manifest gives")
            raise status_error(ep.describe(), r, what)

        if endpoint is not None:
            return at(endpoint)
        return self.each("pull", at)

    # --- push ----------------------------------------------------------------------------
    def blob_exists(self, ep: Endpoint, digest: str) -> bool:
        r = self._api(ep, "HEAD", f"blobs/{digest}", what=f"blob {digest}")
        r.close()
        if r.status_code == 200:
            return True
        if r.status_code == 404:
            return False
        raise status_error(ep.describe(), r, f"blob {digest}")

    def start_upload(self, ep: Endpoint, digest: str, mount_from: str = "") -> str:
        """Begin an upload; "" when the registry mounted ``digest`` from ``mount_from``
        instead, else the upload URL.
        """
        params = list(self._params(ep) or [])
        if mount_from:
            params += [("mount", digest), ("from", mount_from)]
        r = self.transport.request(ep, "POST", f"/{self.ref.repository}/blobs/uploads/",
                                   scopes=self.scopes, params=params or None,
                                   headers={"Content-Length": "0"},
                                   what=f"upload of blob {digest}")
        r.close()
        if r.status_code == 201 and mount_from:
            return ""
        if r.status_code != 202:
            raise status_error(ep.describe(), r, f"upload of blob {digest}")
        return self._location(ep, r, f"upload of blob {digest}")

    def upload(self, ep: Endpoint, location: str, desc: Descriptor,
               open_reader: Callable[[], BinaryIO], *, chunk: int = 0,
               progress: Callable[[int], None] | None = None) -> None:
        """Send the blob to ``location``: one PUT, or (``chunk`` > 0 and the blob larger)
        PATCHes of ``chunk`` bytes and a final PUT. Raises on any refusal.
        """
        what = f"upload of blob {desc.digest}"
        if chunk and desc.size > chunk:
            with open_reader() as f:
                offset = 0
                while offset < desc.size:
                    n = min(chunk, desc.size - offset)
                    data = f.read(n)
                    if len(data) != n:
                        raise IntegrityError(f"blob {desc.digest}: shorter than its "
                                             f"{desc.size} bytes")
                    r = self.transport.request(
                        ep, "PATCH", url=location, scopes=self.scopes, data=data,
                        headers={"Content-Type": "application/octet-stream",
                                 "Content-Range": f"{offset}-{offset + n - 1}",
                                 "Content-Length": str(n)}, what=what, retry=False)
                    r.close()
                    if r.status_code != 202:
                        raise status_error(ep.describe(), r, what)
                    location = self._location(ep, r, what)
                    offset += n
                    if progress:
                        progress(n)
            body: Any = b""
        else:
            def body() -> _Body:
                return _Body(open_reader(), desc.size, progress)
        r = self.transport.request(
            ep, "PUT", url=_with_query(location, [("digest", desc.digest)]),
            scopes=self.scopes, data=body,
            headers={"Content-Type": "application/octet-stream"}, what=what, retry=False)
        r.close()
        if r.status_code not in (201, 204):
            raise status_error(ep.describe(), r, what)

    def put_manifest(self, ep: Endpoint, tag_or_digest: str, desc: Descriptor,
                     data: bytes) -> None:
        what = f"manifest {self.ref.repository}:{tag_or_digest}"
        r = self._api(ep, "PUT", f"manifests/{tag_or_digest}", data=data,
                      headers={"Content-Type": desc.media_type}, what=what)
        r.close()
        if r.status_code not in (200, 201, 204):
            raise status_error(ep.describe(), r, what)
        got = r.headers.get("Docker-Content-Digest")
        if got and got != desc.digest:
            raise IntegrityError(f"{ep.describe()}: {what}: stored as {got}, not "
                                 f"{desc.digest}")

    def _location(self, ep: Endpoint, r: requests.Response, what: str) -> str:
        from urllib.parse import urljoin

        loc = r.headers.get("Location", "")
        if not loc:
            raise RegistryError(f"{ep.describe()}: {what}: no Location in the answer")
        return urljoin(ep.url + "/", loc)


class _Body:
    """An upload body: a reader with a length (so requests sends Content-Length, not
    chunks), reporting progress and closing the reader at the end.
    """

    def __init__(self, reader: BinaryIO, size: int,
                 progress: Callable[[int], None] | None) -> None:
        self.reader = reader
        self.size = size
        self.progress = progress

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        while b := self.read(1 << 20):
            yield b

    def read(self, n: int = -1) -> bytes:
        b = self.reader.read(1 << 20 if n is None or n < 0 else max(n, 1 << 16))
        if not b:
            self.reader.close()
        elif self.progress:
            self.progress(len(b))
        return b


def verify(body: bytes, desc: Descriptor, ep: Endpoint) -> None:
    """Check ``body`` against ``desc`` (size and digest); IntegrityError naming ``ep``."""
    d = Digest(desc.digest)
    got = Digest.from_bytes(body, d.algorithm)
    if got != desc.digest or len(body) != desc.size:
        raise IntegrityError(f"{ep.describe()}: {desc.media_type or 'blob'} {desc.digest}: "
                             f"got {len(body)} bytes hashing to {got} (expected "
                             f"{desc.size} bytes)", hint="the endpoint serves other content; "
                             "try again, or remove that mirror from hosts.toml")


def _digest(text: str, ep: Endpoint, what: str) -> str:
    try:
        return str(Digest(text.strip()))
    except InvalidArgument as exc:
        raise RegistryError(f"{ep.describe()}: {what}: bad Docker-Content-Digest "
                            f"{text!r}") from exc


def _range_start(r: requests.Response, ep: Endpoint, what: str) -> int:
    cr = r.headers.get("Content-Range", "")
    try:
        unit, _, rest = cr.partition(" ")
        assert unit == "bytes"
        return int(rest.split("-", 1)[0])
    except (AssertionError, ValueError) as exc:
        r.close()
        raise RegistryError(f"{ep.describe()}: {what}: 206 with Content-Range {cr!r}") from exc


def _with_query(url: str, extra: list[tuple[str, str]]) -> str:
    from urllib.parse import urlencode, urlsplit, urlunsplit

    u = urlsplit(url)
    q = (u.query + "&" if u.query else "") + urlencode(extra)
    return urlunsplit((u.scheme, u.netloc, u.path, q, u.fragment))
