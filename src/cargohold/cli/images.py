"""``hold images`` (alias ``i``): the group; each verb lives in its own module, loaded lazily.

Verbs and their modules: ls/check/tag/rm/label/inspect -> images_manage; import ->
images_import; export -> images_export; mount/unmount/mounts -> images_mount; pack ->
images_pack; pull/push -> images_pull.
"""

from __future__ import annotations

import importlib

import click

VERBS: dict[str, str] = {
    "ls": "images_manage", "check": "images_manage", "tag": "images_manage",
    "rm": "images_manage", "label": "images_manage", "inspect": "images_manage",
    "import": "images_import", "export": "images_export",
    "mount": "images_mount", "unmount": "images_mount", "mounts": "images_mount",
    "pack": "images_pack", "pull": "images_pull", "push": "images_pull",
}


class _Verbs(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [v for v in VERBS if self.get_command(ctx, v) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        mod = VERBS.get(name)
        if mod is None:
            return None
        full = f"cargohold.cli.{mod}"
        try:
            module = importlib.import_module(full)
        except ModuleNotFoundError as exc:
            if exc.name == full:
                return None
            raise
        return getattr(module, name.replace("-", "_") + "_cmd", None)


@click.group(cls=_Verbs)
def images() -> None:
    """Import, export, unpack, mount and manage images."""
