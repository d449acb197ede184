"""Everything about mounts, in one package.

- :mod:`.kernel`: mounting and unmounting :class:`~cargohold.types.Mount` lists (the calls);
- :mod:`.overlay`: overlay mounts that survive long lower chains (the new mount API);
- :mod:`.info`: what is mounted (``/proc/self/mountinfo``) and which mounts use a directory;
- :mod:`.records`: the records under ``<state>/mounts`` that ``hold images mount`` and
  ``hold snapshots mount`` keep, which GC and ``snapshots rm`` honour.

The names most callers need are importable from the package itself.
"""

from __future__ import annotations

from cargohold.mount.info import MountEntry, MountUsers, is_mountpoint, mountinfo
from cargohold.mount.kernel import (
    MountError,
    libc,
    mount,
    mount_all,
    parse_options,
    read_only,
    temp_mount,
    unmount,
    unmount_all,
)

__all__ = ["MountEntry", "MountError", "MountUsers", "is_mountpoint", "libc", "mount",
           "mount_all", "mountinfo", "parse_options", "read_only", "temp_mount", "unmount",
           "unmount_all"]
