"""``hold airgap bundle OUT REF...``: one archive that carries images into an air gap.

The bundle is an OCI image-layout tar — ``index.json`` lists every image by name
(``io.containerd.image.name``) with its digest, and every blob is stored under its checksum
(``blobs/sha256/<hex>``, re-hashed while written) — plus docker's ``manifest.json``, so
``hold airgap seed``, ``hold images import``, ``ctr images import`` and ``docker load`` all read
it. ``OUT`` ending in ``.gz``/``.tgz`` or ``.zst`` is compressed (see
:mod:`cargohold.images.exporter`, which writes it: deterministic, never half-written); hold
and k3s read those as they are, containerd 1.6's ``ctr images import`` only through a pipe
from ``gzip -dc``/``zstd -dc`` (the result's notes say so).

An image the store lacks — or lacks the asked-for platforms of — is pulled first (content
only, no unpack) through the given :class:`~.registry.Registry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cargohold._record import field, record
from cargohold.errors import NotFound
from cargohold.fetch.pull import Puller, PullOptions
from cargohold.fetch.registry import Registry
from cargohold.images import refs as image_refs
from cargohold.images.progress import Progress
from cargohold.types import Platform

if TYPE_CHECKING:
    from cargohold.client import Client


@record
class BundleResult:
    """What went into the bundle."""

    path: str
    images: list[dict[str, str]] = field(default_factory=list)  # name, digest
    pulled: list[str] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "images": self.images, "pulled": self.pulled,
                "blobs": self.blobs, "bytes": self.bytes, "notes": self.notes}


def bundle(client: Client, registry: Registry, out: str, refs: list[str], *,
           platforms: list[Platform] | None = None, all_platforms: bool = False,
           progress: Progress | None = None) -> BundleResult:
    """Write the images ``refs`` (pulling what is missing) to the archive ``out``.

    Raises what pull and export raise; ``out`` is untouched on any error.
    """
    from cargohold.images import exporter
    from cargohold.metadata import images as records

    progress = progress or Progress()
    names = [image_refs.normalize(r) for r in refs]
    res = BundleResult(out)
    popts = PullOptions(platforms=list(platforms or []), all_platforms=all_platforms,
                        unpack=False)
    puller = Puller(client, registry, progress=progress)
    with client.db.view() as tx:
        absent = [n for n in names if not _exists(tx, client.namespace, n, records)]
    for n in absent:
        puller.pull(n, popts)
        res.pulled.append(n)
    eopts = exporter.ExportOptions(platforms=platforms or None, all_platforms=all_platforms)
    try:
        exporter.plan_export(client.content, exporter.resolve(client, names), eopts)
    except exporter.MissingContent:
        # Present, but not with every platform asked for: fetch those, then plan again.
        for n in names:
            if n not in res.pulled:
                puller.pull(n, popts)
                res.pulled.append(n)
    done = exporter.export(client, out, names, eopts, progress=progress)
    res.path = done.path
    with client.db.view() as tx:
        for n in names:
            res.images.append({"name": n,
                               "digest": records.get(tx, client.namespace, n).target.digest})
    res.blobs = len(done.plan.blobs)
    res.bytes = done.plan.total
    res.notes = list(done.plan.notes)
    comp = exporter.compression_of(out)
    if comp != "none":
        # containerd 1.6's importer reads a plain tar only ("invalid tar header" otherwise).
        res.notes.append(f"{out} is {comp} compressed: for containerd's ctr, decompress it on "
                         f"the way: {comp} -dc {out} | ctr images import -")
    return res


def _exists(tx: Any, ns: str, name: str, records: Any) -> bool:
    try:
        records.get(tx, ns, name)
        return True
    except NotFound:
        return False
