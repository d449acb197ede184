"""The object every command receives: resolved settings and a lazily opened client."""

from __future__ import annotations

from functools import cached_property

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cargohold.client import Client
    from cargohold.config import Config


class App:
    """Global options, resolved once; the store is opened only when a command needs it."""

    def __init__(self, *, root: str | None, state: str | None, namespace: str | None,
                 config_file: str | None, snapshotter: str | None, lease: str | None,
                 read_only: bool | None = None) -> None:
        self._args = dict(root=root, state=state, namespace=namespace, snapshotter=snapshotter,
                          read_only=read_only)
        self._config_file = config_file
        self.lease = lease
        self._client: Client | None = None

    @cached_property
    def config(self) -> Config:
        from cargohold import config
        from cargohold.types import validate_identifier

        cfg = config.load(self._config_file, **self._args)
        # -n is checked as it is parsed; HOLD_NAMESPACE and the file's namespace here.
        validate_identifier("namespace", cfg.namespace)
        return cfg

    @property
    def namespace(self) -> str:
        return self.config.namespace

    @property
    def client(self) -> Client:
        if self._client is None:
            from cargohold.client import Client

            self._client = Client(self.config, lease=self.lease)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
