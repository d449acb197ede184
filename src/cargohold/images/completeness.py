"""Whether an image is complete, judged per platform, from what the content store has.

A platform is complete when its manifest, config and every layer are in the namespace's content
store (:func:`platform_states`). A multi-platform image with only one platform present is a
normal thing to hold, not an error; attestation manifests (``unknown/unknown``) are listed as
such and never count against an image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cargohold._record import record
from cargohold.errors import CargoholdError, InvalidArgument, NotFound
from cargohold.images import mediatypes as mt
from cargohold.images import platforms as plat
from cargohold.images.manifest import (
    chain_ids,
    children,
    config_platform,
    diff_ids,
    parse_manifest,
)
from cargohold.types import Descriptor, Platform

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cargohold.store.protocols import Store

ATTESTATION_REF = "vnd.docker.reference.digest"


@record(frozen=True)
class PlatformState:
    """One manifest of an image, as the store holds it."""

    platform: str  # "linux/amd64"; "" when neither the index nor the config says
    manifest: str  # the manifest's digest
    missing: tuple[str, ...] = ()  # digests absent from the store (manifest, config, layers)
    manifest_missing: bool = False
    attestation: bool = False  # an unknown/unknown attestation manifest
    attests: str = ""  # for attestations: the manifest digest they describe
    chain_id: str = ""  # the top chain ID (needs the config)
    layers: int = 0
    size: int = 0  # manifest + config + layers, from the descriptors
    unpacked: bool | None = None  # None when not checked (or the snapshotter cannot run)
    media_type: str = ""  # the manifest's
    required_size: int = 0  # config + layers (what ctr's check counts), 0: manifest missing
    present_size: int = 0  # of those, the bytes the store has

    @property
    def complete(self) -> bool:
        return not self.missing

    def counts(self) -> tuple[int, int] | None:
        """(present, required) blobs as ctr's check counts them (config and layers); None
        when the manifest is missing, so what it requires is unknown.
        """
        if self.manifest_missing:
            return None
        return self.layers + 1 - len(self.missing), self.layers + 1

    def check_status(self) -> str:
        """ctr's status words: ``complete (3/3)``, ``incomplete (2/3)``, ``unavailable (0/?)``."""
        c = self.counts()
        if c is None:
            return "unavailable (0/?)"
        return f"{'complete' if c[0] == c[1] else 'incomplete'} ({c[0]}/{c[1]})"

    def describe(self) -> str:
        """``complete``, ``manifest missing`` or ``N blobs missing``."""
        if self.manifest_missing:
            return "manifest missing"
        if not self.missing:
            return "complete"
        n = len(self.missing)
        return f"{n} blob{'s' if n != 1 else ''} missing"

    def to_json(self) -> dict[str, Any]:
        return {"platform": self.platform or "unknown", "manifest": self.manifest,
                "complete": self.complete, "status": self.describe(),
                "missing": list(self.missing), "attestation": self.attestation,
                "attests": self.attests or None, "chain_id": self.chain_id or None,
                "layers": self.layers, "size": self.size, "unpacked": self.unpacked,
                "check_status": self.check_status(), "required_size": self.required_size,
                "present_size": self.present_size}


def store_has(store: Store) -> Callable[[str], bool]:
    """A cached presence test for digests in ``store``."""
    cache: dict[str, bool] = {}

    def has(digest: str) -> bool:
        if digest not in cache:
            try:
                store.info(digest)
                cache[digest] = True
            except NotFound:
                cache[digest] = False
        return cache[digest]

    return has


def _platform_text(p: Platform | None) -> str:
    """``os/arch[/variant]``, or "" (no platform) when the OS or architecture is empty: what
    containerd records for a docker-archive config without one (``{"architecture":"",
    "os":"linux"}``) names no platform anything can match or parse.
    """
    return str(p) if p is not None and p.os and p.architecture else ""


def _manifest_state(store: Store, desc: Descriptor, has: Callable[[str], bool],
                    what: str) -> PlatformState:
    p = desc.platform
    attestation = plat.is_unknown(p)
    attests = desc.annotations.get(ATTESTATION_REF, "")
    if not has(desc.digest):
        return PlatformState(_platform_text(p), desc.digest, (desc.digest,), True,
                             attestation, attests, size=desc.size, media_type=desc.media_type)
    m = parse_manifest(store, desc, what)
    blobs = [m.config, *m.layers]
    missing = tuple(d.digest for d in blobs if not has(d.digest))
    required = sum(d.size for d in blobs)
    present = sum(d.size for d in blobs if has(d.digest))
    chain = ""
    if has(m.config.digest) and not attestation:
        if p is None:
            p = config_platform(store, m)
        try:
            ids = diff_ids(store, m.config, what)
            chain = chain_ids(ids)[-1] if ids else ""
        except CargoholdError:
            chain = ""
    return PlatformState(_platform_text(p), desc.digest, missing, False, attestation,
                         attests, chain, len(m.layers), desc.size + required,
                         media_type=desc.media_type, required_size=required,
                         present_size=present)


def platform_states(store: Store, target: Descriptor, *, what: str = "",
                    has: Callable[[str], bool] | None = None) -> list[PlatformState]:
    """Every manifest under ``target`` (nested indexes followed), with what is missing.

    An index blob that is itself missing yields one state with ``manifest_missing``. Raises
    InvalidArgument for a target that is neither an index nor a manifest, and Unsupported for
    Docker schema 1.
    """
    has = has or store_has(store)
    if mt.is_manifest(target.media_type):
        return [_manifest_state(store, target, has, what)]
    if not mt.is_index(target.media_type):
        mt.refuse_schema1(target.media_type, what or target.digest)
        raise InvalidArgument(f"{what or 'image'} {target.digest}: media type "
                              f"{target.media_type!r} is not an image manifest or index",
                              hint="only OCI/Docker manifests and indexes can be images")
    if not has(target.digest):
        return [PlatformState("", target.digest, (target.digest,), True, size=target.size,
                              media_type=target.media_type)]
    out: list[PlatformState] = []
    for d in children(store, target, what):
        if mt.is_index(d.media_type):
            out.extend(platform_states(store, d, what=what, has=has))
        elif mt.is_manifest(d.media_type):
            out.append(_manifest_state(store, d, has, what))
        # other artifacts in an index (signatures, SBOM blobs) are not platforms
    return out


def platform_list(states: Sequence[PlatformState]) -> list[str]:
    """The distinct real platforms, in index order (attestations left out)."""
    seen: list[str] = []
    for s in states:
        if not s.attestation and s.platform and s.platform not in seen:
            seen.append(s.platform)
    return seen
