"""Which image of the store a registry request means: names, ``?ns=``, and what each reaches.

Every part of a request is checked against the distribution spec's grammar *before* anything
is looked up (:func:`check_repository`, :func:`check_tag`, :func:`check_digest`,
:func:`check_host`); no path is ever built from a request: blobs are found by digest through
the store, images by name through the metadata.

:class:`Catalog` indexes the images of one namespace by repository path (the name without its
registry host), rebuilt when the database's ``epoch`` moved. A request for repository R:

- with ``?ns=H`` (what containerd's mirrors send): the images named ``H/R``; when there are
  none, the images pushed to this registry under the name the client calls it by (the
  ``Host`` header: ``127.0.0.1:5000/R``);
- without: every image whose path is R. A tag must then belong to exactly one registry host;
  two (``a.example/R:1`` and ``b.example/R:1``) are ambiguous: a 404 that names both and says
  to ask with ``?ns=``.

A digest (a manifest or blob) is served under R only if an image of R reaches it: its target,
an index's manifests, a manifest's config and layers. What each target reaches is read once
and cached (content never changes under a digest).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any

from cargohold._record import record
from cargohold.errors import InvalidArgument, NotFound
from cargohold.images import mediatypes as mt
from cargohold.images.manifest import loads
from cargohold.metadata import images as image_records
from cargohold.metadata.db import DB, epoch
from cargohold.types import Descriptor, is_digest

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_RE = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
MAX_REPOSITORY = 255
MAX_REACH_CACHE = 4096
MAX_WALK_JSON = 4 << 20


class NameInvalid(InvalidArgument):
    """A repository name, tag, digest or host that the distribution grammar refuses."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Unknown(NotFound):
    """No such manifest, blob or repository here; ``code`` is the distribution error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_repository(name: str) -> str:
    if len(name) > MAX_REPOSITORY or not REPOSITORY_RE.fullmatch(name):
        raise NameInvalid("NAME_INVALID", f"repository name {name[:80]!r}: not valid")
    return name


def check_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag):
        raise NameInvalid("TAG_INVALID", f"tag {tag[:80]!r}: not valid")
    return tag


def check_digest(d: str) -> str:
    if not is_digest(d):
        raise NameInvalid("DIGEST_INVALID", f"digest {d[:80]!r}: not a sha256 or sha512 digest")
    return d


def check_host(host: str) -> str:
    if len(host) > 255 or not HOST_RE.fullmatch(host):
        raise NameInvalid("NAME_INVALID", f"registry host {host[:80]!r}: not valid")
    return host


def split_name(name: str) -> tuple[str, str, str, str] | None:
    """``host/path:tag@digest`` → (host, path, tag, digest); None for other shapes."""
    rest, _, digest = name.partition("@")
    host, sep, path = rest.partition("/")
    if not sep:
        return None
    tag = ""
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, _, tag = path.rpartition(":")
    return host, path, tag, digest


@record(frozen=True)
class Found:
    """A tag resolved to an image."""

    name: str
    target: Descriptor


class Catalog:
    """The images of namespace ``ns`` by repository path (see the module docstring).

    ``content`` is a NamespacedStore of ``ns`` (reads are limited to what it records).
    """

    def __init__(self, db: DB, content: Any, ns: str) -> None:
        self.db = db
        self.content = content
        self.ns = ns
        self._mu = threading.Lock()
        self._epoch = -1
        # path -> host -> [(tag or "", image name, target)]
        self._index: dict[str, dict[str, list[tuple[str, str, Descriptor]]]] = {}
        self._reach: OrderedDict[str, dict[str, str]] = OrderedDict()

    def _images(self) -> dict[str, dict[str, list[tuple[str, str, Descriptor]]]]:
        with self.db.view() as tx:
            e = epoch(tx)
            with self._mu:
                if e == self._epoch:
                    return self._index
            imgs = image_records.list_images(tx, self.ns)
        index: dict[str, dict[str, list[tuple[str, str, Descriptor]]]] = {}
        for img in imgs:
            parts = split_name(img.name)
            if parts is None:
                continue
            host, path, tag, _d = parts
            index.setdefault(path, {}).setdefault(host, []).append((tag, img.name, img.target))
        with self._mu:
            self._index, self._epoch = index, e
        return index

    def repositories(self) -> list[str]:
        return sorted(p for p in self._images() if REPOSITORY_RE.fullmatch(p))

    def _hosts(self, path: str, ns: str, host: str) -> dict[str, list[tuple[str, str, Descriptor]]]:
        by_host = self._images().get(path, {})
        if ns:
            for h in (ns, host):
                if h and h in by_host:
                    return {h: by_host[h]}
            return {}
        return by_host

    def _where(self, path: str, ns: str) -> str:
        return f"{ns}/{path}" if ns else path

    def tags(self, path: str, ns: str, host: str) -> list[str]:
        hosts = self._hosts(path, ns, host)
        if not hosts:
            raise Unknown("NAME_UNKNOWN", f"repository {self._where(path, ns)}: no images "
                          f"in namespace {self.ns}")
        if len(hosts) > 1:
            raise Unknown("NAME_UNKNOWN", f"repository {path}: ambiguous, images of "
                          f"{', '.join(sorted(hosts))} have this path; ask with ?ns=HOST")
        return sorted({t for t, _n, _d in next(iter(hosts.values())) if t})

    def resolve_tag(self, path: str, tag: str, ns: str, host: str) -> Found:
        found = [Found(name, target) for entries in self._hosts(path, ns, host).values()
                 for t, name, target in entries if t == tag]
        if not found:
            raise Unknown("MANIFEST_UNKNOWN", f"manifest {self._where(path, ns)}:{tag}: no "
                          f"such image in namespace {self.ns}")
        if len(found) > 1:
            names = ", ".join(sorted(f.name for f in found))
            raise Unknown("MANIFEST_UNKNOWN", f"manifest {path}:{tag}: ambiguous, the store "
                          f"has {names}; ask with ?ns=HOST")
        return found[0]

    def reaches(self, path: str, digest: str, ns: str, host: str) -> str:
        """The media type under which an image of ``path`` reaches ``digest`` ("" for a
        config or layer); raises Unknown when none does.
        """
        for entries in self._hosts(path, ns, host).values():
            for _t, _name, target in entries:
                got = self._reachable(target).get(digest)
                if got is not None:
                    return got
        code = "BLOB_UNKNOWN"
        raise Unknown(code, f"digest {digest}: no image of {self._where(path, ns)} in "
                      f"namespace {self.ns} has it")

    def _reachable(self, target: Descriptor) -> dict[str, str]:
        """digest -> media type (manifests and indexes) or "" (blobs) under ``target``."""
        with self._mu:
            got = self._reach.get(target.digest)
            if got is not None:
                self._reach.move_to_end(target.digest)
                return got
        out: dict[str, str] = {}
        complete = True  # every document below was in the store (else: not cached)
        todo = [target]
        while todo:
            d = todo.pop()
            if d.digest in out:
                continue
            kind = d.media_type if (mt.is_index(d.media_type) or mt.is_manifest(d.media_type)) \
                else ""
            out[d.digest] = kind
            if not kind:
                continue
            doc = self._json(d)
            if doc is None:
                complete = False
                continue
            for key in ("manifests", "layers"):
                for item in doc.get(key) or []:
                    if isinstance(item, dict) and is_digest(str(item.get("digest", ""))):
                        todo.append(Descriptor(str(item.get("mediaType", "")), item["digest"],
                                               int(item.get("size") or 0)))
            cfg = doc.get("config")
            if isinstance(cfg, dict) and is_digest(str(cfg.get("digest", ""))):
                out.setdefault(cfg["digest"], "")
        if not complete:
            return out
        with self._mu:
            self._reach[target.digest] = out
            while len(self._reach) > MAX_REACH_CACHE:
                self._reach.popitem(last=False)
        return out

    def _json(self, d: Descriptor) -> dict[str, Any] | None:
        if d.size > MAX_WALK_JSON:
            return None
        try:
            with self.content.reader(d.digest) as r:
                doc = loads(r.read(MAX_WALK_JSON + 1))
        except (NotFound, ValueError):
            return None  # not in the store (a platform not pulled): nothing below it here
        return doc if isinstance(doc, dict) else None

    def manifest_type(self, digest: str, data: bytes) -> str:
        """The media type of manifest bytes: their ``mediaType`` field, else by shape."""
        try:
            doc = loads(data)
        except ValueError:
            return "application/octet-stream"
        m = doc.get("mediaType") if isinstance(doc, dict) else None
        if isinstance(m, str) and m:
            return m
        return mt.OCI_INDEX if isinstance(doc, dict) and "manifests" in doc else mt.OCI_MANIFEST
