"""``hold airgap``: bundle images into one archive, seed them, map registries to a mirror."""

from __future__ import annotations

from typing import Any

import click

from cargohold.cli.app import App
from cargohold.cli.groups import Group
from cargohold.cli.images_pull import open_registry, registry_options
from cargohold.cli.output import emit_json, human_size
from cargohold.cli.params import format_option, progress_option


@click.group(cls=Group)
def airgap() -> None:
    """Carry images into an air gap: bundle, seed, mirror-config."""


@airgap.command("bundle")
@click.option("--platform", "platform_", multiple=True, metavar="OS/ARCH[/VARIANT]",
              help="Bundle this platform (repeatable) [this host's].")
@click.option("--all-platforms", is_flag=True, help="Bundle every platform.")
@registry_options
@progress_option
@format_option
@click.argument("out")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def bundle_cmd(app: App, platform_: tuple[str, ...], all_platforms: bool, progress_mode: str,
               fmt: str, out: str, refs: tuple[str, ...], hosts_dir: str | None,
               plain_http: bool, user: str) -> None:
    """Write REFS to the archive OUT (an OCI layout tar that 'hold airgap seed', 'hold images
    import' and 'ctr images import' read; .gz/.tgz/.zst compress it, and ctr then reads it
    through 'zstd -dc OUT | ctr images import -'). Images the store lacks are pulled first.
    """
    from cargohold.cli.progress import open_progress
    from cargohold.fetch.bundle import bundle
    from cargohold.images import platforms

    with open_registry(app, hosts_dir, plain_http, user) as reg, \
            open_progress(progress_mode) as progress:
        res = bundle(app.client, reg, out, list(refs),
                     platforms=[platforms.parse(p) for p in platform_],
                     all_platforms=all_platforms, progress=progress)
    if fmt == "json":
        emit_json(res.to_json())
        return
    for img in res.images:
        click.echo(f"{img['name']}  {img['digest']}")
    for n in res.notes:
        click.echo(f"note: {n}", err=True)
    click.echo(f"bundled {len(res.images)} image(s) into {res.path}: {res.blobs} blob(s), "
               f"{human_size(res.bytes)}" + (f"; pulled {len(res.pulled)}" if res.pulled
                                             else ""))


@airgap.command("seed")
@click.option("--push", "push", default="", metavar="REGISTRY",
              help="Push every image to REGISTRY/<path> instead of only storing it.")
@click.option("--prefix-host", is_flag=True,
              help="With --push: REGISTRY/<host>/<path> (for colliding paths); write the "
                   "matching hosts.toml files with 'hold airgap mirror-config --prefix-host'.")
@click.option("--no-unpack", is_flag=True, help="Store only; do not unpack.")
@click.option("--jobs", "-j", type=click.IntRange(1, 16), default=2, show_default=True,
              help="Archives imported at once.")
@registry_options
@progress_option
@format_option
@click.argument("sources", nargs=-1, required=True)
@click.pass_obj
def seed_cmd(app: App, push: str, prefix_host: bool, no_unpack: bool, jobs: int,
             progress_mode: str,
             fmt: str, sources: tuple[str, ...], hosts_dir: str | None, plain_http: bool,
             user: str) -> None:
    """Seed bundles, image archives and directories (read as k3s reads its images
    directory: tarballs, and .txt files of references to pull). Archives seeded before and
    unchanged are skipped without being read. Seeded images are pinned.
    """
    from cargohold.cli.progress import open_progress
    from cargohold.fetch.seed import Seeder, SeedOptions

    with open_registry(app, hosts_dir, plain_http, user) as reg, \
            open_progress(progress_mode) as progress:
        res = Seeder(app.client, reg, progress=progress).seed(
            list(sources), SeedOptions(push=push, prefix_host=prefix_host,
                                       unpack=not no_unpack, jobs=jobs))
    if fmt == "json":
        emit_json(res.to_json())
        return
    for item in res.items:
        tail = f": new {', '.join(item.new)}" if item.new else ""
        click.echo(f"{item.status:<9} {item.source} ({len(item.images)} image(s))"
                   f"{tail}")
    for name, dest in sorted(res.pushed.items()):
        click.echo(f"pushed    {name} → {dest}")
    new = sum(len(i.new) for i in res.items)
    click.echo(f"seeded {len(res.items)} source(s): {new} new image(s), "
               f"{sum(1 for i in res.items if i.status == 'unchanged')} unchanged")
    if push and prefix_host:
        hosts = sorted({n.split("/", 1)[0] for n in res.pushed})
        click.echo("mirror config: hold airgap mirror-config "
                   + " ".join(f"--prefix-host {h}" for h in hosts)
                   + (" --plain-http" if plain_http else "") + f" {push}", err=True)


@airgap.command("mirror-config")
@click.option("--hosts-dir", default=None, metavar="DIR",
              help="Where to write <host>/hosts.toml [config registry.config_path].")
@click.option("--plain-http", is_flag=True, help="The registry speaks plain HTTP.")
@click.option("--prefix-host", "prefix_hosts", multiple=True, metavar="HOST",
              help="HOST's images are under REGISTRY/HOST/ (seed --prefix-host); repeatable.")
@click.option("--force", is_flag=True, help="Replace hosts.toml files hold did not write.")
@click.argument("registry")
@click.pass_obj
def mirror_config_cmd(app: App, hosts_dir: str | None, plain_http: bool,
                      prefix_hosts: tuple[str, ...], force: bool, registry: str) -> Any:
    """Write hosts.toml files that send every registry to REGISTRY (DIR/_default), and each
    --prefix-host HOST to REGISTRY/HOST (override_path), for containerd and hold alike.
    """
    from cargohold.fetch.mirrors import write_mirror_config

    d = hosts_dir or str(app.config.section("registry").get("config_path", ""))
    for path in write_mirror_config(d, registry, plain_http=plain_http,
                                    prefix_hosts=list(prefix_hosts), force=force):
        click.echo(path)
