"""Image records: a name pointing at a target descriptor, with labels and times."""

from __future__ import annotations

import json
from collections.abc import Sequence

from cargohold._record import field, record, replace
from cargohold.errors import AlreadyExists, InvalidArgument, NotFound
from cargohold.filters import Filter
from cargohold.metadata import namespaces
from cargohold.metadata.db import Tx
from cargohold.metadata.schema import ns_bucket, ns_path
from cargohold.types import Descriptor, apply_field_paths, now_ns, validate_labels


@record(frozen=True)
class Image:
    """An image record."""

    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0


def _path(ns: str, name: str, *rest: str) -> bytes:
    return ns_path(ns, "images", name, *rest)


def _validate(image: Image) -> None:
    if not image.name:
        raise InvalidArgument("image name '': empty")
    t = image.target
    if not t.media_type or t.size <= 0:
        raise InvalidArgument(f"image {image.name}: target needs a media type and a size > 0")


def _read(tx: Tx, ns: str, name: str) -> Image | None:
    raw = tx.get(_path(ns, name, "target"))
    if raw is None:
        return None
    return Image(name, Descriptor.from_json(json.loads(raw)), tx.read_labels(_path(ns, name)),
                 tx.get_int(_path(ns, name, "createdat")),
                 tx.get_int(_path(ns, name, "updatedat")))


def _write(tx: Tx, ns: str, image: Image) -> None:
    tx.put(_path(ns, image.name, "target"), json.dumps(image.target.to_json(), sort_keys=True))
    tx.put(_path(ns, image.name, "createdat"), image.created_at)
    tx.put(_path(ns, image.name, "updatedat"), image.updated_at)
    tx.write_labels(_path(ns, image.name), validate_labels(image.labels), replace=True)


def get(tx: Tx, ns: str, name: str) -> Image:
    img = _read(tx, ns, name)
    if img is None:
        raise NotFound(f"image {name}: not found", hint="list images with 'hold images ls'")
    return img


def list_images(tx: Tx, ns: str, filters: Sequence[str] = ()) -> list[Image]:
    flt = Filter(filters)
    out = []
    for name in tx.children(ns_bucket(ns, "images")):
        img = _read(tx, ns, name)
        if img is None:
            continue
        if flt and not flt.match(_adaptor(img)):
            continue
        out.append(img)
    return out


def _adaptor(img: Image):  # noqa: ANN202 - a filters.Adaptor
    def get(path: tuple[str, ...]) -> tuple[str, bool]:
        if path[0] == "labels":
            k = ".".join(path[1:])
            return img.labels.get(k, ""), k in img.labels
        if path[0] == "name":
            return img.name, True
        if path[0] == "target" and len(path) == 2:
            v = {"digest": img.target.digest, "mediatype": img.target.media_type}.get(path[1])
            return (v or "", v is not None)
        if path[0] == "annotations":
            k = ".".join(path[1:])
            return img.target.annotations.get(k, ""), k in img.target.annotations
        return "", False

    return get


def create(tx: Tx, ns: str, image: Image) -> Image:
    """Create a record; AlreadyExists when the name is taken."""
    _validate(image)
    if tx.exists(_path(ns, image.name, "target")):
        raise AlreadyExists(f"image {image.name}: already exists")
    namespaces.ensure(tx, ns)
    now = now_ns()
    image = replace(image, created_at=now, updated_at=now)
    _write(tx, ns, image)
    return image


def update(tx: Tx, ns: str, image: Image, fieldpaths: Sequence[str] = ()) -> Image:
    """Update target and/or labels. No fieldpaths replaces target and labels."""
    cur = get(tx, ns, image.name)
    labels, named = apply_field_paths(cur.labels, image.labels, fieldpaths,
                                      subject=f"image {image.name}",
                                      default=("target", "labels"), other=("target",))
    target = image.target if "target" in named else cur.target
    new = Image(cur.name, target, labels, cur.created_at, now_ns())
    _validate(new)
    _write(tx, ns, new)
    return new


def upsert(tx: Tx, ns: str, image: Image) -> Image:
    """Create, or point an existing name at a new target (labels merged)."""
    cur = _read(tx, ns, image.name)
    if cur is None:
        return create(tx, ns, image)
    return update(tx, ns, Image(image.name, image.target, {**cur.labels, **image.labels}),
                  ("target", "labels"))


def delete(tx: Tx, ns: str, name: str) -> None:
    if not tx.exists(_path(ns, name, "target")):
        raise NotFound(f"image {name}: not found", hint="list images with 'hold images ls'")
    tx.delete_tree(_path(ns, name))
