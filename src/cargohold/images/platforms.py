"""Platforms: parse ``os/arch[/variant]``, the host's own, and matching.

Matching is strict on OS and architecture (``linux/amd64`` never silently takes ``linux/386``,
the loose matching containerd users were bitten by) and compatible on variants: an arm64/v8
host runs ``arm64`` and ``arm64/v8``; an arm/v7 host runs v7, v6 and v5. Descriptors without a
platform match everything (single-platform images); ``unknown/unknown`` entries (BuildKit
attestations) match nothing and are never a platform anyone asked for.
"""

from __future__ import annotations

import os

from cargohold.errors import InvalidArgument
from cargohold.types import Platform

_ARCH = {"x86_64": "amd64", "x86-64": "amd64", "amd64": "amd64", "aarch64": "arm64",
         "arm64": "arm64", "armhf": "arm", "armel": "arm", "arm": "arm", "i386": "386",
         "i686": "386", "386": "386", "ppc64le": "ppc64le", "s390x": "s390x",
         "riscv64": "riscv64"}


def normalize(p: Platform) -> Platform:
    os_ = p.os.lower()
    arch = _ARCH.get(p.architecture.lower(), p.architecture.lower())
    variant = p.variant.lower()
    if arch == "arm64" and variant in ("", "8", "v8"):
        variant = ""
    if arch == "amd64" and variant == "v1":
        variant = ""
    if variant.isdigit():
        variant = f"v{variant}"
    if arch == "arm" and not variant:
        variant = "v7"
    return Platform(os_, arch, variant, p.os_version)


def parse(text: str) -> Platform:
    """``linux/amd64``, ``linux/arm64/v8``, ``amd64`` (host OS) or ``linux`` (host arch)."""
    parts = [x for x in text.strip().split("/")]
    if not parts or any(not x for x in parts) or len(parts) > 3:
        raise InvalidArgument(f"platform {text!r}: not understood",
                              hint="write it like linux/amd64 or linux/arm64/v8")
    host = default()
    if len(parts) == 1:
        if parts[0] in ("linux", "windows", "darwin", "freebsd"):
            return normalize(Platform(parts[0], host.architecture, host.variant))
        return normalize(Platform(host.os, parts[0]))
    return normalize(Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else ""))


def default() -> Platform:
    """This host's platform."""
    machine = os.uname().machine.lower()  # platform.machine(), without importing it
    arch = _ARCH.get(machine, machine)
    variant = ""
    if arch == "arm":
        variant = "v7"
    return Platform(os.uname().sysname.lower(), arch, variant)


def is_unknown(p: Platform | None) -> bool:
    return p is not None and p.os == "unknown" and p.architecture == "unknown"


class Matcher:
    """Matches descriptors' platforms against a set of wanted ones (or all)."""

    def __init__(self, wanted: list[Platform] | None = None, *, all_platforms: bool = False):
        self.all = all_platforms
        self.wanted = [normalize(p) for p in (wanted or [default()])]

    def match(self, p: Platform | None) -> bool:
        if p is None:
            return True
        if is_unknown(p):
            return False
        if self.all:
            return True
        q = normalize(p)
        return any(self._one(w, q) for w in self.wanted)

    @staticmethod
    def _one(w: Platform, q: Platform) -> bool:
        if w.os != q.os or w.architecture != q.architecture:
            return False
        if not q.variant or w.variant == q.variant:
            return True
        if w.architecture == "arm" and w.variant.startswith("v") and q.variant.startswith("v"):
            try:
                return int(q.variant[1:]) <= int(w.variant[1:])
            except ValueError:
                return False
        return False

    def rank(self, p: Platform | None) -> int:
        """Lower is better: exact variant first, then older compatible variants."""
        if p is None:
            return 50
        q = normalize(p)
        for i, w in enumerate(self.wanted):
            if self._one(w, q):
                return i * 100 + (0 if q.variant == w.variant else 10)
        return 10_000

    def describe(self) -> str:
        return "all platforms" if self.all else ", ".join(map(str, self.wanted))
