"""``hold images ls|check|tag|rm|label|inspect`` (see cargohold.images.manage)."""

from __future__ import annotations

import click

from cargohold.cli import hot
from cargohold.cli.app import App
from cargohold.cli.output import emit_json, human_size, labels_text, table
from cargohold.cli.params import apply, format_option


def _service(app: App, snapshotter: str = ""):  # noqa: ANN202 - an ImageService
    from cargohold.images.manage import ImageService

    return ImageService(app.client, snapshotter=snapshotter or None)


@click.command("ls")
@apply(hot.IMAGES_LS)
@click.pass_obj
def ls_cmd(app: App, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List images; FILTERS (like 'name~=alpine' or 'labels."k"==v') narrow the list.

    Columns as ctr's: REF TYPE DIGEST SIZE (this host's platform) PLATFORMS LABELS, except
    that PLATFORMS leaves out attestation manifests (ctr lists them as unknown/unknown).
    """
    hot.images_ls(app, quiet, fmt, filters)


@click.command("check")
@click.option("-q", "--quiet", is_flag=True,
              help="Print only the refs ready for this host (complete and unpacked).")
@click.option("--snapshotter", default="", metavar="NAME",
              help="Check unpacking on this snapshotter [the global one].")
@format_option
@click.argument("filters", nargs=-1)
@click.pass_obj
def check_cmd(app: App, quiet: bool, snapshotter: str, fmt: str,
              filters: tuple[str, ...]) -> None:
    """Check that each image's blobs are in the store and whether it is unpacked.

    One row per image as ctr prints it: REF TYPE DIGEST STATUS SIZE UNPACKED, for this
    host's platform (STATUS 'complete (3/3)', 'incomplete (2/3)' or 'unavailable (0/?)',
    counting config and layers; SIZE present/required). Beyond ctr, an image with an index
    gets one indented row per platform under it, so partial platforms are reported, and
    attestation manifests are listed apart: they never make an image incomplete.
    """
    svc = _service(app, snapshotter)
    rows, docs = [], []
    for img in svc.list(list(filters)):
        states = svc.states(img, unpacked=True)
        host = svc.host_state(img, states)
        status = host.check_status() if host else "unavailable (0/?)"
        unpacked = bool(host and host.unpacked)
        if quiet:
            if host is not None and host.complete and host.unpacked:
                click.echo(img.name)
            continue
        docs.append({"name": img.name, "type": img.target.media_type,
                     "digest": img.target.digest, "status": status,
                     "complete": all(s.complete for s in states if not s.attestation),
                     "present_size": host.present_size if host else 0,
                     "required_size": host.required_size if host and host.counts() else None,
                     "unpacked": host.unpacked if host else False,  # None: cannot tell
                     "platforms": [s.to_json() for s in states]})
        rows.append([img.name, img.target.media_type, img.target.digest, status,
                     _check_size(host), str(unpacked).lower()])
        if host is not None and host.manifest == img.target.digest:
            continue  # a plain manifest: its row is the image's
        for s in states:
            plat = "attestation" if s.attestation else (s.platform or "unknown")
            u = "-" if s.attestation or s.unpacked is None else str(s.unpacked).lower()
            rows.append([f"  {plat}", s.media_type or "-", s.manifest, s.check_status(),
                         _check_size(s), u])
    if quiet:
        return
    if fmt == "json":
        emit_json(docs)
        return
    table(["REF", "TYPE", "DIGEST", "STATUS", "SIZE", "UNPACKED"], rows)


def _check_size(s) -> str:  # noqa: ANN001 - a PlatformState or None
    """ctr's SIZE of check: present/required (``?`` when the manifest is missing)."""
    if s is None or s.counts() is None:
        return f"{human_size(s.present_size if s else 0)}/?"
    return f"{human_size(s.present_size)}/{human_size(s.required_size)}"


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
