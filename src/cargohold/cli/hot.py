"""The hot commands: their parameters declared once, as data, and their bodies, free of click.

``hold version``, ``content ls``, ``images ls``, ``images mount`` and ``images unmount`` run in
scripts, health checks and loops; on a small VM importing click alone costs several times a
whole ``ctr`` command. Each hot command is declared here once (:class:`Opt`, :class:`Arg`):
:mod:`cargohold.cli.params` builds the click command from the declaration (its ``--help``, its
usage errors) and :mod:`cargohold.cli.fast` parses a plain command line against the same
declaration without importing click. Both call the same body below, so output and errors are
the same on either path. Anything the fast parser does not recognize goes to click.

Bodies write with :func:`cargohold.cli.output.echo` and import the library lazily.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cargohold.cli.app import App


class Opt:
    """An option: its names (``-q``, ``--quiet``; ``--rm/--no-rm`` pairs as ``off``), the
    parameter it sets, whether it takes a value, and its choices, default and help.
    """

    __slots__ = ("names", "dest", "value", "off", "choices", "default", "metavar", "help")

    def __init__(self, *names: str, dest: str, value: bool = False, off: tuple[str, ...] = (),
                 choices: tuple[str, ...] = (), default: object = None, metavar: str = "",
                 help: str = "") -> None:  # noqa: A002 - click's own word
        self.names, self.dest, self.value, self.off = names, dest, value, off
        if default is None and not value and not off:
            default = False  # a plain flag, as click's is_flag
        self.choices, self.default, self.metavar, self.help = choices, default, metavar, help


class Arg:
    """A positional argument; ``many`` takes the rest of the line (click's ``nargs=-1``)."""

    __slots__ = ("name", "many", "path")

    def __init__(self, name: str, *, many: bool = False, path: bool = False) -> None:
        self.name, self.many, self.path = name, many, path


FORMAT = Opt("--format", dest="fmt", value=True, choices=("table", "json"), default="table",
             help="Output format.")

# The global options of `hold` (before the command); HOLD_* variables are read by the config.
GLOBAL: tuple[Opt, ...] = (
    Opt("--root", dest="root", value=True, metavar="DIR",
        help="Store root [HOLD_ROOT; /var/lib/cargohold]."),
    Opt("--state", dest="state", value=True, metavar="DIR",
        help="State directory [HOLD_STATE; /run/cargohold]."),
    Opt("-n", "--namespace", dest="namespace", value=True, metavar="NS",
        help="Namespace [HOLD_NAMESPACE; default]; containerd's rules: letters and digits "
             "joined by single '.', '_' or '-', at most 76 characters."),
    Opt("--config", dest="config_file", value=True, metavar="FILE", help="Config file (TOML)."),
    Opt("--snapshotter", dest="snapshotter", value=True, metavar="NAME",
        help="Snapshotter [HOLD_SNAPSHOTTER; overlayfs]."),
    Opt("--lease", dest="lease", value=True, metavar="ID",
        help="Run this command's writes inside lease ID."),
    Opt("--read-only", dest="read_only",
        help="Open the root read-only: reads work, nothing on disk changes, writes fail "
             "[HOLD_READ_ONLY=1]."),
    Opt("--debug", dest="debug", help="Print the traceback of an error (to report an internal "
                                      "one)."),
    Opt("-v", "--version", dest="version",
        help="Print the version (as 'hold version') and exit."),
)

VERSION: tuple[Opt | Arg, ...] = ()
CONTENT_LS: tuple[Opt | Arg, ...] = (
    Opt("-q", "--quiet", dest="quiet", help="Print only names/ids."), FORMAT,
    Arg("filters", many=True))
IMAGES_LS: tuple[Opt | Arg, ...] = (
    Opt("-q", "--quiet", dest="quiet", help="Print only the image refs."), FORMAT,
    Arg("filters", many=True))
IMAGES_MOUNT: tuple[Opt | Arg, ...] = (
    Opt("--rw", dest="rw", help="Writable (an active snapshot) instead of read-only."),
    Opt("--platform", dest="platform", value=True, metavar="OS/ARCH[/VARIANT]",
        help="Platform to mount [this host]."),
    Opt("--snapshotter", dest="snapshotter", value=True, metavar="NAME",
        help="Snapshotter [the global --snapshotter]."),
    Arg("ref"), Arg("target", path=True))
IMAGES_UNMOUNT: tuple[Opt | Arg, ...] = (
    Opt("--rm", dest="rm", off=("--no-rm",),
        help="Remove the snapshot and lease too [--rm for read-only mounts, --no-rm for --rw "
             "ones]."),
    Arg("target", path=True))

# (group, verb) -> (declaration, body name); the group and verb as hold names them, aliases
# resolved by cargohold.cli.names.
COMMANDS: dict[tuple[str, ...], tuple[tuple[Opt | Arg, ...], str]] = {
    ("version",): (VERSION, "version"),
    ("content", "ls"): (CONTENT_LS, "content_ls"),
    ("images", "ls"): (IMAGES_LS, "images_ls"),
    ("images", "mount"): (IMAGES_MOUNT, "images_mount"),
    ("images", "unmount"): (IMAGES_UNMOUNT, "images_unmount"),
}


def version() -> None:
    """The version of cargohold, the Python running it and the kernel."""
    import os
    import sys

    from cargohold import __version__

    # Written directly: cli.output (and the types it formats) is more than this needs.
    lines = (f"hold {__version__}", f"  python {sys.version.split()[0]} ({sys.executable})",
             f"  kernel {os.uname().release}")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def content_ls(app: App, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    from cargohold.cli.output import age, echo, emit_json, human_size, json_time, labels_text, table

    infos: list = []
    app.client.content.walk(infos.append, list(filters))
    infos.sort(key=lambda i: i.digest)
    if quiet:
        for i in infos:
            echo(i.digest)
    elif fmt == "json":
        emit_json([{"digest": i.digest, "size": i.size, "created_at": json_time(i.created_at),
                    "updated_at": json_time(i.updated_at), "labels": i.labels} for i in infos])
    else:
        table(["DIGEST", "SIZE", "AGE", "LABELS"],
              [[i.digest, human_size(i.size), age(i.created_at), labels_text(i.labels)]
               for i in infos])


def images_ls(app: App, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    from cargohold.cli.output import echo, emit_json, human_size, labels_text, table
    from cargohold.images.manage import ImageService

    svc = ImageService(app.client)
    if quiet:
        for img in svc.list(list(filters)):
            echo(img.name)
        return
    sums = svc.summaries(list(filters))
    if fmt == "json":
        emit_json([s.to_json() for s in sums])
        return
    table(["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"],
          [[s.image.name, s.image.target.media_type, s.image.target.digest,
            human_size(s.size), ",".join(s.platforms) or "-", labels_text(s.image.labels)]
           for s in sums])


def images_mount(app: App, rw: bool, platform: str | None, snapshotter: str | None, ref: str,
                 target: str) -> None:
    from cargohold.cli.output import echo
    from cargohold.images import mount as mounting
    from cargohold.images import platforms

    rec = mounting.mount(app.client, ref, target, rw=rw,
                         platform=platforms.parse(platform) if platform else None,
                         snapshotter=snapshotter)
    echo(rec.chain_id)
    echo(rec.target)


def images_unmount(app: App, rm: bool | None, target: str) -> None:
    from cargohold.cli.output import echo
    from cargohold.images import mount as mounting

    res = mounting.unmount(app.client, target, rm=rm)
    state = "unmounted" if res.was_mounted else "not mounted"
    if res.removed:
        state += "; snapshot and lease removed"
    elif rm is False or (res.record is not None and res.record.rw and rm is None):
        state += "; snapshot kept"
    echo(f"{res.target}: {state}")
