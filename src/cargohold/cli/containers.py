"""``hold containers create|ls|info|rm|label`` (see cargohold.tasks.containers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from cargohold.cli.app import App
from cargohold.cli.groups import Group
from cargohold.cli.output import emit_json, labels_text, table
from cargohold.cli.params import format_option, quiet_option

#: everything after the id is the process's argv, dashes included (as ctr)
ARGV_SETTINGS = {"allow_interspersed_args": False}


def spec_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options that shape a container's runtime spec (shared with ``hold run``)."""
    for opt in reversed([
        click.option("--env", "-e", "env", multiple=True, metavar="K=V",
                     help="Set an environment variable (repeatable; a bare K removes it)."),
        click.option("--cwd", default="", metavar="DIR",
                     help="Working directory [the image's, else /]."),
        click.option("--user", "-u", "user", default="", metavar="USER[:GROUP]",
                     help="User (name or uid, names looked up in the image) [the image's]."),
        click.option("--mount", "mounts", multiple=True,
                     metavar="type=bind,src=DIR,dst=DIR,options=rbind:ro",
                     help="Add a mount (repeatable), in ctr's syntax."),
        click.option("--net-host", is_flag=True,
                     help="Use the host's network (and its hostname, /etc/hosts, "
                          "/etc/resolv.conf)."),
        click.option("--read-only", "read_only_rootfs", is_flag=True,
                     help="Mount the container's root filesystem read-only."),
        click.option("--tty", "-t", "tty", is_flag=True, help="Give the process a terminal."),
        click.option("--label", "labels", multiple=True, metavar="K=V",
                     help="Label the container (repeatable)."),
        click.option("--platform", default=None, metavar="OS/ARCH[/VARIANT]",
                     help="Platform of the image to use [this host]."),
        click.option("--snapshotter", "snapshotter", default="", metavar="NAME",
                     help="Snapshotter for the container's snapshot [the global one]."),
    ]):
        f = opt(f)
    return f


def create_options(kw: dict[str, Any], args: tuple[str, ...]) -> Any:
    """The :class:`CreateOptions` of the options of :func:`spec_options` (popped from kw)."""
    from cargohold.images import platforms
    from cargohold.tasks.containers import CreateOptions
    from cargohold.tasks.spec import SpecOptions, parse_mount
    from cargohold.types import parse_labels

    platform = kw.pop("platform")
    spec = SpecOptions(args=list(args), env=list(kw.pop("env")), cwd=kw.pop("cwd"),
                       user=kw.pop("user"),
                       mounts=[parse_mount(m) for m in kw.pop("mounts")],
                       net_host=kw.pop("net_host"), read_only=kw.pop("read_only_rootfs"),
                       tty=kw.pop("tty"))
    return CreateOptions(spec=spec,
                         labels={k: v for k, v in parse_labels(kw.pop("labels")).items() if v},
                         snapshotter=kw.pop("snapshotter"),
                         platform=platforms.parse(platform) if platform else None)


@click.group("containers", cls=Group)
def containers() -> None:
    """Containers: an image, a writable snapshot and a runtime spec (ctr containers)."""


@containers.command("create", context_settings=ARGV_SETTINGS)
@spec_options
@click.argument("image")
@click.argument("cid", metavar="ID")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[CMD [ARGS]...]")
@click.pass_obj
def create_cmd(app: App, image: str, cid: str, args: tuple[str, ...], **kw: Any) -> None:
    """Create container ID from IMAGE (unpacked first when needed).

    CMD ARGS, when given, are the whole argv (the image's entrypoint and cmd are not used),
    dashes included. Start it with 'hold tasks start ID'.
    """
    from cargohold.tasks import containers as lib

    c = lib.create(app.client, image, cid, create_options(kw, args))
    click.echo(c.id)


@containers.command("ls")
@quiet_option
@format_option
@click.argument("filters", nargs=-1)
@click.pass_obj
def ls(app: App, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List containers (FILTERS as ctr's: id==x, image==y, labels.k==v)."""
    from cargohold.tasks import containers as lib

    found = lib.list_containers(app.client, filters)
    if quiet:
        for c in found:
            click.echo(c.id)
    elif fmt == "json":
        emit_json([lib.info_json(c) for c in found])
    else:
        table(["CONTAINER", "IMAGE", "RUNTIME", "LABELS"],
              [[c.id, c.image or "-", c.runtime, labels_text(c.labels)] for c in found])


@containers.command("info")
@click.argument("cid", metavar="ID")
@click.pass_obj
def info(app: App, cid: str) -> None:
    """Show container ID as JSON, its runtime spec included (as ctr containers info)."""
    from cargohold.tasks import containers as lib

    emit_json(lib.info_json(lib.get(app.client, cid)))


@containers.command("rm")
@click.option("--keep-snapshot", is_flag=True,
              help="Keep the container's snapshot (labelled a GC root).")
@click.argument("cids", nargs=-1, required=True, metavar="ID...")
@click.pass_obj
def rm(app: App, keep_snapshot: bool, cids: tuple[str, ...]) -> None:
    """Remove containers and their snapshots. A container with a task is refused."""
    from cargohold.tasks import containers as lib

    for cid in cids:
        lib.remove(app.client, cid, keep_snapshot=keep_snapshot)
        click.echo(cid)


@containers.command("label")
@click.argument("cid", metavar="ID")
@click.argument("labels", nargs=-1, metavar="K=V...")
@click.pass_obj
def label(app: App, cid: str, labels: tuple[str, ...]) -> None:
    """Set labels of container ID (K= removes K); with none, print them."""
    from cargohold.tasks import containers as lib
    from cargohold.types import parse_labels

    c = lib.label(app.client, cid, parse_labels(labels)) if labels else lib.get(app.client, cid)
    click.echo(labels_text(c.labels))
