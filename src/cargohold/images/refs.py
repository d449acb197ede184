"""Image names: docker-style normalisation and the names an archive entry gets on import.

``normalize("alpine")`` is ``docker.io/library/alpine:latest``;
``normalize("ghcr.io/a/b@sha256:…")`` keeps the digest; ``localhost:5000/x`` keeps its registry.
Upper case in a repository, empty components and malformed tags raise InvalidArgument
naming the reference.
"""

from __future__ import annotations

import re

from cargohold.errors import InvalidArgument
from cargohold.types import is_digest

DEFAULT_DOMAIN = "docker.io"
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)  # fullmatch: "$" matches before a "\n"
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")


def is_tag(text: str) -> bool:
    """Whether ``text`` is a bare tag (``latest``, ``1.0``), not a reference."""
    return bool(_TAG.fullmatch(text)) and "/" not in text


def split(ref: str) -> tuple[str, str, str]:
    """``(repository, tag, digest)`` of a normalised or familiar reference."""
    name, _, digest = ref.partition("@")
    tag = ""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest


def normalize(ref: str) -> str:
    """The fully qualified form of a docker reference (see the module docstring)."""
    text = ref.strip()
    bad = InvalidArgument(f"image reference {ref!r}: not a valid reference",
                          hint="write it like alpine:3.19, docker.io/library/alpine:3.19 or "
                               "registry.example.com/team/app@sha256:<hex>")
    if not text:
        raise bad
    name, tag, digest = split(text)
    if digest and not is_digest(digest):
        raise bad
    if tag and not _TAG.fullmatch(tag):
        raise bad
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"
                           or parts[0] != parts[0].lower()):
        domain, path = parts[0], parts[1:]
    else:
        domain, path = DEFAULT_DOMAIN, parts
    if domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and len(path) == 1:
        path = ["library", *path]
    if not path or not all(_COMPONENT.fullmatch(p) for p in path):
        raise bad
    out = f"{domain}/{'/'.join(path)}"
    if tag:
        out += f":{tag}"
    if digest:
        out += f"@{digest}"
    if not tag and not digest:
        out += ":latest"
    return out


def repository(ref: str) -> str:
    """The name without tag and digest."""
    return split(ref)[0]


def looks_like_reference(text: str) -> bool:
    """Whether an ``org.opencontainers.image.ref.name`` is a full reference, not a tag."""
    return "/" in text or "@" in text or (":" in text and not is_tag(text))
