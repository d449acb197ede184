"""``hold gc``: collect now, ``--dry-run`` to list what would go, ``--why`` to explain a keep."""

from __future__ import annotations

import sys

import click

from cargohold.cli.app import App
from cargohold.cli.output import emit_json, human_size, table
from cargohold.cli.params import format_option


def print_result(res, fmt: str) -> None:  # noqa: ANN001 - a gc.collector.Result
    if fmt == "json":
        emit_json({"dry_run": res.dry_run, "bytes_freed": res.bytes_freed,
                   "removed": [{"kind": r.kind, "namespace": r.ns, "key": r.key,
                                "size": r.size} for r in res.removed],
                   "mark_seconds": round(res.mark_seconds, 4),
                   "sweep_seconds": round(res.sweep_seconds, 4),
                   "backend_seconds": round(res.backend_seconds, 4),
                   "retries": res.retries, "errors": res.errors})
        return
    if res.removed:
        table(["KIND", "NAMESPACE", "OBJECT", "SIZE"],
              [[r.kind, r.ns or "-", r.key, human_size(r.size) if r.size else "-"]
               for r in res.removed])
    verb = "would remove" if res.dry_run else "removed"
    free = "would free" if res.dry_run else "freed"
    click.echo(f"{verb} {len(res.removed)} object(s); {free} {human_size(res.bytes_freed)}"
               f" (mark {res.mark_seconds:.3f}s, sweep {res.sweep_seconds:.3f}s)")
    for e in res.errors:
        click.echo(f"hold: gc: {e}", err=True)


@click.command()
@click.option("--dry-run", is_flag=True, help="List what would be removed; change nothing.")
@click.option("--why", "why", metavar="OBJECT",
              help="Explain what keeps OBJECT alive (a digest, snapshot/<sn>/<key>, "
                   "image/<name>, lease/<id>, ingest/<ref>).")
@format_option
@click.pass_obj
def gc(app: App, dry_run: bool, why: str | None, fmt: str) -> None:
    """Remove everything no root keeps alive, and report the bytes freed.

    Never removed: what an image, a lease, a container, a containerd.io/gc.root label or a
    label chain reaches, and any snapshot in use by a mount (a 'hold images mount' or 'hold
    snapshots mount' record, a bind or overlay mount of its directory), even once its lease
    is gone: containerd's GC does not look at mounts. --dry-run lists exactly what a run
    would remove, with the same byte total. Exits 1 when something could not be collected (a
    snapshotter this host cannot open, a removal that failed); what could be was.
    """
    coll = app.client.collector
    if why:
        chains = coll.why(why)
        if fmt == "json":
            emit_json([[{"object": str(n), "kind": n.type, "namespace": n.ns, "key": n.key,
                         "via": via} for n, via in chain] for chain in chains])
            return
        for chain in chains:
            target = chain[-1][0]
            if len(chain) == 1 and chain[0][1].startswith("unreferenced"):
                _, _, detail = chain[0][1].partition(": ")
                click.echo(f"{why} (namespace {target.ns}): nothing keeps it"
                           + (f" ({detail})" if detail else "")
                           + "; the next 'hold gc' removes it")
                continue
            click.echo(f"{why} (namespace {target.ns}) is kept alive by:")
            for i, (n, via) in enumerate(chain):
                lead = "  " if i == 0 else "  " + "  " * i + "-> "
                click.echo(f"{lead}{n} [{via}]")
        return
    res = coll.collect(dry_run=dry_run)
    print_result(res, fmt)
    if res.errors:
        sys.exit(1)
