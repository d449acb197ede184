"""Reading images out of a content store: indexes, manifests, configs, chain IDs, GC labels.

Everything here reads blobs through the :class:`~cargohold.store.api.Store` protocol and
parses JSON defensively: a malformed blob raises an error naming the image and the digest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from cargohold._record import field, record
from cargohold._sha import sha256_hex
from cargohold.errors import CargoholdError, MalformedData, NotFound
from cargohold.images import mediatypes as mt
from cargohold.images.platforms import Matcher
from cargohold.types import LABEL_GC_REF_CONTENT, LABEL_GC_REF_SNAPSHOT, Descriptor, Platform

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cargohold.store.protocols import Store

MAX_JSON = 20 << 20  # manifests and configs are small; refuse to buffer a giant "JSON" blob


def loads(data: bytes | str) -> Any:
    """``json.loads`` for bytes from outside (archives, registries, pushes): a document nested
    deeper than Python's recursion limit (``[[[[...``, a few hundred KB) raises ValueError
    like any other malformed JSON, instead of RecursionError.
    """
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def read_json(store: Store, desc: Descriptor, what: str = "") -> dict[str, Any]:
    """The parsed JSON of a blob; errors name ``what`` (e.g. the image) and the digest."""
    label = f"{what} " if what else ""
    if desc.size > MAX_JSON:
        raise MalformedData(f"{label}blob {desc.digest}: {desc.size} bytes is too big for "
                              f"a {desc.media_type or 'JSON'} document")
    try:
        with store.reader(desc.digest) as r:
            data = r.read()
    except NotFound as exc:
        raise NotFound(f"{label}content {desc.digest} ({desc.media_type}): not found",
                       hint=exc.hint) from exc
    try:
        doc = loads(data)
    except ValueError as exc:
        raise MalformedData(f"{label}blob {desc.digest}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise MalformedData(f"{label}blob {desc.digest}: JSON is not an object")
    mt.refuse_schema1(str(doc.get("mediaType", "")), f"{label}manifest {desc.digest}")
    if doc.get("schemaVersion") == 1:
        mt.refuse_schema1(mt.DOCKER_SCHEMA1, f"{label}manifest {desc.digest}")
    return doc


def descriptors(doc: dict[str, Any], key: str, where: str) -> list[Descriptor]:
    items = doc.get(key) or []
    if not isinstance(items, list):
        raise MalformedData(f"{where}: '{key}' is not a list")
    return [Descriptor.from_json(d) for d in items]


@record
class Manifest:
    """An image manifest: its descriptor, config descriptor and layers."""

    desc: Descriptor
    config: Descriptor
    layers: list[Descriptor]
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)


def parse_manifest(store: Store, desc: Descriptor, what: str = "") -> Manifest:
    doc = read_json(store, desc, what)
    where = f"{what + ' ' if what else ''}manifest {desc.digest}"
    if "config" not in doc:
        raise MalformedData(f"{where}: has no config")
    return Manifest(desc, Descriptor.from_json(doc["config"]),
                    descriptors(doc, "layers", where), desc.platform,
                    dict(doc.get("annotations") or {}))


def children(store: Store, desc: Descriptor, what: str = "") -> list[Descriptor]:
    """The direct children of an index or manifest (none for configs and layers)."""
    if mt.is_index(desc.media_type):
        return descriptors(read_json(store, desc, what), "manifests",
                           f"index {desc.digest}")
    if mt.is_manifest(desc.media_type):
        m = parse_manifest(store, desc, what)
        return [m.config, *m.layers]
    mt.refuse_schema1(desc.media_type, f"{what} {desc.digest}".strip())
    return []


def manifests(store: Store, target: Descriptor, matcher: Matcher, what: str = ""
              ) -> list[Descriptor]:
    """The image manifests under ``target`` whose platform matches, best first."""
    if mt.is_manifest(target.media_type):
        return [target]
    if not mt.is_index(target.media_type):
        mt.refuse_schema1(target.media_type, what or target.digest)
        raise MalformedData(f"{what or 'target'} {target.digest}: media type "
                              f"{target.media_type!r} is not an image manifest or index")
    out: list[Descriptor] = []
    for d in children(store, target, what):
        if mt.is_index(d.media_type) and matcher.match(d.platform):
            out.extend(manifests(store, d, matcher, what))
        elif mt.is_manifest(d.media_type) and matcher.match(d.platform):
            out.append(d)
    out.sort(key=lambda d: matcher.rank(d.platform))
    return out


def config_platform(store: Store, m: Manifest) -> Platform | None:
    """The platform a manifest's config declares (for manifests listed without one)."""
    try:
        cfg = read_json(store, m.config)
    except CargoholdError:
        return None
    if not cfg.get("os"):
        return None
    return Platform(str(cfg.get("os", "")), str(cfg.get("architecture", "")),
                    str(cfg.get("variant", "")), str(cfg.get("os.version", "")))


def rootfs_diff_ids(cfg: dict[str, Any]) -> list[str] | None:
    """``rootfs.diff_ids`` of a parsed image config, or None when it has no such list (a
    ``rootfs`` that is not an object included: the config comes from outside).
    """
    rootfs = cfg.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    return [str(i) for i in ids] if isinstance(ids, list) else None


def diff_ids(store: Store, config: Descriptor, what: str = "") -> list[str]:
    ids = rootfs_diff_ids(read_json(store, config, what))
    if ids is None:
        raise MalformedData(f"{what} config {config.digest}: no rootfs.diff_ids")
    return ids


def chain_ids(ids: list[str]) -> list[str]:
    """OCI chain IDs: ``chain[0] = diff[0]``, ``chain[n] = sha256(chain[n-1] + " " + diff[n])``."""
    out: list[str] = []
    for d in ids:
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + sha256_hex(f"{out[-1]} {d}".encode()))
    return out


def child_gc_labels(desc: Descriptor, kids: list[Descriptor]) -> dict[str, str]:
    """containerd's client labels that make a parent blob keep its children alive.

    index -> ``gc.ref.content.m.<i>``; manifest -> ``gc.ref.content.config`` and
    ``gc.ref.content.l.<i>``; anything else -> ``gc.ref.content.<i>``.
    """
    labels: dict[str, str] = {}
    if mt.is_index(desc.media_type):
        for i, k in enumerate(kids):
            labels[f"{LABEL_GC_REF_CONTENT}.m.{i}"] = k.digest
    elif mt.is_manifest(desc.media_type):
        layer_i = 0
        for k in kids:
            if mt.is_config(k.media_type) or k is kids[0]:
                labels[f"{LABEL_GC_REF_CONTENT}.config"] = k.digest
            else:
                labels[f"{LABEL_GC_REF_CONTENT}.l.{layer_i}"] = k.digest
                layer_i += 1
    else:
        for i, k in enumerate(kids):
            labels[f"{LABEL_GC_REF_CONTENT}.{i}"] = k.digest
    return labels


def snapshot_gc_label(snapshotter: str, chain_id: str) -> dict[str, str]:
    """The label a config blob carries to keep its unpacked top snapshot alive."""
    return {f"{LABEL_GC_REF_SNAPSHOT}{snapshotter}": chain_id}


def walk(store: Store, target: Descriptor, matcher: Matcher,
         fn: Callable[[Descriptor, list[Descriptor]], None], what: str = "") -> None:
    """Visit ``target`` and every descriptor under it that ``matcher`` selects.

    ``fn(desc, children)`` is called parents-first; platform-filtered index entries are
    skipped (and their blobs never read).
    """
    stack = [target]
    seen: set[str] = set()
    while stack:
        d = stack.pop()
        if d.digest in seen:
            continue
        seen.add(d.digest)
        kids = children(store, d, what)
        if mt.is_index(d.media_type):
            kids = [k for k in kids if matcher.match(k.platform)]
        fn(d, kids)
        stack.extend(reversed(kids))


def iter_layers(m: Manifest) -> Iterator[Descriptor]:
    for layer in m.layers:
        if mt.is_layer(layer.media_type):
            yield layer
