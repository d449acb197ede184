"""``hold run``: create a container and run its task in one step (see cargohold.tasks.run)."""

from __future__ import annotations

from typing import Any

import click

from cargohold.cli.app import App
from cargohold.cli.containers import ARGV_SETTINGS, create_options, spec_options


@click.command("run", context_settings=ARGV_SETTINGS)
@click.option("--rm", "rm", is_flag=True,
              help="Remove the task and the container (and its snapshot) after the exit.")
@click.option("--detach", "-d", is_flag=True, help="Return once the task runs.")
@spec_options
@click.option("--plain-http", is_flag=True,
              help="Use plain HTTP when IMAGE must be pulled from a registry without a "
                   "hosts.toml.")
@click.option("--hosts-dir", default=None, metavar="DIR",
              help="Directory of <host>/hosts.toml files for a pull [config "
                   "registry.config_path].")
@click.argument("image")
@click.argument("cid", metavar="ID")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[CMD [ARGS]...]")
@click.pass_obj
def run(app: App, rm: bool, detach: bool, plain_http: bool, hosts_dir: str | None,
        image: str, cid: str, args: tuple[str, ...], **kw: Any) -> None:
    """Run CMD (the image's entrypoint and cmd when none is given) in a new container ID.

    IMAGE is pulled first when the store lacks it. Everything after ID is the argv, dashes
    included (so hold run --rm IMG t1 sh -c "exit 7" exits 7). Attached, output, stdin and
    signals are the task's, and its exit status is hold's; hold dying never stops the task.
    """
    from cargohold.tasks.launch import ShimStarter

    # First of all: the shim's interpreter starts while hold imports and works.
    with ShimStarter() as shim:
        _run(app, rm, detach, plain_http, hosts_dir, image, cid, args, kw, shim)


def _run(app: App, rm: bool, detach: bool, plain_http: bool, hosts_dir: str | None,
         image: str, cid: str, args: tuple[str, ...], kw: dict[str, Any], shim: Any) -> None:
    from cargohold.tasks import run as runner

    opts = create_options(kw, args)

    def pull(ref: str) -> str:
        from cargohold.cli.images_pull import open_registry
        from cargohold.cli.progress import open_progress
        from cargohold.fetch.pull import Puller, PullOptions

        popts = PullOptions(platforms=[opts.platform] if opts.platform else [],
                            snapshotter=opts.snapshotter or app.config.snapshotter)
        with open_registry(app, hosts_dir, plain_http, "") as reg, \
                open_progress("auto") as progress:
            return Puller(app.client, reg, progress=progress).pull(ref, popts).name

    from cargohold.cli.tasks import require_terminal, stdin_fd

    stdin = stdin_fd()
    if opts.spec.tty and not detach:
        require_terminal(stdin)
    client = app.client
    name = runner.find_image(client, image, pull)
    res = runner.run(client, name, cid, opts, detach=detach, rm=rm, stdin=stdin, shim=shim)
    if res.status:
        raise SystemExit(res.status)
