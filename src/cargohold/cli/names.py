"""The names ``hold`` answers to: its commands, their modules, and ctr's aliases (no click).

Shared by the click groups (:mod:`cargohold.cli.groups`, :mod:`cargohold.cli.root`) and the
fast parser (:mod:`cargohold.cli.fast`), so both resolve ``hold i list`` the same way.
"""

from __future__ import annotations

# name -> (module, attribute). A module that does not exist yet is simply not listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "images": ("cargohold.cli.images", "images"),
    "content": ("cargohold.cli.content", "content"),
    "snapshots": ("cargohold.cli.snapshots", "snapshots"),
    "leases": ("cargohold.cli.leases", "leases"),
    "namespaces": ("cargohold.cli.namespaces", "namespaces"),
    "containers": ("cargohold.cli.containers", "containers"),
    "tasks": ("cargohold.cli.tasks", "tasks"),
    "run": ("cargohold.cli.run", "run"),
    "gc": ("cargohold.cli.gc", "gc"),
    "fsck": ("cargohold.cli.fsck", "fsck"),
    "df": ("cargohold.cli.df", "df"),
    "plugins": ("cargohold.cli.plugins", "plugins"),
    "config": ("cargohold.cli.config", "config"),
    "hosts": ("cargohold.cli.hosts", "hosts"),
    "airgap": ("cargohold.cli.airgap", "airgap"),
    "serve": ("cargohold.cli.serve", "serve"),
    "status": ("cargohold.cli.status", "status"),
    "version": ("cargohold.cli.version", "version"),
}

# The noun aliases of `ctr -h` ("images, image, i", "namespaces, namespace, ns", ...).
ALIASES: dict[str, tuple[str, ...]] = {
    "images": ("image", "i"),
    "snapshots": ("snapshot",),
    "leases": ("lease",),
    "namespaces": ("namespace", "ns"),
    "containers": ("container", "c"),
    "tasks": ("task", "t"),
    "plugins": ("plugin",),
    "hosts": ("host",),
}

# The verb aliases `ctr` 1.6 prints in `ctr images|content|snapshots|leases -h` ("list, ls",
# "delete, del, remove, rm"). A group with other aliases (namespaces: only "remove, rm") passes
# its own to its Group.
VERB_ALIASES: dict[str, tuple[str, ...]] = {
    "ls": ("list",),
    "rm": ("delete", "del", "remove"),
}

_COMMAND_OF = {a: name for name, al in ALIASES.items() for a in al}
_VERB_OF = {a: name for name, al in VERB_ALIASES.items() for a in al}


def canonical_command(word: str) -> str:
    """The command a top-level word names (``i`` -> ``images``; unknown words as they are)."""
    return word if word in COMMANDS else _COMMAND_OF.get(word, word)


def canonical_verb(group: str, word: str) -> str:
    """The verb ``word`` names in ``images`` or ``content`` (``list`` -> ``ls``), the groups
    that take :data:`VERB_ALIASES`; other groups' words come back as they are.
    """
    if group in ("images", "content"):
        return _VERB_OF.get(word, word)
    return word
