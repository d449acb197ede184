"""One private registry for every upstream: where seeded images go, and the hosts.toml for it.

``example.com/team/app:1`` is pushed to ``REGISTRY/team/app:1``: the path a stock containerd
asks a ``_default`` mirror for (it keeps the repository path and adds ``?ns=example.com``).
Two images from different upstreams that land on the same path with different content would
silently overwrite each other, so :func:`destinations` refuses and names both — or, with
``prefix_host``, uses ``REGISTRY/<host>/<path>``, which per-host ``hosts.toml`` files with
``override_path`` point at (``http://REGISTRY/v2/<host>`` as the API root).

:func:`write_mirror_config` writes those files: ``DIR/_default/hosts.toml`` (every registry →
REGISTRY) and, for prefixed hosts, ``DIR/<host>/hosts.toml``. A file it did not write is not
overwritten without ``force``.
"""

from __future__ import annotations

import os

from cargohold import _fsutil
from cargohold.errors import AlreadyExists
from cargohold.fetch.api import Reference

MARKER = "# Written by 'hold airgap mirror-config'"


def host_component(host: str) -> str:
    """A registry host as one repository path component (``:`` is not allowed there)."""
    return host.replace(":", "_")


def destination(name: str, registry: str, *, prefix_host: bool = False) -> str:
    ref = Reference.parse(name)
    path = f"{host_component(ref.registry)}/{ref.repository}" if prefix_host else ref.repository
    out = f"{registry}/{path}"
    if ref.tag:
        out += f":{ref.tag}"
    if ref.digest:
        out += f"@{ref.digest}"
    return out


def destinations(images: dict[str, str], registry: str, *, prefix_host: bool = False
                 ) -> dict[str, str]:
    """``{image name: destination}`` for ``images`` (name → target digest).

    Raises AlreadyExists naming both images when two of different upstreams would land on
    the same destination with different content (same content is fine: pushed once).
    """
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in sorted(images):
        dest = destination(name, registry, prefix_host=prefix_host)
        other = seen.get(dest)
        if other is not None and images[other] != images[name]:
            raise AlreadyExists(
                f"push {dest}: both {other} ({images[other]}) and {name} ({images[name]}) "
                "would land there with different content",
                hint="seed with --prefix-host to keep each upstream under REGISTRY/<host>/, "
                     "or seed them into separate registries")
        seen.setdefault(dest, name)
        out[name] = dest
    return out


def write_mirror_config(hosts_dir: str, registry: str, *, plain_http: bool = False,
                        prefix_hosts: list[str] | None = None, force: bool = False
                        ) -> list[str]:
    """Write the hosts.toml files (see the module docstring); return their paths.

    The scheme is the one hold pushed with: ``http`` with ``plain_http`` and for a loopback
    or ``localhost`` REGISTRY (containerd's default, and seed --push's), else ``https``.
    """
    from cargohold.fetch.hosts import default_endpoint

    scheme = default_endpoint(registry, plain_http=plain_http).scheme
    files = {os.path.join(hosts_dir, "_default", "hosts.toml"):
             f'{MARKER}: every registry is served by {registry}.\n'
             f'[host."{scheme}://{registry}"]\n'
             '  capabilities = ["pull", "resolve"]\n'}
    for host in prefix_hosts or []:
        files[os.path.join(hosts_dir, host, "hosts.toml")] = (
            f'{MARKER}: {host} is served by {registry}/{host_component(host)}.\n'
            f'[host."{scheme}://{registry}/v2/{host_component(host)}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
            '  override_path = true\n')
    for path in files:
        if os.path.exists(path) and not force:
            with open(path, encoding="utf-8", errors="replace") as f:
                if not f.readline().startswith(MARKER):
                    raise AlreadyExists(f"hosts file {path}: exists and was not written by "
                                        "hold", hint="move it away, or pass --force to "
                                                     "replace it")
    for path, text in files.items():
        _fsutil.makedirs(os.path.dirname(path))
        _fsutil.atomic_write(path, text.encode())
    return sorted(files)
