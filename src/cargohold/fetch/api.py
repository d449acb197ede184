"""The fetch vocabulary: registry errors, an endpoint, and a parsed image reference.

Errors (each names the endpoint it came from, and says what to do)::

    CargoholdError
     ├── RegistryError            an answer we cannot use (unexpected status, bad JSON)
     │    ├── Unauthorized        401: no or wrong credentials
     │    ├── Forbidden           403: the credentials may not do this
     │    └── TLSFailure          the TLS handshake failed (unknown CA, wrong name)
     ├── NotFound
     │    └── RegistryNotFound    404: no such repository, tag or blob
     └── Unavailable
          └── Unreachable         unknown host, refused connection, timeout

When several endpoints were tried (mirrors, then the server), the error raised is the last
endpoint's, and its message lists what every earlier endpoint answered: a mirror that was
skipped is never silent.
"""

from __future__ import annotations

from cargohold._record import field, record
from cargohold.errors import CargoholdError, InvalidArgument, NotFound, Unavailable

CAPABILITIES = ("pull", "resolve", "push")


class RegistryError(CargoholdError):
    """The registry answered something we cannot use."""


class Unauthorized(RegistryError):
    """401: the registry wants (other) credentials."""


class Forbidden(RegistryError):
    """403: the credentials are not allowed to do this."""


class TLSFailure(RegistryError):
    """The TLS handshake failed."""


class RegistryNotFound(NotFound):
    """404: the repository, tag or blob does not exist on that endpoint."""


class Unreachable(Unavailable):
    """The endpoint could not be reached (DNS, refused, timeout)."""


@record(frozen=True)
class Endpoint:
    """One place a registry request can go, and where that came from.

    ``url`` is the API root (``https://host/v2``; with ``override_path`` exactly the path
    written). ``mirror`` is True for every endpoint whose host is not the registry's own (those
    requests carry ``?ns=<registry>``). ``source`` names the file and key that produced it, or
    ``default`` for containerd's built-in behaviour.
    """

    url: str
    capabilities: tuple[str, ...] = CAPABILITIES
    mirror: bool = False
    skip_verify: bool = False
    ca: tuple[str, ...] = ()
    client: tuple[tuple[str, str], ...] = ()  # (cert, key); key "" when the cert holds it
    headers: tuple[tuple[str, str], ...] = ()
    override_path: bool = False
    dial_timeout: float = 30.0
    source: str = "default"

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]

    @property
    def host(self) -> str:
        """``host[:port]`` of the URL."""
        return self.url.split("://", 1)[1].split("/", 1)[0]

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def header_dict(self) -> dict[str, str]:
        """The hosts.toml headers to send; a header given several values is sent once with
        them comma-joined (HTTP's own way to combine them; containerd sends each).
        """
        out: dict[str, str] = {}
        for k, v in self.headers:
            out[k] = f"{out[k]}, {v}" if k in out else v
        return out

    def describe(self) -> str:
        kind = "mirror" if self.mirror else "server"
        return f"{kind} {self.url}"


@record(frozen=True)
class Reference:
    """A parsed image reference: ``registry/repository[:tag][@digest]``.

    ``name`` is the normalised form (``docker.io/library/alpine:3``), which is also the image
    record's name; ``object`` is what the manifest request asks for (the digest when there
    is one, else the tag).
    """

    name: str
    registry: str
    repository: str
    tag: str = ""
    digest: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def object(self) -> str:
        return self.digest or self.tag or "latest"

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Normalise ``text`` the docker way (``alpine`` → ``docker.io/library/alpine:latest``).

        Raises InvalidArgument naming the reference when it is not one.
        """
        from cargohold.images import refs

        name = refs.normalize(text)
        repo, tag, digest = refs.split(name)
        registry, _, path = repo.partition("/")
        if not path:
            raise InvalidArgument(f"image reference {text!r}: no repository")
        return cls(name, registry, path, tag, digest)


def attempts_text(attempts: list[tuple[Endpoint, CargoholdError]]) -> str:
    """``; tried mirror http://a/v2 (connection refused), ...`` for earlier endpoints."""
    if not attempts:
        return ""
    parts = [f"{ep.describe()}: {err.message}" for ep, err in attempts]
    return " (before that: " + "; ".join(parts) + ")"
