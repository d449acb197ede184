"""``pack``: a one-layer image from a directory, so a user can make an image with no other tool.

What it writes (children before parents, all inside one lease so GC never sees a half image):

1. the layer: the directory tree as a tar (the differ's ``compare`` against an empty lower,
   read in place, never modified), gzip by default, labelled ``containerd.io/uncompressed``;
2. an OCI image config: ``os``/``architecture``/``variant`` of ``platform`` (the host's by
   default), ``rootfs.diff_ids``, one history entry, and the optional entrypoint, cmd, env,
   working dir and user;
3. an OCI image manifest labelled with containerd's GC child labels (config and layer);
4. optionally (``index=True``) an OCI index listing that manifest with its platform;
5. the image record ``ref`` pointing at the manifest (or index); an existing name is moved.

Reproducibility (decided here, documented in the CLI help): the config's ``created`` time and
the history entry use ``SOURCE_DATE_EPOCH`` when it is set, else the Unix epoch (1970-01-01),
never "now"; every JSON document is written with sorted keys and no spaces; tar entries come
sorted by name with whole-second mtimes, and the gzip header carries no time or name. Packing
an unchanged directory twice therefore gives the same layer, config, manifest and digest.
File mtimes, owners and modes are kept as they are on disk (they are the content).

Then, like ``ctr images import``, the image is unpacked onto the configured snapshotter
(``unpack=False`` skips it; an image packed for a platform this host cannot run is never
unpacked, and ``hold images mount`` unpacks on demand anyway). A crash before the record leaves
only leased blobs, which GC removes once the lease expires; a crash during the unpack leaves a
complete image that is not (fully) unpacked.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cargohold._record import field, record
from cargohold.errors import AlreadyExists, CargoholdError, InvalidArgument, NotFound
from cargohold.images import mediatypes as mt
from cargohold.images import platforms
from cargohold.images.manifest import child_gc_labels
from cargohold.metadata import images as image_records
from cargohold.metadata.images import Image
from cargohold.store.api import Info, Store
from cargohold.types import LABEL_UNCOMPRESSED, Descriptor, Mount, Platform, format_time

if TYPE_CHECKING:
    from cargohold.client import Client



@record
class PackOptions:
    """What to put in the image besides the files."""

    platform: Platform | None = None
    compression: str = "gzip"
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # labels of the image record
    index: bool = False
    unpack: bool = True


@record(frozen=True)
class PackResult:
    """What pack made: the image record and the descriptors under it."""

    image: Image
    manifest: Descriptor
    config: Descriptor
    layer: Descriptor
    diff_id: str
    chain_id: str = ""  # the unpacked top snapshot, "" when not unpacked


def created_time() -> str:
    """``SOURCE_DATE_EPOCH`` as RFC 3339 UTC, or the Unix epoch when unset."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    secs = 0
    if raw:
        try:
            secs = int(raw)
        except ValueError as exc:
            raise InvalidArgument(f"SOURCE_DATE_EPOCH {raw!r}: not a whole number of seconds",
                                  hint="unset it or set it to e.g. $(date +%s)") from exc
    return format_time(secs * 10**9).replace(".000000000Z", "Z")


def split_command(text: str | None) -> list[str] | None:
    """A command given as a JSON array (``["sh","-c","x"]``) or as shell words; None stays."""
    if text is None:
        return None
    t = text.strip()
    if t.startswith("["):
        try:
            v = json.loads(t)
        except ValueError as exc:
            raise InvalidArgument(f"command {text!r}: not a JSON array ({exc})") from exc
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise InvalidArgument(f"command {text!r}: must be a JSON array of strings")
        return v
    return shlex.split(t)


def canonical_json(doc: dict[str, Any]) -> bytes:
    """The bytes we store for a JSON document: sorted keys, no spaces, so digests repeat."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def write_blob(store: Store, data: bytes, media_type: str, labels: dict[str, str],
               *, ref_prefix: str = "pack") -> Descriptor:
    """Store ``data`` with ``labels``; a blob that exists already just gets the labels."""
    from cargohold.types import Digest

    digest = Digest.from_bytes(data)
    desc = Descriptor(media_type, digest, len(data))
    try:
        with store.writer(f"{ref_prefix}-{digest.hex}", total=len(data),
                          expected=digest) as w:
            if w.status().offset:
                w.truncate(0)
            w.write(data)
            w.commit(len(data), digest, labels)
            return desc
    except AlreadyExists:
        pass
    if labels:
        store.update(Info(digest, len(data), labels=labels), [f"labels.{k}" for k in labels])
    return desc


def image_config(diff_id: str, platform: Platform, opts: PackOptions) -> dict[str, Any]:
    """The OCI image config document of a packed image."""
    created = created_time()
    cfg: dict[str, Any] = {}
    if opts.entrypoint is not None:
        cfg["Entrypoint"] = opts.entrypoint
    if opts.cmd is not None:
        cfg["Cmd"] = opts.cmd
    if opts.env:
        cfg["Env"] = list(opts.env)
    if opts.workdir:
        cfg["WorkingDir"] = opts.workdir
    if opts.user:
        cfg["User"] = opts.user
    doc: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": created,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        # No source path here on purpose: the same tree packed from another directory
        # must give the same image.
        "history": [{"created": created, "created_by": "hold images pack"}],
    }
    if platform.variant:
        doc["variant"] = platform.variant
    return doc


def _check_dir(path: str) -> str:
    full = os.path.abspath(path)
    if not os.path.isdir(full):
        raise NotFound(f"directory {path}: not found" if not os.path.exists(full)
                       else f"directory {path}: not a directory",
                       hint="pack takes the directory that becomes the image's root")
    return full


def pack(client: Client, directory: str, ref: str, opts: PackOptions | None = None
         ) -> PackResult:
    """Pack ``directory`` into the image ``ref`` (see the module docstring).

    Repeating it on an unchanged directory gives the same digests and only moves the record's
    ``updatedat``. Raises NotFound for a missing directory, InvalidArgument for a bad option,
    and what the differ and store raise (the lease is dropped; its blobs become garbage).
    """
    from cargohold.differ.compare import compare
    from cargohold.metadata.content import NamespacedStore

    opts = opts or PackOptions()
    if not ref:
        raise InvalidArgument("image name '': empty", hint="give the image a name, e.g. "
                              "example.com/tools:1")
    media_type = _layer_media_type(opts.compression)
    src = _check_dir(directory)
    platform = platforms.normalize(opts.platform or platforms.default())
    with client.leases.lease() as lid:
        store = NamespacedStore(client.db, client.store, client.namespace, lease=lid)
        try:
            layer = compare([], [Mount("bind", src, ("rbind", "ro"))], store=store,
                            media_type=media_type)
        except OSError as exc:
            raise CargoholdError(f"directory {directory}: {exc.strerror or exc}") from exc
        diff_id = store.info(layer.digest).labels.get(LABEL_UNCOMPRESSED, "")
        if not diff_id:
            raise CargoholdError(f"layer {layer.digest}: no {LABEL_UNCOMPRESSED} label "
                                 "after packing", hint="run 'hold fsck' and pack again")
        config = write_blob(store, canonical_json(image_config(diff_id, platform, opts)),
                            mt.OCI_CONFIG, {})
        manifest_doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                        "config": config.to_json(), "layers": [layer.to_json()]}
        # child_gc_labels looks only at the parent's media type.
        kind = Descriptor(mt.OCI_MANIFEST, "", 0)
        manifest = write_blob(store, canonical_json(manifest_doc), mt.OCI_MANIFEST,
                              child_gc_labels(kind, [config, layer]))
        target = manifest
        if opts.index:
            entry = Descriptor(manifest.media_type, manifest.digest, manifest.size,
                               platform=platform)
            index_doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                         "manifests": [entry.to_json()]}
            target = write_blob(store, canonical_json(index_doc), mt.OCI_INDEX,
                                child_gc_labels(Descriptor(mt.OCI_INDEX, "", 0), [entry]))
        with client.db.update() as tx:
            image = image_records.upsert(tx, client.namespace,
                                         Image(ref, target, dict(opts.labels)))
    chain = ""
    if opts.unpack and platforms.Matcher().match(platform):
        from cargohold.images.unpack import unpack_image

        chain = unpack_image(client, ref, platform=platform)
    return PackResult(image, manifest, config, layer, diff_id, chain)


def parse_env(pairs: Sequence[str]) -> list[str]:
    """``K=V`` strings, checked."""
    out = []
    for p in pairs:
        if "=" not in p or p.startswith("="):
            raise InvalidArgument(f"env {p!r}: not KEY=VALUE")
        out.append(p)
    return out


def _layer_media_type(compression: str) -> str:
    """The OCI layer media type for ``gzip``, ``zstd`` or ``none`` (the differ's table)."""
    from cargohold.differ.api import Compression, media_type_for

    try:
        return media_type_for(Compression(compression))
    except (ValueError, InvalidArgument):
        raise InvalidArgument(f"compression {compression!r}: not supported",
                              hint="use gzip, zstd or none") from None
