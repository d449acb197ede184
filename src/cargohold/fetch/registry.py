"""The registry side of one operation: hosts directory, credentials and the transport.

:class:`Registry` is what pull and push are given. It reads ``hosts.toml`` per registry (once
per operation), and makes :class:`~.remote.Remote` objects for repositories. ``mounts`` is the
test seam (requests transport adapters by URL prefix, see :mod:`.transport`).
"""

from __future__ import annotations

from typing import Any

from cargohold.fetch.api import Reference
from cargohold.fetch.auth import Authorizer
from cargohold.fetch.credentials import Credentials
from cargohold.fetch.hosts import HostsConfig, load
from cargohold.fetch.remote import Remote
from cargohold.fetch.transport import BACKOFF, Transport


class Registry:
    """Hosts, credentials and HTTP for one pull or push (see the module docstring)."""

    def __init__(self, *, hosts_dir: str = "", plain_http: bool = False,
                 credentials: Credentials | None = None, mounts: dict[str, Any] | None = None,
                 backoff: float = BACKOFF) -> None:
        self.hosts_dir = hosts_dir
        self.plain_http = plain_http
        self.backoff = backoff
        self.transport = Transport(mounts=mounts, backoff=backoff)
        self.transport.authorizer = Authorizer(credentials or Credentials(),
                                               session_for=self.transport.session_for_url)
        self._hosts: dict[str, HostsConfig] = {}

    def hosts(self, registry: str) -> HostsConfig:
        if registry not in self._hosts:
            self._hosts[registry] = load(self.hosts_dir, registry, plain_http=self.plain_http)
        return self._hosts[registry]

    def remote(self, ref: Reference, *, push: bool = False,
               mount_from: tuple[str, ...] = ()) -> Remote:
        return Remote(ref, self.hosts(ref.registry), self.transport, push=push,
                      mount_from=mount_from)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
