"""What ``hold plugins ls`` shows: every component, with a status that a probe measured.

Each probe does something real with its component and reports what it saw: the metadata
database is opened and its schema version and key count read; the blob store's directory is
listed and checked for writing; GC opens every snapshotter it would collect and its
lock is asked who holds it; leases are listed; gzip and
zstd each compress and decompress a buffer; runc prints its version and lists the namespace's
containers under the state directory, which must be writable; every snapshotter runs its own
support check. A status is ``ok`` only when the probe succeeded, ``skip`` when the component
cannot work on this host or root (with why and what to do), ``error`` when its probe failed.
Nothing is ``ok`` by construction.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from cargohold.client import Client


class Component(NamedTuple):
    """One row of ``hold plugins ls``."""

    type: str
    id: str
    status: str  # ok, skip, error
    reason: str


def _run(type_: str, id_: str, probe: Callable[[], tuple[str, str]]) -> Component:
    from cargohold.errors import CargoholdError

    try:
        status, reason = probe()
    except (CargoholdError, OSError) as exc:
        return Component(type_, id_, "error", str(exc))
    return Component(type_, id_, status, reason)


def probe_all(client: Client) -> list[Component]:
    """Probe every component of ``client``'s root, in a fixed order."""
    rows = [_run("metadata", "lmdb", lambda: _metadata(client)),
            _run("content", "local", lambda: _content(client)),
            _run("gc", "collector", lambda: _gc(client)),
            _run("leases", "manager", lambda: _leases(client)),
            _run("differ", "gzip (ISA-L)", _gzip),
            _run("differ", "zstd", _zstd),
            _run("runtime", "runc", lambda: _runtime(client))]
    from cargohold.snapshotters import registry

    for name, status, reason in registry.probe_all(client.root,
                                                   client.config.section("snapshotters")):
        rows.append(Component("snapshotter", name, status, reason))
    return rows


def _metadata(client: Client) -> tuple[str, str]:
    from cargohold.metadata import schema

    db = client.db
    with db.view() as tx:
        raw = tx.get(schema.VERSION_KEY)
    keys = db.env.stat()["entries"]
    version = int(raw) if raw else schema.SCHEMA_VERSION
    return "ok", f"schema v{version}, {keys} keys"


def _content(client: Client) -> tuple[str, str]:
    d = os.path.join(client.root, "content", "blobs")
    n = 0
    for alg in ("sha256", "sha512"):
        try:
            n += len(os.listdir(os.path.join(d, alg)))
        except FileNotFoundError:
            continue
    if client.read_only:
        return "ok", f"{n} blobs (read-only root: reads only)"
    base = d if os.path.isdir(d) else os.path.join(client.root, "content")
    if os.path.isdir(base) and not os.access(base, os.W_OK):
        return "error", f"{n} blobs, but {base} is not writable by this user"
    return "ok", f"{n} blobs"


def _gc(client: Client) -> tuple[str, str]:
    from cargohold._fsutil import lock_holder

    if client.read_only:
        return "skip", "the root is read-only: 'hold gc --dry-run' and '--why' still work"
    # A snapshotter GC cannot open makes every 'hold gc' fail: the collector is in error.
    bad = client.collector.unopenable()
    if bad:
        return "error", "; ".join(f"cannot open snapshotter {sn} ({why}): 'hold gc' collects "
                                  "none of its snapshots and exits 1" for sn, why in bad.items())
    holder = lock_holder(os.path.join(client.root, "gc.lock"))
    return "ok", f"running now: {holder}" if holder else "idle"


def _leases(client: Client) -> tuple[str, str]:
    n = len(client.leases.list())
    return "ok", f"{n} lease(s) in namespace {client.namespace}"


def _runtime(client: Client) -> tuple[str, str]:
    from cargohold.tasks.api import settings
    from cargohold.tasks.runc import probe

    return probe(client.config.state, client.namespace, settings(client.config)[0])


def _gzip() -> tuple[str, str]:
    data = os.urandom(64) * 64
    try:
        from isal import igzip
    except ImportError:
        import gzip

        if gzip.decompress(gzip.compress(data)) != data:
            return "error", "zlib round trip failed"
        return "skip", "python module isal missing: zlib fallback, about 5x slower " \
                       "(pip install isal)"
    if igzip.decompress(igzip.compress(data)) != data:
        return "error", "ISA-L round trip gave other bytes"
    return "ok", "round trip"


def _zstd() -> tuple[str, str]:
    data = os.urandom(64) * 64
    try:
        import zstandard
    except ImportError:
        return "skip", "python module zstandard missing: zstd layers cannot be read " \
                       "(pip install zstandard)"
    out = zstandard.ZstdDecompressor().decompress(zstandard.ZstdCompressor().compress(data))
    if out != data:
        return "error", "zstd round trip gave other bytes"
    return "ok", "round trip"
