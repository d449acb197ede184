"""``hold fsck``: check blobs, records and ingests against each other; ``--repair``."""

from __future__ import annotations

import sys

import click

from cargohold.cli.app import App
from cargohold.cli.output import emit_json, human_size
from cargohold.cli.params import format_option


@click.command()
@click.option("--repair", is_flag=True, help="Fix what is safe to fix (see 'hold fsck -h').")
@format_option
@click.pass_obj
def fsck(app: App, repair: bool, fmt: str) -> None:
    """Check every blob against its digest and the metadata against the store, both ways.

    Exits 1 when a problem remains. --repair moves corrupt blobs aside to content/corrupt/
    and drops their records (re-import heals them), drops records that point at nothing, and
    removes unreferenced blobs, orphan ingests, backend snapshots no namespace records, and
    the half-extracted snapshots and leases of processes that died mid-import. Notes (not
    problems) name resumable partial ingests and leases of dead processes.
    """
    from cargohold.fsck.check import Fsck

    client = app.client
    rep = Fsck(client.db, client.store, repair=repair,
               snapshotters=client.snapshotter_or_none).run()
    if fmt == "json":
        emit_json({"clean": rep.clean, "blobs_checked": rep.blobs_checked,
                   "bytes_checked": rep.bytes_checked, "records_checked": rep.records_checked,
                   "ingests_checked": rep.ingests_checked, "seconds": round(rep.seconds, 3),
                   "problems": [{"kind": p.kind, "subject": p.subject, "message": p.message,
                                 "repair": p.repair, "repaired": p.repaired}
                                for p in rep.problems],
                   "notes": rep.notes})
    else:
        for p in rep.problems:
            state = "repaired" if p.repaired else (f"fix: --repair will {p.repair}"
                                                   if p.repair else "needs attention")
            click.echo(f"{p} [{state}]")
        for note in rep.notes:
            click.echo(note)
        click.echo(f"checked {rep.blobs_checked} blobs ({human_size(rep.bytes_checked)}), "
                   f"{rep.records_checked} records, {rep.ingests_checked} ingests in "
                   f"{rep.seconds:.2f}s: "
                   + ("clean" if not rep.problems else
                      f"{len(rep.problems)} problem(s), "
                      f"{sum(p.repaired for p in rep.problems)} repaired"))
    if not rep.clean:
        sys.exit(1)
