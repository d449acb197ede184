"""The push side of the registry: basic auth, blob upload sessions, manifest puts.

Only with ``[serve] registry_push = true``; every write request must carry the credentials of
a user in the htpasswd file (bcrypt), else 401 with ``WWW-Authenticate: Basic``. Without push
every write is 405 UNSUPPORTED.

An upload session is a lease ``serve-upload-<uuid>`` (labelled with its repository, expiring
after ``SESSION_TTL``) and an ingest ``serve-upload-<uuid>`` of the served namespace: so a
session survives a restart of the service, what it committed is kept until a manifest
references it, and an abandoned one is collected once its lease expires. ``PATCH`` appends
(``Content-Range`` must start at the current offset), ``PUT ?digest=`` commits (the store
verifies the digest), ``DELETE`` aborts, ``GET`` says how far it got.

``PUT /v2/<name>/manifests/<ref>``: at most ``max_manifest_size`` bytes of JSON whose blobs
(config and layers, or an index's manifests) the namespace has; stored with containerd's
``gc.ref`` labels, and for a tag, the image ``<ns or Host>/<name>:<tag>`` points at it.
"""

from __future__ import annotations

import base64
import io
import os
import re
import threading
from typing import TYPE_CHECKING, Any

from cargohold._sha import sha256_hex
from cargohold.errors import AlreadyExists, CargoholdError, NotFound
from cargohold.images import mediatypes as mt
from cargohold.images.manifest import loads
from cargohold.service.registry.catalog import check_digest, check_repository, check_tag
from cargohold.service.registry.handler import RegistryError
from cargohold.types import Descriptor, Digest, is_digest

if TYPE_CHECKING:
    from cargohold.service.registry.handler import Handler

SESSION_TTL = 3600 * 10**9  # ns
LABEL_REPOSITORY = "cargohold.serve/upload-repository"
UUID_RE = re.compile(r"[0-9a-f]{32}")
CHUNK = 1 << 20


class Auth:
    """Basic credentials against the htpasswd users; good ones are cached by header."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users
        self._ok: dict[str, str] = {}
        self._mu = threading.Lock()

    def user(self, h: Handler) -> str:
        """The user the request authenticates as, or ""."""
        value = h.headers.get("Authorization", "")
        if not value.startswith("Basic ") or not self.users:
            return ""
        key = sha256_hex(value.encode())
        with self._mu:
            if key in self._ok:
                return self._ok[key]
        try:
            name, _, password = base64.b64decode(value[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return ""
        hashed = self.users.get(name)
        if hashed is None:
            return ""
        import bcrypt

        if not bcrypt.checkpw(password.encode(), hashed):
            return ""
        with self._mu:
            if len(self._ok) > 1024:
                self._ok.clear()
            self._ok[key] = name
        return name

    def challenge(self) -> RegistryError:
        return RegistryError(401, "UNAUTHORIZED", "authentication required",
                             {"WWW-Authenticate": 'Basic realm="cargohold"'})


def route(h: Handler, name: str, r: re.Match[str]) -> None:
    """Dispatch a write request (or an upload status GET)."""
    api = h.api
    if not api.settings.push:
        raise RegistryError(405, "UNSUPPORTED", "this registry is read-only: pushes need "
                            "[serve] registry_push = true and an htpasswd file")
    if not api.auth.user(h):
        raise api.auth.challenge()
    m = h.command
    uuid = r.group("uuid")
    if r.group("ref") is not None and m == "PUT":
        _put_manifest(h, name, r.group("ref"))
    elif uuid == "" and m == "POST":
        _start(h, name)
    elif uuid:
        if not UUID_RE.fullmatch(uuid):
            raise RegistryError(404, "BLOB_UPLOAD_UNKNOWN", f"upload {uuid[:40]!r}: unknown")
        if m == "PATCH":
            _patch(h, name, uuid)
        elif m == "PUT":
            _finish(h, name, uuid)
        elif m == "GET":
            _session(h, name, uuid)
            _progress(h, name, uuid, _offset(h, uuid), 204)
        elif m == "DELETE":
            _cancel(h, name, uuid)
        else:
            raise RegistryError(405, "UNSUPPORTED", f"method {m} not allowed on an upload")
    else:
        raise RegistryError(405, "UNSUPPORTED", f"method {m} not allowed here")


# --- bodies ----------------------------------------------------------------------------------
def body_chunks(h: Handler, limit: int, what: str) -> Any:
    """Yield the request body (Content-Length or chunked) in pieces; 413 past ``limit``."""
    h._body_read = True
    te = h.headers.get("Transfer-Encoding", "").lower()
    rf = h.rfile
    total = 0
    if "chunked" in te:
        while True:
            line = rf.readline(1024)
            try:
                n = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                h.close_connection = True
                raise RegistryError(400, "BLOB_UPLOAD_INVALID", "bad chunked body") from exc
            if n == 0:
                while rf.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return
            total += n
            if total > limit:
                h.close_connection = True
                raise RegistryError(413, "SIZE_INVALID", f"{what}: larger than {limit} bytes")
            yield from _exactly(h, n)
            rf.readline(16)
    length = h.headers.get("Content-Length")
    if length is None:
        return
    try:
        n = int(length)
    except ValueError as exc:
        h.close_connection = True
        raise RegistryError(400, "BLOB_UPLOAD_INVALID", "bad Content-Length") from exc
    if n > limit:
        h.close_connection = True
        raise RegistryError(413, "SIZE_INVALID", f"{what}: {n} bytes, more than {limit}")
    yield from _exactly(h, n)


def _exactly(h: Handler, n: int) -> Any:
    """The next ``n`` bytes of the request body, in pieces, counted as received."""
    while n > 0:
        b = h.rfile.read(min(n, CHUNK))
        if not b:
            raise ConnectionResetError("client went away mid-body")
        n -= len(b)
        h.api.counters.add("registry_bytes_received_total", len(b))
        yield b


# --- sessions --------------------------------------------------------------------------------
def _lease_id(uuid: str) -> str:
    return f"serve-upload-{uuid}"


def _store(h: Handler, uuid: str) -> Any:
    from cargohold.metadata.content import NamespacedStore

    api = h.api
    return NamespacedStore(api.db, api.store, api.settings.namespace, lease=_lease_id(uuid),
                           ingest_expiry=SESSION_TTL)


def _new_session(h: Handler, name: str) -> str:
    from cargohold.leases.manager import LeaseManager

    uuid = os.urandom(16).hex()
    LeaseManager(h.api.db, h.api.settings.namespace).create(
        _lease_id(uuid), expire=SESSION_TTL, labels={LABEL_REPOSITORY: name})
    return uuid


def _session(h: Handler, name: str, uuid: str) -> None:
    from cargohold.metadata import leases as lease_records

    with h.api.db.view() as tx:
        try:
            lease = lease_records.get(tx, h.api.settings.namespace, _lease_id(uuid))
        except NotFound:
            lease = None
    if lease is None or lease.labels.get(LABEL_REPOSITORY) != name:
        raise RegistryError(404, "BLOB_UPLOAD_UNKNOWN", f"upload {uuid}: unknown for {name}")


def _offset(h: Handler, uuid: str) -> int:
    try:
        return _store(h, uuid).status(_lease_id(uuid)).offset
    except NotFound:
        return 0


def _progress(h: Handler, name: str, uuid: str, offset: int, status: int) -> None:
    h._send(status, b"", {"Location": f"/v2/{name}/blobs/uploads/{uuid}",
                          "Range": f"0-{max(0, offset - 1)}", "Docker-Upload-UUID": uuid})


def _start(h: Handler, name: str) -> None:
    api = h.api
    mount, source = h.query.get("mount", ""), h.query.get("from", "")
    if mount and source:
        digest = check_digest(mount)
        try:
            api.catalog.reaches(check_repository(source), digest, "", "")
            api.content.info(digest)
        except CargoholdError:
            pass  # not ours to mount: an ordinary upload, as the spec says
        else:
            _drain(h)
            h._send(201, b"", {"Location": f"/v2/{name}/blobs/{digest}",
                               "Docker-Content-Digest": digest})
            return
    uuid = _new_session(h, name)
    digest = h.query.get("digest", "")
    if digest:  # a monolithic upload: the whole blob in this POST
        _write(h, uuid, digest=check_digest(digest))
        _committed(h, name, digest)
        return
    _drain(h)
    _progress(h, name, uuid, 0, 202)


def _drain(h: Handler) -> None:
    for _ in body_chunks(h, 1 << 20, "request body"):
        pass


def _write(h: Handler, uuid: str, *, digest: str = "") -> int:
    """Append the request body to the session's ingest; with ``digest``, commit it."""
    api = h.api
    store = _store(h, uuid)
    ref = _lease_id(uuid)
    w = store.writer(ref)
    try:
        offset = w.status().offset
        cr = h.headers.get("Content-Range", "")
        if cr:
            m = re.fullmatch(r"(?:bytes[ =])?(\d+)-(\d+)(?:/\S+)?", cr.strip())
            if not m or int(m.group(1)) != offset:
                _drain_quietly(h)
                raise RegistryError(416, "BLOB_UPLOAD_INVALID",
                                    f"Content-Range {cr!r}: the upload is at {offset}",
                                    {"Range": f"0-{max(0, offset - 1)}"})
        limit = api.settings.max_upload_size - offset
        for b in body_chunks(h, limit, "blob upload"):
            w.write(b)
            offset += len(b)
        if digest:
            try:
                w.commit(offset, digest)
            except AlreadyExists:
                pass
            return offset
    finally:
        w.close()
    return offset


def _drain_quietly(h: Handler) -> None:
    h.close_connection = True
    h._body_read = True


def _patch(h: Handler, name: str, uuid: str) -> None:
    _session(h, name, uuid)
    offset = _write(h, uuid)
    _progress(h, name, uuid, offset, 202)


def _finish(h: Handler, name: str, uuid: str) -> None:
    _session(h, name, uuid)
    digest = check_digest(h.query.get("digest", ""))
    _write(h, uuid, digest=digest)
    _committed(h, name, digest)


def _committed(h: Handler, name: str, digest: str) -> None:
    h._send(201, b"", {"Location": f"/v2/{name}/blobs/{digest}",
                       "Docker-Content-Digest": digest})


def _cancel(h: Handler, name: str, uuid: str) -> None:
    from cargohold.leases.manager import LeaseManager

    _session(h, name, uuid)
    _drain(h)
    try:
        _store(h, uuid).abort(_lease_id(uuid))
    except NotFound:
        pass
    LeaseManager(h.api.db, h.api.settings.namespace).delete(_lease_id(uuid))
    h._send(204, b"")


# --- manifests -------------------------------------------------------------------------------
def _put_manifest(h: Handler, name: str, ref: str) -> None:
    from cargohold.images.manifest import child_gc_labels
    from cargohold.metadata import images as image_records
    from cargohold.metadata.images import Image
    from cargohold.store.api import copy_into

    api = h.api
    tag = "" if is_digest(ref) or ":" in ref else check_tag(ref)
    want = "" if tag else check_digest(ref)
    data = b"".join(body_chunks(h, api.settings.max_manifest_size, "manifest"))
    digest = Digest.from_bytes(data)
    if want and want != digest:
        raise RegistryError(400, "DIGEST_INVALID", f"manifest: hashes to {digest}, not {want}")
    try:
        doc = loads(data)
        assert isinstance(doc, dict)
    except (ValueError, AssertionError) as exc:
        raise RegistryError(400, "MANIFEST_INVALID", "manifest: not a JSON object") from exc
    media = (h.headers.get("Content-Type", "").split(";")[0].strip()
             or str(doc.get("mediaType") or ""))
    if media in mt.SCHEMA1 or doc.get("schemaVersion") == 1:
        raise RegistryError(400, "MANIFEST_INVALID", "manifest: schema 1 is not accepted")
    if not (mt.is_index(media) or mt.is_manifest(media)):
        raise RegistryError(400, "MANIFEST_INVALID", f"manifest: media type {media!r} is not "
                            "an image manifest or index")
    kids = _children(doc, media)
    for k in kids:
        try:
            api.content.info(k.digest)
        except NotFound as exc:
            raise RegistryError(400, "MANIFEST_BLOB_UNKNOWN",
                                f"manifest: {k.digest} is not in the registry") from exc
    desc = Descriptor(media, digest, len(data))
    uuid = _new_session(h, name)
    try:
        w = _store(h, uuid).writer(_lease_id(uuid), expected=digest)
        copy_into(w, io.BytesIO(data), size=len(data), expected=digest,
                  labels=child_gc_labels(desc, kids))
    except AlreadyExists:
        pass
    if tag:
        host = h.ns or h.host
        if not host:
            raise RegistryError(400, "NAME_INVALID", "manifest: no Host header to name the "
                                "image by; push with ?ns=HOST")
        with api.db.update() as tx:
            image_records.upsert(tx, api.settings.namespace, Image(f"{host}/{name}:{tag}", desc))
    h._send(201, b"", {"Location": f"/v2/{name}/manifests/{digest}",
                       "Docker-Content-Digest": digest})


def _children(doc: dict[str, Any], media: str) -> list[Descriptor]:
    items: list[Any] = []
    if mt.is_index(media):
        items = list(doc.get("manifests") or [])
    else:
        items = [doc.get("config"), *(doc.get("layers") or [])]
    out = []
    for i in items:
        if not isinstance(i, dict) or not is_digest(str(i.get("digest", ""))):
            raise RegistryError(400, "MANIFEST_INVALID", "manifest: a descriptor without a "
                                "valid digest")
        out.append(Descriptor(str(i.get("mediaType") or ""), i["digest"],
                              int(i.get("size") or 0)))
    return out
