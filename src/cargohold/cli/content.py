"""``hold content``: ls, get, ingest, active, rm, label, fetch (compatible with ``ctr content``,
aliases included: list; delete, del, remove).

Sizes are in IEC units like the rest of hold (``ctr content ls`` alone prints decimal ones).
"""

from __future__ import annotations

import sys

import click

from cargohold.cli import hot
from cargohold.cli.app import App
from cargohold.cli.groups import Group
from cargohold.cli.output import age, emit_json, human_size, json_time, labels_text, table
from cargohold.cli.params import apply, format_option
from cargohold.errors import AlreadyExists, IntegrityError, NotFound


# ``fetch`` shares its options and code with ``hold images pull`` (cli/images_pull.py), which
# is imported only when fetch runs.
@click.group(cls=Group, lazy={"fetch": ("cargohold.cli.images_pull", "fetch_cmd")})
def content() -> None:
    """Manage blobs in the content store."""


@content.command("ls")
@apply(hot.CONTENT_LS)
@click.pass_obj
def ls(app: App, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List blobs (optionally matching FILTERS, e.g. 'labels."k"==v')."""
    hot.content_ls(app, quiet, fmt, filters)


@content.command("get")
@click.argument("digest")
@click.pass_obj
def get(app: App, digest: str) -> None:
    """Write the blob DIGEST to standard output."""
    from cargohold._oserror import is_env_errno, stream_error

    out = sys.stdout.buffer
    with app.client.content.reader(digest) as r:
        while chunk := r.read(1 << 20):
            try:
                out.write(chunk)
                out.flush()
            except OSError as exc:  # the output is full or failing; EPIPE goes on to main
                if not is_env_errno(exc.errno):
                    raise
                raise stream_error(exc, 1, f"content get {digest} to standard output") from exc


@content.command("ingest")
@click.option("--expected-size", type=int, default=0, help="Fail unless this many bytes come.")
@click.option("--expected-digest", default="", help="Fail unless the data hashes to this.")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Label the blob.")
@click.argument("ref")
@click.pass_obj
def ingest(app: App, expected_size: int, expected_digest: str, labels: tuple[str, ...],
           ref: str) -> None:
    """Store standard input as a blob, under the ingest name REF.

    Run it again with the same REF after an interruption: it resumes from the ingest's
    offset (the input is read from the start again, and the bytes already stored skipped).
    """
    from cargohold.store.api import copy_into
    from cargohold.types import parse_labels

    store = app.client.content
    label_map = {k: v for k, v in parse_labels(labels).items() if v}
    try:
        w = store.writer(ref, total=expected_size, expected=expected_digest)
    except AlreadyExists:
        click.echo(expected_digest)
        return
    src = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)  # noqa: SIM115
    try:
        # ``then`` makes a commit of bytes the store (or this namespace) already holds a
        # success that returns the digest: storing them again is nothing to complain about.
        digest = copy_into(w, src, size=expected_size, expected=expected_digest,
                           labels=label_map, then=lambda d, existed: None)
    except IntegrityError as exc:
        offset = _offset(store, ref)
        if expected_size and offset < expected_size:
            exc.hint = (f"got {offset} of {expected_size} bytes; the ingest is kept: run the "
                        "same command again to resume")
        else:
            store.abort(ref)
            exc.hint = "the ingest was discarded; nothing was stored"
        raise
    finally:
        w.close()
    click.echo(digest)


def _offset(store, ref: str) -> int:  # noqa: ANN001
    """The bytes ingest ``ref`` holds (0 when it is gone)."""
    try:
        return store.status(ref).offset
    except NotFound:
        return 0


@content.command("active")
@format_option
@click.argument("filters", nargs=-1)
@click.pass_obj
def active(app: App, fmt: str, filters: tuple[str, ...]) -> None:
    """List ingests in progress, with their offsets and who is writing them."""
    sts = app.client.content.list_statuses(list(filters))
    if fmt == "json":
        emit_json([{"ref": s.ref, "offset": s.offset, "total": s.total,
                    "expected": s.expected, "started_at": json_time(s.started_at),
                    "updated_at": json_time(s.updated_at), "holder": s.holder} for s in sts])
        return
    table(["REF", "SIZE", "TOTAL", "STARTED", "UPDATED", "WRITER"],
          [[s.ref, human_size(s.offset), human_size(s.total) if s.total else "-",
            age(s.started_at), age(s.updated_at), s.holder or "-"] for s in sts])


@content.command("rm")
@click.argument("digests", nargs=-1, required=True)
@click.pass_obj
def rm(app: App, digests: tuple[str, ...]) -> None:
    """Remove blobs from this namespace (the files go at the next 'hold gc')."""
    for d in digests:
        app.client.content.delete(d)
        click.echo(d)


@content.command("label")
@click.argument("digest")
@click.argument("labels", nargs=-1, required=True)
@click.pass_obj
def label(app: App, digest: str, labels: tuple[str, ...]) -> None:
    """Set labels K=V on a blob (K= removes K)."""
    from cargohold.store.api import Info
    from cargohold.types import parse_labels

    lab = parse_labels(labels)
    info = app.client.content.update(Info(digest, 0, labels=lab),
                                     [f"labels.{k}" for k in lab])
    click.echo(labels_text(info.labels))

