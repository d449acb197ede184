"""Configuration: defaults, ``config.toml``, environment and flags, in rising precedence.

The file is TOML (``hold config default`` prints a commented one). Unknown keys are an error
that names the key, so a typo never silently does nothing. Only keys that some code reads are
listed (a test checks it): a key appears here together with what uses it.
"""

from __future__ import annotations

import os

from cargohold._record import field, record
from cargohold.errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_TEXT = """\
# cargohold configuration (TOML). Every key is shown with its default.
# Precedence: command-line flags > environment (HOLD_*) > this file > defaults.

# Where blobs, metadata and snapshots live (HOLD_ROOT, --root).
root = "{root}"
# Where mount records and tasks live (HOLD_STATE, --state).
state = "{state}"
# Namespace used when none is given (HOLD_NAMESPACE, -n).
namespace = "default"
# Snapshotter used when none is given (HOLD_SNAPSHOTTER, --snapshotter):
# overlayfs, native, btrfs, zfs or devmapper.
snapshotter = "overlayfs"
# Open the root read-only (HOLD_READ_ONLY=1, --read-only): every read works, nothing on disk
# changes, and every write fails with "root DIR is read-only". A root on a read-only
# filesystem is opened so anyway.
read_only = false

[gc]
# Records removed per write transaction while sweeping (small batches keep writers moving).
sweep_batch = 500
# Ingests opened without a lease expire after this long.
ingest_expiry = "24h"
# 'hold serve' collects on its own, as containerd's GC scheduler does:
# the share of time GC may hold the metadata (0 to 0.5); it spaces the periodic runs
# (interval = average pause / pause_threshold - average pause).
pause_threshold = 0.02
# Records removed (images, blobs, snapshots, leases) that start a collection at once;
# 0: a removal makes the next periodic run happen instead of being skipped.
deletion_threshold = 0
# Metadata writes that start a collection (0: writes alone never do).
mutation_threshold = 100
# Delay from a trigger to the collection, and from start-up to the first one.
schedule_delay = "0ms"
startup_delay = "100ms"

[registry]
# Directory of per-host hosts.toml files, in containerd's layout (<host>/hosts.toml and
# _default/hosts.toml): mirrors, TLS and headers for pull, push and 'hold hosts explain'
# (--hosts-dir overrides it).
config_path = "/etc/cargohold/certs.d"

[tasks]
# The OCI runtime that runs containers (a name on PATH or a path); its state lives under
# <state>/runc/<namespace>.
runtime_binary = "runc"
# A task's output log is rotated when it passes this many bytes (one older file is kept,
# so a task holds at most about twice this); 0 never rotates.
log_size_max = 8388608

[serve]
# 'hold serve': the registry over the store (OCI distribution API). "" turns it off. Only a
# loopback address unless you write another here.
registry_address = "127.0.0.1:5000"
# The namespace whose images the registry serves.
registry_namespace = "default"
# Accept pushes (hold airgap seed --push, skopeo copy) from users of the htpasswd file.
registry_push = false
# An htpasswd file of bcrypt hashes (htpasswd -B); required for registry_push.
htpasswd = ""
# Largest manifest accepted by a push, and largest blob upload.
max_manifest_size = "4MiB"
max_upload_size = "64GiB"
# A client that sends or reads nothing for this long is disconnected.
client_timeout = "60s"
# How often mount records whose target is no longer mounted are cleaned up.
mount_sweep_interval = "1m"

[snapshotters.overlayfs]
# Extra mount options for every overlay mount (e.g. ["volatile"]).
mount_options = []

[snapshotters.btrfs]
# Must be on a btrfs filesystem; empty means <root>/snapshots/btrfs.
root_path = ""

[snapshotters.zfs]
# Parent dataset under which snapshot datasets are created (e.g. "tank/cargohold").
dataset = ""

[snapshotters.devmapper]
# An existing thin pool (dmsetup create <pool> --table '... thin-pool ...').
pool_name = ""
base_image_size = "10GB"
fs_type = "ext4"
fs_options = ""
discard_blocks = true
"""


def default_root() -> str:
    if os.geteuid() == 0:
        return "/var/lib/cargohold"
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "cargohold")


def default_state() -> str:
    if os.geteuid() == 0:
        return "/run/cargohold"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/cargohold-{os.geteuid()}"
    return os.path.join(base, "cargohold")


def default_config_file() -> str:
    if os.geteuid() == 0:
        return "/etc/cargohold/config.toml"
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "cargohold", "config.toml")


def default_text() -> str:
    """The commented default config file."""
    return DEFAULT_TEXT.format(root=default_root(), state=default_state())


# The defaults as data, so that running without a config file needs no TOML parser at start-up;
# tests check that this equals what DEFAULT_TEXT parses to.
DEFAULTS: dict[str, Any] = {
    "namespace": "default", "snapshotter": "overlayfs", "read_only": False,
    "gc": {"sweep_batch": 500, "ingest_expiry": "24h", "pause_threshold": 0.02,
           "deletion_threshold": 0, "mutation_threshold": 100, "schedule_delay": "0ms",
           "startup_delay": "100ms"},
    "serve": {"registry_address": "127.0.0.1:5000", "registry_namespace": "default",
              "registry_push": False, "htpasswd": "", "max_manifest_size": "4MiB",
              "max_upload_size": "64GiB", "client_timeout": "60s",
              "mount_sweep_interval": "1m"},
    "registry": {"config_path": "/etc/cargohold/certs.d"},
    "tasks": {"runtime_binary": "runc", "log_size_max": 8388608},
    "snapshotters": {"overlayfs": {"mount_options": []}, "btrfs": {"root_path": ""},
                     "zfs": {"dataset": ""},
                     "devmapper": {"pool_name": "", "base_image_size": "10GB",
                                   "fs_type": "ext4", "fs_options": "",
                                   "discard_blocks": True}},
}


def _copy(value: Any) -> Any:
    """A deep copy of TOML-shaped data (dicts, lists, scalars): ``copy.deepcopy`` without its
    import, which every hot command would pay for.
    """
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _defaults() -> dict[str, Any]:
    return {"root": default_root(), "state": default_state(), **_copy(DEFAULTS)}


@record
class Config:
    """The resolved settings."""

    root: str
    state: str
    namespace: str
    snapshotter: str
    data: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    read_only: bool = False

    def section(self, *path: str) -> dict[str, Any]:
        d: Any = self.data
        for p in path:
            d = d.get(p, {})
        return d


def _merge(base: dict[str, Any], over: dict[str, Any], where: str) -> None:
    for k, v in over.items():
        if k not in base:
            raise InvalidArgument(f"config {where}{k}: unknown key",
                                  hint="compare with 'hold config default'")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise InvalidArgument(f"config {where}{k}: must be a table")
            _merge(base[k], v, f"{where}{k}.")
        else:
            if type(base[k]) is not type(v) and not (
                    isinstance(base[k], float) and isinstance(v, int)):
                raise InvalidArgument(
                    f"config {where}{k}: expected {type(base[k]).__name__}, "
                    f"got {type(v).__name__}")
            base[k] = v


def _env_flag(name: str) -> bool | None:
    """A boolean environment variable (1/true/yes/on or 0/false/no/off); None when unset."""
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidArgument(f"environment {name}={text!r}: not a boolean",
                          hint="use 1 or 0")


def load(path: str | None = None, *, root: str | None = None, state: str | None = None,
         namespace: str | None = None, snapshotter: str | None = None,
         read_only: bool | None = None) -> Config:
    """Resolve the configuration. ``path=None`` reads the default file when it exists.

    ``read_only``: True from ``--read-only``; None leaves it to ``HOLD_READ_ONLY`` and then
    the file's ``read_only``.
    """
    data = _defaults()
    source = ""
    explicit = path is not None
    path = path or os.environ.get("HOLD_CONFIG") or default_config_file()
    if os.path.exists(path):
        import tomllib

        try:
            with open(path, "rb") as f:
                _merge(data, tomllib.load(f), "")
        except ValueError as exc:  # TOMLDecodeError, or UnicodeDecodeError: not UTF-8
            raise InvalidArgument(f"config {path}: {exc}") from exc
        except OSError as exc:  # a directory, unreadable
            raise InvalidArgument(f"config {path}: cannot read: {exc.strerror}") from exc
        source = path
    elif explicit:
        raise InvalidArgument(f"config {path}: no such file",
                              hint="write one with 'hold config default > FILE'")
    env = os.environ
    if read_only is None:
        read_only = _env_flag("HOLD_READ_ONLY")
    if read_only is None:
        read_only = bool(data["read_only"])
    return Config(
        root=root or env.get("HOLD_ROOT") or data["root"],
        state=state or env.get("HOLD_STATE") or data["state"],
        namespace=namespace or env.get("HOLD_NAMESPACE") or data["namespace"],
        snapshotter=snapshotter or env.get("HOLD_SNAPSHOTTER") or data["snapshotter"],
        data=data,
        source=source,
        read_only=read_only,
    )
