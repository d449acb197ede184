"""``hold hosts explain REF``: the endpoints a pull of REF would try, and why."""

from __future__ import annotations

import click

from cargohold.cli.app import App
from cargohold.cli.groups import Group
from cargohold.cli.output import emit_json
from cargohold.cli.params import format_option


@click.group(cls=Group)
def hosts() -> None:
    """Registry hosts and mirrors (containerd's hosts.toml)."""


@hosts.command("explain")
@click.option("--hosts-dir", default=None, metavar="DIR",
              help="Directory of <host>/hosts.toml files [config registry.config_path].")
@click.option("--plain-http", is_flag=True, help="As for pull: plain HTTP by default.")
@format_option
@click.argument("ref")
@click.pass_obj
def explain(app: App, hosts_dir: str | None, plain_http: bool, fmt: str, ref: str) -> None:
    """Print, in order, the endpoints a pull of REF tries: URL, capabilities, TLS files,
    headers, and the file and key each came from. Malformed files are errors here too.
    """
    from cargohold.fetch.api import Reference
    from cargohold.fetch.hosts import load

    r = Reference.parse(ref)
    if hosts_dir is None:
        hosts_dir = str(app.config.section("registry").get("config_path", ""))
    cfg = load(hosts_dir, r.registry, plain_http=plain_http)
    rows = []
    for ep in cfg.endpoints:
        query = f"?ns={r.registry}" if ep.mirror else ""
        rows.append({"url": ep.url, "kind": "mirror" if ep.mirror else "server",
                     "capabilities": list(ep.capabilities), "skip_verify": ep.skip_verify,
                     "ca": list(ep.ca), "client": [list(c) for c in ep.client],
                     "headers": ep.header_dict(),
                     "dial_timeout": ep.dial_timeout, "source": ep.source,
                     "manifest_url": f"{ep.url}/{r.repository}/manifests/{r.object}{query}"})
    if fmt == "json":
        emit_json({"reference": r.name, "registry": r.registry, "hosts_dir": hosts_dir,
                   "file": cfg.file, "searched": cfg.searched, "endpoints": rows})
        return
    click.echo(f"{r.name}: registry {r.registry}")
    if cfg.file:
        click.echo(f"  hosts file: {cfg.file}")
    elif cfg.searched:
        click.echo(f"  no hosts.toml (looked in {', '.join(cfg.searched)}): containerd's "
                   "defaults")
    else:
        click.echo("  no hosts directory: containerd's defaults")
    for i, row in enumerate(rows, 1):
        caps = ",".join(row["capabilities"]) or "none"
        click.echo(f"{i}. {row['url']}  {row['kind']}  {caps}")
        click.echo(f"   from: {row['source']}")
        if "resolve" in row["capabilities"]:
            click.echo(f"   resolve: HEAD {row['manifest_url']}")
        elif "pull" in row["capabilities"]:
            blob = row["manifest_url"].rsplit("/manifests/", 1)[0] + "/blobs/<digest>"
            query = f"?ns={r.registry}" if row["kind"] == "mirror" else ""
            click.echo(f"   pull (by digest only): GET {blob}{query}")
        tls = []
        if row["skip_verify"]:
            tls.append("skip_verify")
        tls += [f"ca {c}" for c in row["ca"]]
        tls += [f"client {c[0]}" + (f" key {c[1]}" if c[1] else "") for c in row["client"]]
        if tls:
            click.echo(f"   tls: {'; '.join(tls)}")
        for k, v in row["headers"].items():
            click.echo(f"   header: {k}: {v}")
        if row["dial_timeout"] != 30.0:
            click.echo(f"   dial_timeout: {row['dial_timeout']}s")
