"""``hold images pack DIR REF``: a one-layer image from a directory."""

from __future__ import annotations

import click

from cargohold.cli.app import App
from cargohold.cli.output import emit_json, human_size
from cargohold.cli.params import format_option


@click.command("pack")
@click.option("--platform", metavar="OS/ARCH[/VARIANT]",
              help="Platform written into the config [this host].")
@click.option("--compression", type=click.Choice(["gzip", "zstd", "none"]), default="gzip",
              show_default=True, help="Layer compression.")
@click.option("--entrypoint", "--config-entrypoint", "entrypoint", metavar="CMD",
              help='Entrypoint, as shell words or a JSON array (\'["/bin/sh","-c"]\').')
@click.option("--cmd", metavar="CMD", help="Default command, as shell words or a JSON array.")
@click.option("--env", "env", multiple=True, metavar="K=V", help="Environment (repeatable).")
@click.option("--workdir", default="", metavar="DIR", help="Working directory.")
@click.option("--user", default="", metavar="USER[:GROUP]", help="User to run as.")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Label the image record.")
@click.option("--index", is_flag=True,
              help="Point the image at an OCI index that lists the manifest with its platform.")
@click.option("--no-unpack", is_flag=True, help="Do not unpack into snapshots.")
@format_option
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("ref")
@click.pass_obj
def pack_cmd(app: App, platform: str | None, compression: str, entrypoint: str | None,
             cmd: str | None, env: tuple[str, ...], workdir: str, user: str,
             labels: tuple[str, ...], index: bool, no_unpack: bool, fmt: str, directory: str,
             ref: str) -> None:
    """Make the image REF from the files under DIRECTORY (one layer).

    Unpacks it like an import (unless --no-unpack). Reproducible: the created time is
    $SOURCE_DATE_EPOCH (or 1970-01-01 when unset), so packing an unchanged directory twice
    gives the same digest. Owners, modes, mtimes and xattrs of the files are kept as they are.
    """
    from cargohold.images import pack as packing
    from cargohold.images import platforms
    from cargohold.types import parse_labels

    opts = packing.PackOptions(
        platform=platforms.parse(platform) if platform else None, compression=compression,
        entrypoint=packing.split_command(entrypoint), cmd=packing.split_command(cmd),
        env=packing.parse_env(env), workdir=workdir, user=user,
        labels=parse_labels(labels), index=index, unpack=not no_unpack)
    res = packing.pack(app.client, directory, ref, opts)
    if fmt == "json":
        emit_json({"name": res.image.name, "target": res.image.target.to_json(),
                   "manifest": res.manifest.digest, "config": res.config.digest,
                   "layer": res.layer.to_json(), "diff_id": res.diff_id,
                   "unpacked": res.chain_id or None})
        return
    click.echo(f"{res.image.name}: {res.image.target.digest} "
               f"(layer {human_size(res.layer.size)}, diff {res.diff_id})")
