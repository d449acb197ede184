"""``hold images ls|check|tag|rm|label|inspect`` (see cargohold.images.service)."""

from __future__ import annotations

import click

from cargohold.cli.app import App
from cargohold.cli.output import emit_json, format_option, human_size, labels_text, table


def _service(app: App, snapshotter: str = ""):  # noqa: ANN202 - an ImageService
    from cargohold.images.service import ImageService

    return ImageService(app.client, snapshotter=snapshotter or None)


@click.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Print only image names.")
@format_option
@click.argument("filters", nargs=-1)
@click.pass_obj
def ls_cmd(app: App, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List images; FILTERS (like 'name~=alpine' or 'labels."k"==v') narrow the list."""
    svc = _service(app)
    if quiet:
        for img in svc.list(list(filters)):
            click.echo(img.name)
        return
    sums = svc.summaries(list(filters))
    if fmt == "json":
        emit_json([s.to_json() for s in sums])
        return
    table(["NAME", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"],
          [[s.image.name, s.image.target.media_type, s.image.target.digest,
            human_size(s.size), ",".join(s.platforms) or "-", labels_text(s.image.labels)]
           for s in sums])


@click.command("check")
@click.option("--snapshotter", default="", metavar="NAME",
              help="Check unpacking on this snapshotter [the global one].")
@format_option
@click.argument("filters", nargs=-1)
@click.pass_obj
def check_cmd(app: App, snapshotter: str, fmt: str, filters: tuple[str, ...]) -> None:
    """For each image and platform: complete or how many blobs are missing, and whether it
    is unpacked. Attestation manifests are shown apart and never make an image incomplete.
    """
    svc = _service(app, snapshotter)
    rows, docs = [], []
    for img in svc.list(list(filters)):
        states = svc.states(img, unpacked=True)
        docs.append({"name": img.name, "digest": img.target.digest,
                     "complete": all(s.complete for s in states if not s.attestation),
                     "platforms": [s.to_json() for s in states]})
        for s in states:
            plat = s.platform or "unknown"
            if s.attestation:
                plat = "attestation"
            unpacked = {True: "yes", False: "no", None: "-"}[s.unpacked]
            rows.append([img.name, plat, s.describe(), unpacked if not s.attestation else "-",
                         s.manifest])
    if fmt == "json":
        emit_json(docs)
        return
    table(["NAME", "PLATFORM", "STATUS", "UNPACKED", "MANIFEST"], rows)


@click.command("tag")
@click.option("--force", is_flag=True, help="Re-point a destination that exists.")
@click.argument("src")
@click.argument("dsts", nargs=-1, required=True)
@click.pass_obj
def tag_cmd(app: App, force: bool, src: str, dsts: tuple[str, ...]) -> None:
    """Give image SRC the further names DSTS (same target and labels)."""
    for img in _service(app).tag(src, list(dsts), force=force):
        click.echo(img.name)


@click.command("rm")
@click.option("--sync", is_flag=True, help="Run GC now and report the bytes freed.")
@click.option("--force", is_flag=True, help="Remove pinned (seeded) images too.")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def rm_cmd(app: App, sync: bool, force: bool, names: tuple[str, ...]) -> None:
    """Remove image records; their blobs and snapshots go to GC (now with --sync)."""
    res = _service(app).remove(list(names), sync=sync, force=force)
    for n in res.removed:
        click.echo(n)
    if sync:
        click.echo(f"freed {human_size(res.bytes_freed)} ({len(res.gc.removed)} object(s) "
                   "removed)", err=True)


@click.command("label")
@click.argument("name")
@click.argument("labels", nargs=-1, required=True)
@click.pass_obj
def label_cmd(app: App, name: str, labels: tuple[str, ...]) -> None:
    """Set labels K=V on image NAME ('K=' removes one)."""
    from cargohold.types import parse_labels

    img = _service(app).label(name, parse_labels(labels))
    click.echo(labels_text(img.labels))


@click.command("inspect")
@click.option("--snapshotter", default="", metavar="NAME",
              help="Report unpacking on this snapshotter [the global one].")
@click.argument("name")
@click.pass_obj
def inspect_cmd(app: App, snapshotter: str, name: str) -> None:
    """Print image NAME as JSON: record, index, manifests, configs, chain IDs, unpacked."""
    emit_json(_service(app, snapshotter).inspect(name))
