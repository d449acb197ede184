"""``hold images pull|push`` and ``hold content fetch``: registries (see cargohold.fetch)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from cargohold.cli.app import App
from cargohold.cli.output import emit_json, human_size
from cargohold.cli.params import format_option, progress_option


def registry_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--hosts-dir, --plain-http and --user, as ctr spells them."""
    f = click.option("--user", "-u", "user", default="", metavar="USER[:PASSWORD]",
                     help="Credentials for every registry host (prompts for a missing "
                          "password on a terminal) [~/.docker/config.json].")(f)
    f = click.option("--plain-http", is_flag=True,
                     help="Use plain HTTP for registries without a hosts.toml (as ctr).")(f)
    f = click.option("--hosts-dir", default=None, metavar="DIR",
                     help="Directory of <host>/hosts.toml files [config registry."
                          "config_path].")(f)
    return f


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM first abort running downloads, then unwind as usual (a silent
    registry must not hold the cleanup until its read timeout).
    """
    import signal
    import threading

    from cargohold.fetch.pull import interrupt_all

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        prev = signal.getsignal(sig)

        def handler(signum: int, frame: Any, prev: Any = prev) -> None:
            interrupt_all()
            if callable(prev):
                prev(signum, frame)
            else:
                raise KeyboardInterrupt

        saved[sig] = prev
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, prev in saved.items():
            signal.signal(sig, prev)


@contextlib.contextmanager
def open_registry(app: App, hosts_dir: str | None, plain_http: bool,
                  user: str) -> Iterator[Any]:
    """A :class:`cargohold.fetch.registry.Registry` for this command's options, closed
    after the block; signals interrupt its downloads first (see ``_interruptible``).
    """
    from cargohold.fetch.credentials import Credentials, Secret, parse_user
    from cargohold.fetch.registry import Registry

    secret = None
    if user:
        name, password = parse_user(user)
        if password is None:
            if not sys.stdin.isatty():
                from cargohold.errors import InvalidArgument

                raise InvalidArgument(f"--user {name}: no password, and no terminal to ask on",
                                      hint="write it as --user USER:PASSWORD")
            password = click.prompt(f"Password for {name}", hide_input=True, err=True)
        secret = Secret(name, password, source="--user")
    if hosts_dir is None:
        hosts_dir = str(app.config.section("registry").get("config_path", ""))
    with Registry(hosts_dir=hosts_dir, plain_http=plain_http,
                  credentials=Credentials(secret)) as reg, _interruptible():
        yield reg


def pull_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--platform", "platform_", multiple=True, metavar="OS/ARCH[/VARIANT]",
                     help="Pull this platform (repeatable) [this host's]."),
        click.option("--all-platforms", is_flag=True, help="Pull every platform."),
        click.option("--max-concurrent-downloads", type=click.IntRange(1, 32), default=3,
                     show_default=True, help="Blobs (and parts of one) fetched at once."),
        click.option("--chunk-size", default="32MiB", show_default=True, metavar="SIZE",
                     help="Fetch layers larger than twice this in ranged parts of this size "
                          "(0: never)."),
        click.option("--label", "labels", multiple=True, metavar="K=V",
                     help="Label the image."),
        progress_option,
        format_option,
    ]):
        f = opt(f)
    return registry_options(f)


def _pull(app: App, ref: str, *, unpack: bool, snapshotter: str, platform_: tuple[str, ...],
          all_platforms: bool, max_concurrent_downloads: int, chunk_size: str,
          labels: tuple[str, ...], progress_mode: str, fmt: str, hosts_dir: str | None,
          plain_http: bool, user: str) -> None:
    from cargohold.cli.progress import open_progress
    from cargohold.fetch.pull import Puller, PullOptions
    from cargohold.images import platforms
    from cargohold.types import parse_labels, parse_size

    opts = PullOptions(platforms=[platforms.parse(p) for p in platform_],
                       all_platforms=all_platforms, unpack=unpack,
                       snapshotter=snapshotter or app.config.snapshotter,
                       max_concurrent_downloads=max_concurrent_downloads,
                       chunk_size=parse_size(chunk_size),
                       labels={k: v for k, v in parse_labels(labels).items() if v})
    with open_registry(app, hosts_dir, plain_http, user) as reg, \
            open_progress(progress_mode) as progress:
        res = Puller(app.client, reg, progress=progress).pull(ref, opts)
    if fmt == "json":
        emit_json(res.to_json())
        return
    click.echo(f"{res.name}  {res.target.digest}  (from {res.endpoint})")
    for p, d in res.manifests:
        tail = f", unpacked ({res.unpacked[d]})" if d in res.unpacked else ""
        click.echo(f"  {p or 'unknown':<16} {d}{tail}")
    resumed = f", {human_size(res.resumed)} resumed" if res.resumed else ""
    click.echo(f"{'pulled' if unpack else 'fetched'} {res.name}: {res.fetched} blob(s) "
               f"downloaded ({human_size(res.bytes)}{resumed}), {res.existing} present, in "
               f"{res.seconds:.2f}s; image {res.image}")


@click.command("pull")
@pull_options
@click.option("--snapshotter", "snapshotter", default="", metavar="NAME",
              help="Unpack onto this snapshotter [the global one].")
@click.option("--no-unpack", is_flag=True, help="Fetch the content only.")
@click.argument("ref")
@click.pass_obj
def pull_cmd(app: App, ref: str, no_unpack: bool, snapshotter: str, **kw: Any) -> None:
    """Pull REF from its registry and unpack it (layers are applied while they download).

    Endpoints come from hosts.toml (see 'hold hosts explain REF'). An interrupted pull —
    even a killed one — continues where it stopped when run again.
    """
    _pull(app, ref, unpack=not no_unpack, snapshotter=snapshotter, **kw)


@click.command("fetch")
@pull_options
@click.argument("ref")
@click.pass_obj
def fetch_cmd(app: App, ref: str, **kw: Any) -> None:
    """Fetch REF's content (index, manifests, configs, layers) and its image record; no
    unpack (as 'ctr content fetch').
    """
    _pull(app, ref, unpack=False, snapshotter="", **kw)


@click.command("push")
@registry_options
@click.option("--platform", "platform_", multiple=True, metavar="OS/ARCH[/VARIANT]",
              help="Push only this platform's manifest (repeatable) [all the image has].")
@click.option("--chunk-size", default="0", show_default=True, metavar="SIZE",
              help="Upload blobs larger than this in PATCH chunks of this size (0: one PUT).")
@click.option("--max-concurrent-uploads", type=click.IntRange(1, 32), default=3,
              show_default=True, help="Blobs uploaded at once.")
@progress_option
@format_option
@click.argument("ref")
@click.argument("local", required=False)
@click.pass_obj
def push_cmd(app: App, ref: str, local: str | None, platform_: tuple[str, ...],
             chunk_size: str, max_concurrent_uploads: int, progress_mode: str, fmt: str,
             hosts_dir: str | None, plain_http: bool, user: str) -> None:
    """Push image LOCAL (default: REF) to REF's registry: blobs it lacks (mounted from
    another repository where it can), then manifests, the index last.
    """
    from cargohold.cli.progress import open_progress
    from cargohold.fetch.push import Pusher, PushOptions
    from cargohold.images import platforms
    from cargohold.types import parse_size

    opts = PushOptions(platforms=[platforms.parse(p) for p in platform_],
                       chunk_size=parse_size(chunk_size),
                       max_concurrent_uploads=max_concurrent_uploads)
    with open_registry(app, hosts_dir, plain_http, user) as reg, \
            open_progress(progress_mode) as progress:
        res = Pusher(app.client, reg, progress=progress).push(local or ref, ref, opts)
    if fmt == "json":
        emit_json(res.to_json())
        return
    click.echo(f"{res.name}  {res.target.digest}  (to {res.endpoint})")
    click.echo(f"pushed {res.name}: {res.uploaded} blob(s) uploaded "
               f"({human_size(res.bytes)}), {res.mounted} mounted, {res.existing} present, "
               f"{res.manifests} manifest(s), in {res.seconds:.2f}s")
