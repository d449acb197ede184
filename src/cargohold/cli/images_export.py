"""``hold images export OUT REF...``: an OCI image-layout tar with docker's manifest.json."""

from __future__ import annotations

import sys

import click

from cargohold.cli.app import App
from cargohold.cli.params import progress_option


@click.command("export")
@click.option("--platform", "platform_", multiple=True, metavar="OS/ARCH[/VARIANT]",
              help="Export this platform (repeatable) [this host].")
@click.option("--all-platforms", is_flag=True, help="Export every platform of each image.")
@click.option("--skip-manifest-json", is_flag=True,
              help="Leave out docker's manifest.json and repositories.")
@progress_option
@click.argument("out")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def export_cmd(app: App, platform_: tuple[str, ...], all_platforms: bool,
               skip_manifest_json: bool, progress_mode: str, out: str,
               refs: tuple[str, ...]) -> None:
    """Write the images REFS to OUT ('-' for standard output).

    OUT ending in .gz, .zst or .xz is compressed ('hold images import' reads each; 'ctr
    images import' 1.6 reads only an uncompressed tar); other compression suffixes (.bz2,
    ...) are refused. By default only this host's platform is exported, and platforms that
    are not in the store are skipped; a missing blob of a platform asked for with --platform
    or --all-platforms is an error.
    """
    from cargohold.cli.progress import open_progress
    from cargohold.images import exporter, platforms

    if out == "-" and sys.stdout.isatty():
        raise click.UsageError("refusing to write an archive to a terminal; redirect it")
    opts = exporter.ExportOptions(
        platforms=[platforms.parse(p) for p in platform_] or None,
        all_platforms=all_platforms, skip_manifest_json=skip_manifest_json)
    with open_progress(progress_mode) as progress:
        res = exporter.export(app.client, out, list(refs), opts,
                              stream=sys.stdout.buffer if out == "-" else None,
                              progress=progress)
        for note in res.plan.notes:
            progress.note(note)
    for note in res.plan.notes:
        if progress_mode in ("auto", "none"):
            click.echo(f"note: {note}", err=True)
