"""The mount records under ``<state>/mounts``: what ``hold images mount`` and ``hold snapshots
mount`` mounted where, so that unmount, GC (which keeps every recorded snapshot) and ``hold
snapshots rm`` (which refuses one) know.

One JSON file per target, ``<state>/mounts/<id>.json``, with ``id`` derived from the target
alone (:func:`mount_id`), written atomically. Unreadable records are skipped by
:func:`read_records` (nothing here may fail a GC) and reported by ``hold images mounts``.
"""

from __future__ import annotations

import json
import os
import re

from cargohold._fsutil import atomic_write, makedirs
from cargohold._record import asdict, field, record
from cargohold._sha import sha256_hex
from cargohold.errors import FailedPrecondition

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@record
class MountRecord:
    """What ``<state>/mounts/<id>.json`` holds."""

    id: str
    target: str
    image: str
    manifest: str
    chain_id: str
    snapshot: str
    snapshotter: str
    namespace: str
    lease: str
    rw: bool
    pid: int
    time: str
    mounts: list[str] = field(default_factory=list)
    mounted: bool = True
    kind: str = "image"  # "image" (hold images mount) or "snapshot" (hold snapshots mount)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def mount_id(target: str) -> str:
    """The lease id, snapshot key and record name for ``target`` (an absolute path).

    A readable slug of the path plus a hash of it, so ``/a/b`` and ``/a-b`` differ, within
    the 76 characters a lease id may have.
    """
    slug = re.sub(r"[^A-Za-z0-9]+", "-", target).strip("-")[-48:].strip("-") or "root"
    return f"mount-{slug}-{sha256_hex(target.encode())[:10]}"


def records_dir(state: str) -> str:
    return os.path.join(state, "mounts")


def record_path(state: str, mid: str) -> str:
    return os.path.join(records_dir(state), f"{mid}.json")


def read_record(state: str, target: str) -> MountRecord | None:
    """The record of ``target``, or None."""
    try:
        with open(record_path(state, mount_id(os.path.abspath(target)))) as f:
            return MountRecord(**json.load(f))
    except (FileNotFoundError, NotADirectoryError):  # no record (a state path that is a file
        return None  # holds none: writing one says so)
    except (ValueError, TypeError) as exc:
        raise FailedPrecondition(f"mount record of {target}: unreadable ({exc})",
                                 hint="unmount it with 'hold images unmount' to clean up") \
            from exc


def write_record(state: str, rec: MountRecord) -> None:
    makedirs(records_dir(state), 0o700)
    # reserve_ok: marking a record unmounted must work on a full disk (it replaces a record
    # of the same size; a new record never takes the reserve).
    atomic_write(record_path(state, rec.id), json.dumps(rec.to_json(), indent=1).encode(),
                 0o600, reserve_ok=True)


def read_records(state: str) -> list[MountRecord]:
    """Every readable mount record under ``<state>/mounts`` (unreadable ones are skipped:
    :func:`list_mounts` shows them; nothing here may fail a GC).
    """
    d = os.path.join(state, "mounts")
    try:
        names = sorted(os.listdir(d))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for n in names:
        if not n.endswith(".json"):
            continue
        try:
            with open(os.path.join(d, n)) as f:
                out.append(MountRecord(**json.load(f)))
        except (OSError, ValueError, TypeError):
            continue
    return out
