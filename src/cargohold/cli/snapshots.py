"""``hold snapshots``: ls, prepare, view, commit, rm, mounts, mount, unmount, usage, info, tree,
label, diff (compatible with ``ctr snapshots``, aliases included: list; delete, del, remove;
m for mounts; the global ``--snapshotter NAME`` picks the backend).

Snapshots made here belong to the namespace (``-n``). As ``ctr`` does, ``prepare``, ``view``
and ``commit`` label what they make ``containerd.io/gc.root=<now>``, so ``hold gc`` keeps it
until ``hold snapshots rm``; inside ``--lease ID`` they do not, and the lease keeps them
instead. A mounted snapshot is never removed (``rm`` refuses without ``--force``).

Printed mount commands paste into a shell for any chain the kernel can stack: an overlay whose
options pass mount(8)'s one-page limit is printed as containerd mounts it internally, from the
directory its layers share with each lower relative to it (``(cd DIR && mount ... TARGET)``).
"""

from __future__ import annotations

import os

import click

from cargohold.cli.app import App
from cargohold.cli.groups import Group
from cargohold.cli.names import VERB_ALIASES
from cargohold.cli.output import age, emit_json, human_size, json_time, labels_text, table
from cargohold.cli.params import format_option, quiet_option

label_option = click.option("--label", "labels", multiple=True, metavar="K=V",
                            help="Label the snapshot (repeatable).")
target_option = click.option("--target", metavar="DIR", default=None,
                             help="Mount it on DIR (an existing directory).")


# ctr's "mounts, m, mount": "mount" is hold's own command here, which mounts for real.
@click.group(cls=Group, aliases={**VERB_ALIASES, "mounts": ("m",)})
def snapshots() -> None:
    """Manage snapshots of the selected snapshotter (--snapshotter).

    Unlike ctr, where 'snapshots mount' is another name for 'mounts' (print the commands),
    'hold snapshots mount TARGET KEY' mounts KEY and records it; GC keeps a mounted snapshot
    (recorded or found in the kernel's mount table) whatever its lease or labels say.
    """


def _sn(app: App):  # noqa: ANN202 - a NamespacedSnapshotter
    return app.client.snapshotter()


def _infos(app: App, filters: tuple[str, ...] = ()) -> list:
    out: list = []
    _sn(app).walk(out.append, list(filters))
    return sorted(out, key=lambda i: i.name)


def _info_json(i) -> dict:  # noqa: ANN001 - an api.Info
    return {"name": i.name, "parent": i.parent, "kind": str(i.kind), "labels": i.labels,
            "created_at": json_time(i.created_at), "updated_at": json_time(i.updated_at)}


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    from cargohold.types import parse_labels

    return {k: v for k, v in parse_labels(pairs).items() if v}


def _made_labels(app: App, pairs: tuple[str, ...]) -> dict[str, str]:
    """Labels for a snapshot made by hand: a GC root (as ctr's), unless a lease keeps it."""
    labels = _labels(pairs)
    if app.lease is None:
        import time

        from cargohold.types import LABEL_GC_ROOT

        labels.setdefault(LABEL_GC_ROOT, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return labels


def mount_command(m, target: str) -> str:  # noqa: ANN001 - a types.Mount
    """The shell command that mounts ``m`` on ``target``, to paste as it is.

    An overlay whose options pass the one-page limit of mount(2) (past it, mount(8) fails, or
    the kernel keeps the first page and silently stacks a truncated chain) is printed as
    containerd mounts it: in a subshell that changes into the directory its lower
    layers share, each lower relative to it, and ``target`` made absolute. Otherwise the
    plain ``mount`` line with absolute paths (what ctr prints).
    """
    import shlex

    from cargohold.mount.overlay import PAGE_LIMIT, compact_options

    if m.type != "overlay" or len(",".join(m.options)) < PAGE_LIMIT:
        return m.command(target)
    common, short = compact_options(list(m.options))
    if not common:
        return m.command(target)
    if len(short) >= PAGE_LIMIT:
        click.echo(f"hold: note: {short.count(':') + 1} lower layers need {len(short)} bytes of "
                   "mount options even relative, more than mount(8) takes; 'hold snapshots "
                   "mount' mounts them (fsconfig lowerdir+)", err=True)
    if target != "TARGET":  # the placeholder stays as it is, for the user to fill in
        target = os.path.abspath(target)
    # The source is the directory the lowers are relative to: mountinfo shows it, which is how
    # hold's GC tells which root's snapshots such a mount uses (mount.info.MountUsers).
    line = " ".join(shlex.quote(p) for p in ("mount", "-t", m.type, "-o", short, common,
                                              target))
    return f"(cd {shlex.quote(common)} && {line})"


def _show_mounts(app: App, key: str, mounts: list, target: str | None) -> None:
    """Mount on ``target``, or print the commands that would (with TARGET to fill in)."""
    if target is None:
        for m in mounts:
            click.echo(mount_command(m, "TARGET"))
        return
    from cargohold.mount import mount_all

    try:
        mount_all(mounts, target)
    except BaseException:
        _sn(app).remove(key)  # nothing was mounted: do not leave a snapshot nobody asked for
        raise
    click.echo(target)


@snapshots.command("ls")
@quiet_option
@format_option
@click.argument("filters", nargs=-1)
@click.pass_obj
def ls(app: App, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List snapshots (optionally matching FILTERS, e.g. kind==committed, parent==KEY)."""
    infos = _infos(app, filters)
    if quiet:
        for i in infos:
            click.echo(i.name)
    elif fmt == "json":
        emit_json([_info_json(i) for i in infos])
    else:
        table(["KEY", "PARENT", "KIND"], [[i.name, i.parent, str(i.kind)] for i in infos])


@snapshots.command("prepare")
@target_option
@label_option
@click.argument("key")
@click.argument("parent", default="")
@click.pass_obj
def prepare(app: App, target: str | None, labels: tuple[str, ...], key: str,
            parent: str) -> None:
    """Create the writable snapshot KEY on committed PARENT (none: empty).

    It is a GC root (containerd.io/gc.root) unless made inside --lease. Without --target,
    prints the mount command with TARGET to fill in (an absolute path when the command
    starts with 'cd').
    """
    mounts = _sn(app).prepare(key, parent, labels=_made_labels(app, labels))
    _show_mounts(app, key, mounts, target)


@snapshots.command("view")
@target_option
@label_option
@click.argument("key")
@click.argument("parent")
@click.pass_obj
def view(app: App, target: str | None, labels: tuple[str, ...], key: str, parent: str) -> None:
    """Create the read-only snapshot KEY showing committed PARENT.

    It is a GC root (containerd.io/gc.root) unless made inside --lease. Without --target,
    prints the mount command with TARGET to fill in (an absolute path when the command
    starts with 'cd').
    """
    mounts = _sn(app).view(key, parent, labels=_made_labels(app, labels))
    _show_mounts(app, key, mounts, target)


@snapshots.command("commit")
@label_option
@click.argument("name")
@click.argument("key")
@click.pass_obj
def commit(app: App, labels: tuple[str, ...], name: str, key: str) -> None:
    """Commit the writable snapshot KEY as NAME (KEY stops existing). Unmount KEY first.

    NAME is a GC root (containerd.io/gc.root) unless committed inside --lease.
    """
    _sn(app).commit(name, key, labels=_made_labels(app, labels))
    click.echo(name)


@snapshots.command("rm")
@click.option("--force", is_flag=True,
              help="Remove even a mounted snapshot (its mounts are detached first).")
@click.argument("keys", nargs=-1, required=True)
@click.pass_obj
def rm(app: App, force: bool, keys: tuple[str, ...]) -> None:
    """Remove snapshots (children before their parents). A mounted one is refused."""
    sn = _sn(app)
    for k in keys:
        sn.remove(k, force=force)
        click.echo(k)


@snapshots.command("mounts")
@click.argument("target")
@click.argument("key")
@click.pass_obj
def mounts(app: App, target: str, key: str) -> None:
    """Print the mount command(s) that mount KEY on TARGET, ready to paste into a shell.

    A chain too long for mount(8)'s one-page option limit is printed as '(cd DIR && mount
    ... TARGET)' with each layer relative to DIR, as containerd mounts it.
    """
    for m in _sn(app).mounts(key):
        click.echo(mount_command(m, target))


@snapshots.command("mount")
@click.argument("target", type=click.Path(file_okay=False))
@click.argument("key")
@click.pass_obj
def mount(app: App, target: str, key: str) -> None:
    """Mount snapshot KEY on TARGET (created when missing) and record the mount.

    An active snapshot is mounted writable, a view read-only; a chain of any depth the kernel
    can stack is mounted (lowerdir+ where the options pass one page). The record (listed by
    'hold images mounts') keeps KEY from GC while it is mounted, even once its lease is gone;
    'hold snapshots unmount TARGET' unmounts and drops it. Not ctr's 'snapshots mount', which
    only prints (that is 'hold snapshots mounts').
    """
    from cargohold.images.mount import mount_snapshot

    click.echo(mount_snapshot(app.client, key, target).target)


@snapshots.command("unmount")
@click.argument("target")
@click.pass_obj
def unmount(app: App, target: str) -> None:
    """Unmount everything mounted on TARGET and drop the record of 'hold snapshots mount'
    there; doing it twice is fine. A target of 'hold images mount' is refused (use 'hold
    images unmount').
    """
    from cargohold.images.mount import unmount_snapshot

    unmount_snapshot(app.client, target)
    click.echo(target)


@snapshots.command("usage")
@format_option
@click.argument("key", required=False)
@click.pass_obj
def usage(app: App, fmt: str, key: str | None) -> None:
    """Show the disk use of KEY (or of every snapshot), its parents excluded.

    Committed snapshots report what was measured at commit; active ones are measured now.
    """
    sn = _sn(app)
    keys = [key] if key else [i.name for i in _infos(app)]
    rows = [(k, sn.usage(k)) for k in keys]
    if fmt == "json":
        emit_json([{"key": k, "size": u.size, "inodes": u.inodes} for k, u in rows])
    else:
        table(["KEY", "SIZE", "INODES"], [[k, human_size(u.size), u.inodes] for k, u in rows])


@snapshots.command("info")
@click.argument("key")
@click.pass_obj
def info(app: App, key: str) -> None:
    """Print everything about KEY as JSON."""
    emit_json(_info_json(_sn(app).stat(key)))


@snapshots.command("tree")
@click.pass_obj
def tree(app: App) -> None:
    """Show snapshots as a tree, each under its parent."""
    infos = _infos(app)
    kids: dict[str, list] = {}
    for i in infos:
        kids.setdefault(i.parent, []).append(i)

    def show(i, depth: int) -> None:  # noqa: ANN001 - an api.Info
        lead = "" if depth == 0 else "   " * (depth - 1) + " \\_ "
        click.echo(f"{lead}{i.name} ({str(i.kind).lower()}, {age(i.created_at)} ago)")
        for c in kids.get(i.name, []):
            show(c, depth + 1)

    names = {i.name for i in infos}
    for i in infos:
        if i.parent not in names:  # "" or a parent that fsck would report missing
            show(i, 0)


@snapshots.command("label")
@click.argument("key")
@click.argument("labels", nargs=-1, required=True)
@click.pass_obj
def label(app: App, key: str, labels: tuple[str, ...]) -> None:
    """Set labels K=V on KEY (K= removes K); prints the labels it ends with."""
    from cargohold.snapshotters.api import Info, Kind
    from cargohold.types import parse_labels

    lab = parse_labels(labels)
    new = _sn(app).update(Info(key, Kind.ACTIVE, labels=lab), [f"labels.{k}" for k in lab])
    click.echo(labels_text(new.labels))


@snapshots.command("diff")
@click.option("--media-type", default="application/vnd.oci.image.layer.v1.tar+gzip",
              show_default=True, help="Layer media type: tar, tar+gzip or tar+zstd.")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Label the blob.")
@click.argument("key")
@click.pass_obj
def diff(app: App, media_type: str, labels: tuple[str, ...], key: str) -> None:
    """Write the changes of KEY against its parent as a layer blob; print its digest.

    The blob has whiteouts, opaque markers and every xattr. Run inside --lease to keep it
    (an unreferenced blob goes at the next 'hold gc').
    """
    from cargohold.metadata.snapdiff import diff as snapshot_diff

    desc = snapshot_diff(_sn(app), key, app.client.content, media_type=media_type,
                         labels={k: v for k, v in _labels(labels).items() if v})
    click.echo(desc.digest)
