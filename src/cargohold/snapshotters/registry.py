"""Snapshotter backends by name, imported only when asked for.

Importing this module imports no backend, so a host without zfs or device-mapper (or a backend
module that does not exist yet) costs nothing until that backend is named. A backend is a class
in the module named in :data:`BACKENDS` with:

- ``from_config(root, section) -> Snapshotter`` (a classmethod): build from the backend's
  config section (``[snapshotters.<name>]``, a dict; may be empty). It raises Unsupported,
  with the reason, when the host cannot run it.
- optionally ``check_support(root, section) -> None`` (a staticmethod or classmethod): the same
  verdict without creating anything, used by :func:`probe` for ``hold plugins ls``.

To add a backend (zfs, devmapper), write the class on top of :mod:`.storage` (and, for one
object per snapshot, :class:`._common.DirSnapshotter`), and it is picked up from here.
"""

from __future__ import annotations

import importlib
import os

from cargohold.errors import CargoholdError, InvalidArgument, Unsupported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cargohold.snapshotters.protocols import Snapshotter

BACKENDS: dict[str, str] = {
    "overlayfs": "cargohold.snapshotters.overlayfs:OverlayFS",
    "native": "cargohold.snapshotters.native:Native",
    "btrfs": "cargohold.snapshotters.btrfs:Btrfs",
    "zfs": "cargohold.snapshotters.zfs:ZFS",
    "devmapper": "cargohold.snapshotters.devmapper:Devmapper",
}

DEFAULT = "overlayfs"


class NotBuilt(Unsupported):
    """The backend's module does not exist in this build."""


def load(name: str) -> type:
    """The backend class for ``name``.

    Raises InvalidArgument for an unknown name and NotBuilt when its module is missing.
    """
    try:
        spec = BACKENDS[name]
    except KeyError:
        raise InvalidArgument(f"snapshotter {name!r}: unknown",
                              hint="choose one of " + ", ".join(BACKENDS)) from None
    mod_name, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name != mod_name:
            raise  # a dependency of the backend is missing: a real error, not "not built"
        raise NotBuilt(f"snapshotter {name}: not built yet") from exc
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise NotBuilt(f"snapshotter {name}: {spec} does not exist") from None


def default_root(hold_root: str, name: str) -> str:
    """Where backend ``name`` keeps its files by default: ``<hold root>/snapshots/<name>``."""
    return os.path.join(hold_root, "snapshots", name)


def open_snapshotter(name: str, root: str,
                     config: dict[str, Any] | None = None) -> Snapshotter:
    """Open backend ``name`` at ``root`` with its config section (``[snapshotters.<name>]``).

    Raises what :func:`load` raises, and Unsupported (with the reason) when this host cannot
    run the backend.
    """
    return load(name).from_config(root, dict(config or {}))


def probe(name: str, root: str, config: dict[str, Any] | None = None) -> tuple[str, str]:
    """Whether backend ``name`` can run here: ``("ok", what passed)``, ``("skip", why)`` or
    ``("error", why)``.

    "skip" means this host or build cannot have it (not built, kernel or tool missing, wrong
    filesystem); "error" means it should work but failed.
    """
    try:
        cls = load(name)
        check = getattr(cls, "check_support", None)
        if check is not None:
            check(root, dict(config or {}))
        else:
            cls.from_config(root, dict(config or {})).close()
    except Unsupported as exc:
        return "skip", str(exc)
    except CargoholdError as exc:
        return "error", str(exc)
    except OSError as exc:
        return "error", f"snapshotter {name}: {exc}"
    return "ok", f"support check passed for {root}"


def probe_all(hold_root: str, sections: dict[str, dict[str, Any]] | None = None
              ) -> list[tuple[str, str, str]]:
    """``(name, status, reason)`` for every backend, at its default root."""
    sections = sections or {}
    return [(n, *probe(n, default_root(hold_root, n), sections.get(n)))
            for n in BACKENDS]
