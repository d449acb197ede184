"""``hold images`` (alias ``i``): the group; each verb lives in its own module, loaded lazily.

Verbs and their modules: ls/check/tag/rm/label/inspect -> images_manage; import ->
images_import; export -> images_export; mount/unmount/mounts -> images_mount; pack ->
images_pack; pull/push -> images_pull. Aliases as ctr's: list; delete, del, remove.
"""

from __future__ import annotations

import click

from cargohold.cli.groups import Group

VERBS: dict[str, str] = {
    "ls": "images_manage", "check": "images_manage", "tag": "images_manage",
    "rm": "images_manage", "label": "images_manage", "inspect": "images_manage",
    "import": "images_import", "export": "images_export",
    "mount": "images_mount", "unmount": "images_mount", "mounts": "images_mount",
    "pack": "images_pack", "pull": "images_pull", "push": "images_pull",
}


@click.group(cls=Group, lazy={v: (f"cargohold.cli.{m}", f"{v}_cmd") for v, m in VERBS.items()})
def images() -> None:
    """Import, export, unpack, mount and manage images."""
