"""What ``hold serve`` reads from ``config.toml`` and the hosts directory, validated as a whole.

:func:`load` turns a :class:`~cargohold.config.Config` into :class:`Settings` or raises
InvalidArgument naming the key (or the hosts file) that is wrong; nothing is half-applied, so
a reload that fails leaves the running settings exactly as they were. Keys:

- ``[gc]`` ``pause_threshold`` (0 to 0.5), ``deletion_threshold``, ``mutation_threshold``
  (counts, >= 0), ``schedule_delay`` and ``startup_delay`` (durations): containerd's GC
  scheduler (``io.containerd.gc.v1.scheduler``) under the same names; ``sweep_batch``
  (>= 1), which a reload applies to the collector;
- ``[serve]`` ``registry_address`` (``host:port``; "" = no registry), ``registry_namespace``,
  ``registry_push`` + ``htpasswd`` (bcrypt hashes only), ``max_manifest_size``,
  ``max_upload_size``, ``client_timeout``, ``mount_sweep_interval``;
- ``[registry] config_path``: every ``<host>/hosts.toml`` under it is parsed
  (:mod:`cargohold.fetch.hosts`), so a broken mirror file is refused at reload instead of
  failing the next pull.
"""

from __future__ import annotations

import ipaddress
import os

from cargohold._record import field, record
from cargohold.config import Config
from cargohold.errors import InvalidArgument, Unsupported
from cargohold.types import parse_duration, parse_size, validate_identifier


@record(frozen=True)
class GCSettings:
    """containerd's scheduler knobs (see :mod:`.gcsched`); delays in seconds."""

    pause_threshold: float = 0.02
    deletion_threshold: int = 0
    mutation_threshold: int = 100
    schedule_delay: float = 0.0
    startup_delay: float = 0.1


@record(frozen=True)
class RegistrySettings:
    """The registry API; ``host`` "" = no registry."""

    host: str = ""
    port: int = 0
    namespace: str = "default"
    push: bool = False
    htpasswd: str = ""
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    max_manifest_size: int = 4 << 20
    max_upload_size: int = 64 << 30
    client_timeout: float = 60.0

    @property
    def enabled(self) -> bool:
        return bool(self.host)


@record(frozen=True)
class Settings:
    """Everything the service runs by; replaced whole by a reload."""

    config: Config
    gc: GCSettings
    registry: RegistrySettings
    mount_sweep_interval: float
    hosts_dir: str
    hosts: dict[str, list[str]]  # registry -> endpoint URLs, for status
    sweep_batch: int = 500  # [gc] sweep_batch: records the collector removes per transaction


def _key(section: str, key: str) -> str:
    return f"config [{section}] {key}"


def _seconds(section: str, key: str, text: str) -> float:
    try:
        return parse_duration(text) / 1e9
    except InvalidArgument as exc:
        raise InvalidArgument(f"{_key(section, key)} = {text!r}: {exc.message}",
                              hint=exc.hint) from exc


def _bytes(key: str, text: str) -> int:
    try:
        n = parse_size(text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{_key('serve', key)} = {text!r}: {exc.message}",
                              hint=exc.hint) from exc
    if n <= 0:
        raise InvalidArgument(f"{_key('serve', key)} = {text!r}: must be more than 0")
    return n


def _gc(cfg: Config) -> GCSettings:
    s = cfg.section("gc")
    pause = float(s.get("pause_threshold", 0.02))
    if not 0 <= pause <= 0.5:
        raise InvalidArgument(f"{_key('gc', 'pause_threshold')} = {pause}: must be between 0 "
                              "and 0.5", hint="containerd's default is 0.02")
    counts = {}
    for k, default in (("deletion_threshold", 0), ("mutation_threshold", 100)):
        counts[k] = int(s.get(k, default))
        if counts[k] < 0:
            raise InvalidArgument(f"{_key('gc', k)} = {counts[k]}: must be 0 or more")
    return GCSettings(pause, counts["deletion_threshold"], counts["mutation_threshold"],
                      _seconds("gc", "schedule_delay", s.get("schedule_delay", "0ms")),
                      _seconds("gc", "startup_delay", s.get("startup_delay", "100ms")))


def _sweep_batch(cfg: Config) -> int:
    n = int(cfg.section("gc").get("sweep_batch", 500))  # config.load checked it is an int
    if n < 1:  # a batch of 0 would never advance the sweep
        raise InvalidArgument(f"{_key('gc', 'sweep_batch')} = {n}: must be 1 or more",
                              hint="set it to 1 or more (the default is 500)")
    return n


def parse_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:5000``, ``[::1]:5000``, ``localhost:5000`` → (host, port).

    The host must be an IP address or ``localhost`` (a name could resolve to more than was
    meant); port 0 picks a free one.
    """
    where = _key("serve", "registry_address") + f" = {text!r}"
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"{where}: not HOST:PORT", hint='write it like "127.0.0.1:5000"')
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise InvalidArgument(f"{where}: {host!r} is not an IP address",
                                  hint='give an address such as "127.0.0.1" or "::1"') from exc
    return host, int(port)


def read_htpasswd(path: str) -> dict[str, bytes]:
    """``user:hash`` lines of an htpasswd file; only bcrypt hashes (``htpasswd -B``)."""
    try:
        import bcrypt  # noqa: F401 - checked here so that a push never fails on it later
    except ImportError as exc:
        raise Unsupported("registry_push: needs the bcrypt module",
                          hint="pip install bcrypt (tools/setup installs it)") from exc
    where = _key("serve", "htpasswd") + f" {path}"
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise InvalidArgument(f"{where}: cannot read: {exc.strerror}",
                              hint="create it with 'htpasswd -cB FILE USER'") from exc
    users: dict[str, bytes] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        user, sep, h = line.partition(b":")
        if not sep or not user:
            raise InvalidArgument(f"{where}: line {n}: not USER:HASH")
        if not h.startswith((b"$2a$", b"$2b$", b"$2y$")):
            raise InvalidArgument(f"{where}: line {n}: user {user.decode(errors='replace')!r} "
                                  "has no bcrypt hash", hint="write it with 'htpasswd -B'")
        users[user.decode()] = h.replace(b"$2y$", b"$2b$", 1)
    if not users:
        raise InvalidArgument(f"{where}: no users", hint="add one with 'htpasswd -B FILE USER'")
    return users


def _registry(cfg: Config) -> RegistrySettings:
    s = cfg.section("serve")
    addr = str(s.get("registry_address", "127.0.0.1:5000"))
    host, port = parse_address(addr) if addr else ("", 0)
    ns = str(s.get("registry_namespace", "default"))
    validate_identifier("namespace", ns)
    push = bool(s.get("registry_push", False))
    path = str(s.get("htpasswd", ""))
    users: dict[str, bytes] = {}
    if push:
        if not path:
            raise InvalidArgument(f"{_key('serve', 'registry_push')}: needs htpasswd",
                                  hint="set [serve] htpasswd to a file made with "
                                       "'htpasswd -cB FILE USER'")
        users = read_htpasswd(path)
    timeout = _seconds("serve", "client_timeout", s.get("client_timeout", "60s"))
    if timeout <= 0:
        raise InvalidArgument(f"{_key('serve', 'client_timeout')}: must be more than 0")
    return RegistrySettings(host, port, ns, push, path, users,
                            _bytes("max_manifest_size", s.get("max_manifest_size", "4MiB")),
                            _bytes("max_upload_size", s.get("max_upload_size", "64GiB")),
                            timeout)


def hosts_summary(hosts_dir: str) -> dict[str, list[str]]:
    """Parse every ``<host>/hosts.toml`` under ``hosts_dir`` (InvalidArgument on the first
    bad one); return each registry's endpoint URLs in the order requests try them.
    """
    from cargohold.fetch import hosts

    out: dict[str, list[str]] = {}
    try:
        names = sorted(os.listdir(hosts_dir)) if hosts_dir else []
    except FileNotFoundError:
        return out
    except OSError as exc:
        raise InvalidArgument(f"hosts directory {hosts_dir}: cannot read: {exc.strerror}"
                              ) from exc
    for name in names:
        if name.startswith(".") or not os.path.isdir(os.path.join(hosts_dir, name)):
            continue
        registry = name
        if name.endswith("_") and name.count("_") >= 2:  # host_port_ → host:port
            h, _, p = name[:-1].rpartition("_")
            registry = f"{h}:{p}" if p.isdigit() else name
        out[name] = [e.url for e in hosts.load(hosts_dir, registry).endpoints]
    return out


def load(cfg: Config) -> Settings:
    """Validate ``cfg`` and the hosts directory it names; raises InvalidArgument."""
    hosts_dir = str(cfg.section("registry").get("config_path", ""))
    interval = _seconds("serve", "mount_sweep_interval",
                        cfg.section("serve").get("mount_sweep_interval", "1m"))
    if interval <= 0:
        raise InvalidArgument(f"{_key('serve', 'mount_sweep_interval')}: must be more than 0")
    return Settings(cfg, _gc(cfg), _registry(cfg), interval, hosts_dir,
                    hosts_summary(hosts_dir), _sweep_batch(cfg))
