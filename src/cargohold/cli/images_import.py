"""``hold images import FILE|DIR|- ...``: image archives into the store (see images.importer)."""

from __future__ import annotations

import click

from cargohold.cli.app import App
from cargohold.cli.output import emit_json, human_size
from cargohold.cli.params import format_option, progress_option


def _print(res, fmt: str) -> None:  # noqa: ANN001 - an importer.ImportResult
    if fmt == "json":
        emit_json(res.to_json())
        return
    for e in res.entries:
        for n in e.names:
            click.echo(f"{n}  {e.target.digest}")
        for s in e.states:
            if s.attestation:
                continue
            tail = ""
            if s.manifest in e.unpacked:
                tail = f", unpacked ({e.unpacked[s.manifest]})"
            elif s.manifest in e.not_unpacked:
                tail = f", not unpacked ({e.not_unpacked[s.manifest]})"
            click.echo(f"  {s.platform or 'unknown':<16} {s.describe()}{tail}")
        att = [s for s in e.states if s.attestation]
        if att:
            done = sum(1 for s in att if s.complete)
            click.echo(f"  {'attestations':<16} {len(att)} ({done} complete)")
    for n in res.notes:
        click.echo(n, err=True)
    click.echo(f"imported {len(res.entries)} manifest(s) from {res.source} ({res.format}"
               f"{', ' + res.compression if res.compression != 'none' else ''}): "
               f"{res.blobs} new blob(s), {human_size(res.bytes)}"
               + (f" ({human_size(res.resumed)} of it kept from an interrupted import)"
                  if res.resumed else "")
               + f" in {res.seconds:.2f}s"
               + (f"; unchanged: {len(res.unchanged)}" if res.unchanged else ""))


@click.command("import")
@click.option("--base-name", default="", metavar="NAME",
              help="Name bare tags NAME:<tag> [import-YYYY-MM-DD, as ctr].")
@click.option("--index-name", default="", metavar="NAME",
              help="Also make image NAME pointing at the archive's whole index.")
@click.option("--name", default="", metavar="NAME", help="Name a nameless manifest.")
@click.option("--digests", is_flag=True, help="Also make <repo>@<digest> images.")
@click.option("--platform", "platform_", multiple=True, metavar="OS/ARCH[/VARIANT]",
              help="Import and unpack this platform (repeatable); fail if it is incomplete.")
@click.option("--all-platforms", is_flag=True,
              help="Unpack every platform this host can run (everything present is "
                   "imported anyway).")
@click.option("--no-unpack", is_flag=True, help="Do not unpack into snapshots.")
@click.option("--snapshotter", "snapshotter", default="", metavar="NAME",
              help="Unpack onto this snapshotter [the global one].")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Label the images.")
@progress_option
@format_option
@click.argument("sources", nargs=-1, required=True)
@click.pass_obj
def import_cmd(app: App, base_name: str, index_name: str, name: str, digests: bool,
               platform_: tuple[str, ...], all_platforms: bool, no_unpack: bool,
               snapshotter: str, labels: tuple[str, ...], progress_mode: str, fmt: str,
               sources: tuple[str, ...]) -> None:
    """Import image archives: docker save or OCI layout tars (gzip, zstd or xz compressed or
    not), OCI layout directories, or '-' for standard input.

    Platforms whose blobs the archive lacks are imported as far as they go and reported
    (complete, or how many blobs are missing); only a platform asked for with --platform can
    make the import fail. Nothing is visible until the whole archive is in. With several
    archives, each one's summary is printed as it finishes (--format json: one document at
    the end).
    """
    from cargohold.cli.progress import open_progress
    from cargohold.images import platforms
    from cargohold.images.importer import Importer, ImportOptions
    from cargohold.types import parse_labels

    opts = ImportOptions(base_name=base_name, index_name=index_name, name=name,
                         digests=digests, platforms=[platforms.parse(p) for p in platform_],
                         all_platforms=all_platforms, unpack=not no_unpack,
                         snapshotter=snapshotter or app.config.snapshotter,
                         labels=parse_labels(labels))
    results = []
    with open_progress(progress_mode) as progress:
        imp = Importer(app.client, progress=progress)
        for src in sources:
            res = imp.import_archive(src, opts)
            if fmt != "json":
                _print(res, fmt)  # as each finishes: a later archive's failure keeps it
            results.append(res)
    if fmt == "json":  # one document, whatever the number of archives
        emit_json([r.to_json() for r in results] if len(results) > 1 else results[0].to_json())
