"""The stale-mount sweep: mount records whose target is no longer mounted are cleaned up.

``hold images mount`` records each mount under ``<state>/mounts``. When the target stops
being a mount point without ``hold images unmount`` (a reboot, a manual ``umount``, a
container runtime that cleaned up), the record, its lease and its snapshot stay and keep GC
from taking the snapshot. :func:`sweep` finds such records (``list_mounts``' "not mounted")
and does what ``hold images unmount TARGET`` would: a read-only mount's snapshot, lease and
record are removed; a read-write mount keeps its snapshot (its changes) and its record is
marked unmounted, so a later mount of the same target picks it up again.

A record that is mounted, already marked unmounted, or that a concurrent unmount removes
first, is left alone. A repeat finds nothing more to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cargohold._record import field, record
from cargohold.errors import CargoholdError

if TYPE_CHECKING:
    from cargohold.client import Client


@record
class SweepResult:
    """What one sweep did: targets cleaned up, and errors by target."""

    cleaned: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # read-write: snapshot kept, unmounted
    errors: list[str] = field(default_factory=list)


def sweep(client: Client) -> SweepResult:
    """Clean up every mount record whose target is no longer mounted (see the module)."""
    from cargohold import mount as kmount
    from cargohold.images.mount import unmount
    from cargohold.mount.records import read_records

    res = SweepResult()
    for rec in read_records(client.config.state):
        if not rec.mounted or kmount.is_mountpoint(rec.target):
            continue
        try:
            unmount(client, rec.target)
        except CargoholdError as exc:
            res.errors.append(f"{rec.target}: {exc}")
            continue
        (res.kept if rec.rw else res.cleaned).append(rec.target)
    return res
