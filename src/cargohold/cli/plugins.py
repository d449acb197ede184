"""``hold plugins ls``: every component, whether it can run here, and why not."""

from __future__ import annotations

import click

from cargohold.cli.app import App
from cargohold.cli.output import emit_json, table


@click.group()
def plugins() -> None:
    """Inspect cargohold's components."""


def _components(app: App) -> list[tuple[str, str, str, str]]:
    import importlib.util
    import shutil

    from cargohold.metadata import schema

    rows: list[tuple[str, str, str, str]] = []
    client = app.client
    try:
        _ = client.db
        rows.append(("metadata", "lmdb", "ok", f"schema v{schema.SCHEMA_VERSION}"))
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        rows.append(("metadata", "lmdb", "error", str(exc)))
    try:
        _ = client.store
        rows.append(("content", "local", "ok", ""))
    except Exception as exc:  # noqa: BLE001
        rows.append(("content", "local", "error", str(exc)))
    rows.append(("gc", "collector", "ok", ""))
    rows.append(("leases", "manager", "ok", ""))
    for mod, name, fallback in (("isal", "gzip (ISA-L)", "zlib fallback, about 5x slower"),
                                ("zstandard", "zstd", "zstd layers cannot be read")):
        ok = importlib.util.find_spec(mod) is not None
        rows.append(("differ", name, "ok" if ok else "skip", "" if ok else
                     f"python module {mod} missing: {fallback}"))
    from cargohold.snapshotters import registry

    for name, status, reason in registry.probe_all(client.root,
                                                   app.config.section("snapshotters")):
        rows.append(("snapshotter", name, status, reason))
    runc = shutil.which("runc")
    rows.append(("runtime", "runc", "ok" if runc else "skip",
                 runc or "runc not found on PATH (apt-get install runc)"))
    return rows


@plugins.command("ls")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
def ls(app: App, fmt: str) -> None:
    """List components with status ok / skip / error and the reason."""
    rows = _components(app)
    if fmt == "json":
        emit_json([{"type": t, "id": i, "status": s, "reason": r} for t, i, s, r in rows])
        return
    table(["TYPE", "ID", "STATUS", "REASON"], [[t, i, s, r or "-"] for t, i, s, r in rows])
