"""Which endpoints a registry request tries: containerd's ``hosts.toml`` format, read strictly.

Lookup, for registry ``host[:port]`` under the hosts directory ``DIR`` (``--hosts-dir``, by
default the config's ``[registry] config_path``)::

    DIR/host_port_/hosts.toml     (only for a registry with a port)
    DIR/host:port/hosts.toml
    DIR/_default/hosts.toml       (only when no directory above exists)

The first directory that exists decides. Without a ``hosts.toml`` in it, Docker's certificate
files there are used for the registry itself (``*.crt`` are CAs, ``X.cert`` + ``X.key`` a
client certificate). Without any directory, containerd's defaults apply: ``docker.io`` is
served by ``https://registry-1.docker.io``, a loopback or ``localhost`` registry by plain HTTP,
anything else by HTTPS (``plain_http`` makes every default endpoint HTTP, like ctr's
``--plain-http``).

A file::

    server = "https://registry.example.com"     # optional: the upstream, tried last
    capabilities = ["pull", "resolve"]          # and ca, client, skip_verify, header,
                                                # override_path, dial_timeout: for the server
    [host."https://mirror.example.com:5000"]    # tried first, in file order
      capabilities = ["pull", "resolve"]        # pull, resolve, push; omitted = all
      ca = "ca.pem"                             # or a list; relative to the file's directory
      client = [["client.cert", "client.key"]]  # or "both.pem", or ["a.pem", "b.pem"]
      skip_verify = false
      override_path = false                     # true: the URL path is the API root
      dial_timeout = "200ms"
      [host."https://mirror.example.com:5000".header]
        x-custom = "value"                      # or a list of values

Unlike containerd, which logs a parse error and silently drops the whole file, anything we do
not understand — bad TOML, an unknown key or capability, a wrong type, a missing CA file — is
an :class:`~cargohold.errors.InvalidArgument` naming the file and the key.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from cargohold._record import field, record
from cargohold.errors import InvalidArgument
from cargohold.fetch.api import CAPABILITIES, Endpoint
from cargohold.types import parse_duration

HOST_KEYS = ("capabilities", "ca", "client", "skip_verify", "header", "override_path",
             "dial_timeout")
TOP_KEYS = ("server", "host", *HOST_KEYS)
DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "registry-1.docker.io"


@record
class HostsConfig:
    """The endpoints for one registry, in the order requests try them, and how we got there."""

    registry: str
    endpoints: list[Endpoint]
    file: str = ""  # the hosts.toml read, "" when none
    searched: list[str] = field(default_factory=list)  # directories looked for, in order

    def with_capability(self, capability: str) -> list[Endpoint]:
        return [e for e in self.endpoints if e.can(capability)]


def is_localhost(host: str) -> bool:
    """``localhost`` or a loopback address, with or without a port."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_mirror(endpoint_host: str, registry: str) -> bool:
    """Whether requests to ``endpoint_host`` for ``registry`` need ``?ns=`` (containerd's
    rule: every host but the registry itself, and Docker Hub's own API host for docker.io).
    """
    if endpoint_host == registry:
        return False
    return not (registry == DOCKER_HUB and endpoint_host == DOCKER_HUB_SERVER)


def default_endpoint(registry: str, *, plain_http: bool = False) -> Endpoint:
    """The endpoint containerd uses for ``registry`` when nothing is configured."""
    if registry == DOCKER_HUB:
        scheme = "http" if plain_http else "https"
        return Endpoint(f"{scheme}://{DOCKER_HUB_SERVER}/v2")
    if is_localhost(registry) and not registry.endswith(":443"):
        return Endpoint(f"http://{registry}/v2", skip_verify=True)
    return Endpoint(f"{'http' if plain_http else 'https'}://{registry}/v2")


def host_dirs(root: str, registry: str) -> list[str]:
    """The directories looked up for ``registry``, in order."""
    out = []
    if ":" in registry:
        name, _, port = registry.rpartition(":")
        out.append(os.path.join(root, f"{name}_{port}_"))
    out.append(os.path.join(root, registry))
    out.append(os.path.join(root, "_default"))
    return out


def load(root: str, registry: str, *, plain_http: bool = False) -> HostsConfig:
    """The endpoints for ``registry`` (see the module docstring). ``root`` "" = none.

    Raises InvalidArgument naming the file and key for anything malformed.
    """
    cfg = HostsConfig(registry, [])
    if root:
        for d in host_dirs(root, registry):
            cfg.searched.append(d)
            if not os.path.isdir(d):
                continue
            path = os.path.join(d, "hosts.toml")
            if os.path.exists(path):
                cfg.file = path
                cfg.endpoints = _read_file(path, registry, plain_http)
            else:
                cfg.endpoints = [_cert_files(d, default_endpoint(registry,
                                                                 plain_http=plain_http))]
            return cfg
    cfg.endpoints = [default_endpoint(registry, plain_http=plain_http)]
    return cfg


def _cert_files(d: str, ep: Endpoint) -> Endpoint:
    """Docker's ``certs.d`` pattern: ``*.crt`` CAs and ``X.cert``/``X.key`` pairs."""
    from cargohold._record import replace

    names = sorted(os.listdir(d))
    ca = tuple(os.path.join(d, n) for n in names if n.endswith(".crt"))
    client = []
    for n in names:
        if n.endswith(".cert"):
            key = n[:-5] + ".key"
            if key not in names:
                raise InvalidArgument(f"certificate directory {d}: {n} has no {key}",
                                      hint="put the client key beside its certificate")
            client.append((os.path.join(d, n), os.path.join(d, key)))
    if not ca and not client:
        return ep
    return replace(ep, ca=ca, client=tuple(client), source=f"{d} (certificate files)")


def _read_file(path: str, registry: str, plain_http: bool) -> list[Endpoint]:
    import tomllib

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"hosts file {path}: not valid TOML: {exc}",
                              hint="fix the file; 'hold hosts explain REF' shows the result"
                              ) from exc
    except OSError as exc:
        raise InvalidArgument(f"hosts file {path}: cannot read: {exc.strerror}") from exc
    base = os.path.dirname(path)
    _check_keys(path, "", doc, TOP_KEYS)
    out = []
    hosts = doc.get("host", {})
    if not isinstance(hosts, dict):
        raise _bad(path, "host", "must be a table of [host.\"URL\"] sections")
    for url, table in hosts.items():
        key = f'host."{url}"'
        if not isinstance(table, dict):
            raise _bad(path, key, "must be a table")
        _check_keys(path, key + ".", table, HOST_KEYS)
        out.append(_endpoint(path, base, key, _url(path, key, url, table), table, registry))
    server = doc.get("server")
    if server is not None:
        if not isinstance(server, str) or not server:
            raise _bad(path, "server", "must be a URL string")
        url = _url(path, "server", server, doc)
        out.append(_endpoint(path, base, "server", url, doc, registry))
    else:
        d = default_endpoint(registry, plain_http=plain_http)
        top = {k: v for k, v in doc.items() if k in HOST_KEYS}
        if "override_path" not in top:
            top["override_path"] = True  # the default URL already ends in /v2
        ep = _endpoint(path, base, "(no server: the registry itself)", d.url, top, registry)
        if not top.get("skip_verify") and d.skip_verify:
            from cargohold._record import replace

            ep = replace(ep, skip_verify=True)
        out.append(ep)
    return out


def _bad(path: str, key: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"hosts file {path}: key {key}: {problem}",
                           hint="see containerd's hosts.toml format; 'hold hosts explain REF' "
                                "shows what a pull would try")


def _check_keys(path: str, prefix: str, table: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for k in table:
        if k not in allowed:
            raise _bad(path, prefix + k, f"unknown key (known: {', '.join(allowed)})")


def _url(path: str, key: str, url: str, table: dict[str, Any]) -> str:
    """The API root of ``url``: ``/v2`` appended unless ``override_path``."""
    from urllib.parse import urlsplit

    text = url if "://" in url else f"https://{url}"
    u = urlsplit(text)
    if u.scheme not in ("http", "https") or not u.netloc or u.query or u.fragment:
        raise _bad(path, key, f"{url!r} is not an http(s) URL")
    p = u.path.rstrip("/")
    override = table.get("override_path", False)
    if not override and not p.endswith("/v2"):
        p += "/v2"
    return f"{u.scheme}://{u.netloc}{p}"


def _strings(path: str, key: str, v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return list(v)
    raise _bad(path, key, "must be a string or a list of strings")


def _file(path: str, base: str, key: str, name: str) -> str:
    full = name if os.path.isabs(name) else os.path.join(base, name)
    if not os.path.isfile(full):
        raise _bad(path, key, f"file {full}: not found")
    return full


def _endpoint(path: str, base: str, key: str, url: str, t: dict[str, Any],
              registry: str) -> Endpoint:
    k = (key + ".") if key.startswith("host.") else ""
    caps = t.get("capabilities", list(CAPABILITIES))
    caps_list = _strings(path, k + "capabilities", caps)
    for c in caps_list:
        if c not in CAPABILITIES:
            raise _bad(path, k + "capabilities", f"unknown capability {c!r} (known: "
                       f"{', '.join(CAPABILITIES)})")
    ca = tuple(_file(path, base, k + "ca", n) for n in _strings(path, k + "ca", t.get("ca", [])))
    client: list[tuple[str, str]] = []
    raw = t.get("client", [])
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise _bad(path, k + "client", "must be a path, a list of paths or of [cert, key]")
    for item in items:
        if isinstance(item, str):
            client.append((_file(path, base, k + "client", item), ""))
        elif (isinstance(item, list) and len(item) == 2
              and all(isinstance(x, str) for x in item)):
            cert = _file(path, base, k + "client", item[0])
            client.append((cert, _file(path, base, k + "client", item[1]) if item[1] else ""))
        else:
            raise _bad(path, k + "client", "must be a path, a list of paths or of [cert, key]")
    for flag in ("skip_verify", "override_path"):
        if flag in t and not isinstance(t[flag], bool):
            raise _bad(path, k + flag, "must be true or false")
    headers = t.get("header", {})
    if not isinstance(headers, dict):
        raise _bad(path, k + "header", "must be a table of name = value(s)")
    hdrs = tuple((name, v) for name, vals in headers.items()
                 for v in _strings(path, f"{k}header.{name}", vals))
    timeout = 30.0
    if "dial_timeout" in t:
        if not isinstance(t["dial_timeout"], str):
            raise _bad(path, k + "dial_timeout", 'must be a duration string like "200ms"')
        try:
            timeout = parse_duration(t["dial_timeout"]) / 1e9
        except InvalidArgument as exc:
            raise _bad(path, k + "dial_timeout", exc.message) from exc
    host = url.split("://", 1)[1].split("/", 1)[0]
    return Endpoint(url, tuple(caps_list), is_mirror(host, registry),
                    bool(t.get("skip_verify", False)), ca, tuple(client), hdrs,
                    bool(t.get("override_path", False)), timeout, f"{path} {key}")
