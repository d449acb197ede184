"""``import_archive``: image archives into the content store, images, and (by default) snapshots.

Accepted (sniffed, never guessed from the file name; see :mod:`cargohold.images.archive`): OCI
image-layout tars (``skopeo copy … oci-archive:``, ``ctr images export``, ``hold images
export``), ``docker save`` tars (``manifest.json`` with ``Config``/``RepoTags``/``Layers``, legacy
``<id>/layer.tar`` directories and symlinks, saves by digest without ``RepoTags``), OCI layout
and extracted ``docker save`` directories, each gzip, zstd or xz compressed or not, from a file
or standard input.

How it runs: inside one lease owned by this process (:mod:`cargohold.leases.owner`). A failure,
Ctrl-C or SIGTERM included, removes its extract snapshot, deletes the lease and collects what
only it held before the error propagates; partial ingests stay, closed, until their own expiry,
and the next import of the same archive resumes them (:mod:`.ingest`). After a kill -9 the
lease's owner is dead: GC and ``hold fsck --repair`` remove what it held (``hold fsck`` names
it), and a repeat of the import neither waits for that nor trips over it.

1. One pass over the archive. Every blob is streamed into the store with ``copy_into``: files
   under ``blobs/<alg>/<hex>`` are verified against their name (a digest the namespace has
   already costs no bytes); other files (docker layers and configs) are hashed on the way in.
   ``index.json``, ``oci-layout``, ``manifest.json`` and ``repositories`` are kept in memory.
2. The entries: ``index.json``'s manifests, or, for docker archives, a Docker schema 2 manifest
   synthesized per ``manifest.json`` entry (config media type docker, layer media type from the
   layer's magic bytes: tar or gzip). The synthesized JSON is deterministic, so importing twice
   gives the same digests.
3. Per entry and platform: complete, or how many blobs are missing (:mod:`.service`). Only a
   platform somebody asked for can fail the import (``--platform``, or the only manifest of a
   single-manifest image); others are reported. ``unknown/unknown`` attestations never count.
4. GC labels on every parent blob present (``containerd.io/gc.ref.content.*``), so images keep
   their blobs alive.
5. Unpack (unless ``unpack=False``) the selected platforms the host can run
   (:mod:`.unpack`), which labels layers and configs.
6. Image records, all in one transaction, last: nothing half-imported is ever visible. A name
   that already points at the same target is left untouched, so a second import of the same
   archive changes nothing.

Names, in order: ``io.containerd.image.name``; ``org.opencontainers.image.ref.name`` (a full
reference is normalised the docker way, a bare tag becomes ``<base_name>:<tag>``, with
``import-YYYY-MM-DD`` as the default base as ctr does); docker ``RepoTags`` (``alpine`` →
``docker.io/library/alpine:latest``). Entries with no name become ``<none>@sha256:…`` images
(containerd drops them) unless ``name`` is given. ``digests=True`` adds ``<repo>@<digest>``
images, ``index_name`` an image that points at the whole index.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from cargohold._record import field, record
from cargohold.errors import (
    CargoholdError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    Unsupported,
)
from cargohold.images import mediatypes as mt
from cargohold.images import platforms as plat
from cargohold.images import refs
from cargohold.images.archive import ArchiveError, open_archive
from cargohold.images.completeness import PlatformState, platform_states, store_has
from cargohold.images.ingest import (
    NAME_ANNOTATION,
    REF_ANNOTATION,
    ArchiveIngest,
    Entry,
    docker_entries,
    load_json,
    put_blob,
)
from cargohold.images.manifest import child_gc_labels, children, parse_manifest
from cargohold.images.progress import Progress
from cargohold.leases.manager import DEFAULT_EXPIRY
from cargohold.metadata import images as records
from cargohold.metadata.images import Image
from cargohold.store.api import Info
from cargohold.types import Descriptor, Platform

if TYPE_CHECKING:
    from cargohold.client import Client
    from cargohold.metadata.content import NamespacedStore



@record
class ImportOptions:
    """What ``hold images import`` can ask for."""

    base_name: str = ""
    index_name: str = ""
    name: str = ""  # for a nameless entry
    digests: bool = False
    platforms: list[Platform] = field(default_factory=list)
    all_platforms: bool = False
    unpack: bool = True
    snapshotter: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@record
class ImportedEntry:
    """One entry of the archive: its names, target and per-platform states."""

    target: Descriptor
    names: list[str]
    states: list[PlatformState]
    nameless: bool = False
    unpacked: dict[str, str] = field(default_factory=dict)  # manifest digest -> top chain ID
    not_unpacked: dict[str, str] = field(default_factory=dict)  # manifest digest -> why

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target.to_json(), "names": self.names, "nameless": self.nameless,
                "platforms": [s.to_json() for s in self.states],
                "unpacked": self.unpacked, "not_unpacked": self.not_unpacked}


@record
class ImportResult:
    """Everything an import did, for the CLI to print."""

    source: str
    format: str  # "oci" or "docker"
    compression: str
    entries: list[ImportedEntry] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # names created or updated
    unchanged: list[str] = field(default_factory=list)  # names already pointing there
    notes: list[str] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0  # size of the new blobs
    resumed: int = 0  # of those bytes, how many an interrupted import had stored already
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "format": self.format, "compression": self.compression,
                "entries": [e.to_json() for e in self.entries], "images": self.images,
                "unchanged": self.unchanged, "notes": self.notes, "blobs": self.blobs,
                "bytes": self.bytes, "resumed_bytes": self.resumed,
                "seconds": round(self.seconds, 3)}


class Importer:
    """Imports archives into ``client``'s namespace (see the module docstring)."""

    def __init__(self, client: Client, *, progress: Progress | None = None) -> None:
        self.client = client
        self.progress = progress or Progress()

    def import_archive(self, path: str, opts: ImportOptions | None = None) -> ImportResult:
        """Import the archive at ``path`` (``-`` = stdin). Raises, leaving nothing visible:
        :class:`ArchiveError` (truncated, not an archive), NotFound (a blob a requested
        platform needs), IntegrityError (digest or diffID mismatch), Unsupported (unknown
        layer media type, schema 1). Repeating an import changes nothing.
        """
        opts = opts or ImportOptions()
        t0 = time.monotonic()
        c = self.client
        # A lease of this process: if it dies, GC and fsck see the lease's owner is gone and
        # free what it held at once (leases/owner.py); any failure collects right away.
        ctx = (contextlib.nullcontext(c.lease) if c.lease else
               c.leases.lease(expire=DEFAULT_EXPIRY, purpose=f"images import {path}",
                              collect_on_error=True))
        with ctx as lease:
            from cargohold.metadata.content import NamespacedStore

            store = NamespacedStore(c.db, c.store, c.namespace, lease=lease,
                                    ingest_expiry=c.content.ingest_expiry)
            with open_archive(path) as archive:
                reader = ArchiveIngest(store, lease, self.progress, archive.label, path)
                reader.run(archive.members())
                res = ImportResult(archive.label, "", archive.compression,
                                   blobs=reader.count, bytes=reader.bytes,
                                   resumed=reader.resumed)
            entries, index_desc = self._entries(store, reader, opts, lease, res)
            self._check_and_report(store, reader, entries, opts, res)
            self._label_parents(store, [e.target for e in res.entries]
                                + ([index_desc] if index_desc is not None else []))
            if opts.unpack:
                self._unpack(store, lease, opts, res)
            self._write_images(res, entries, index_desc, opts)
        res.seconds = time.monotonic() - t0
        return res

    # --- step 2: entries and names ----------------------------------------------------------
    def _entries(self, store: NamespacedStore, r: ArchiveIngest, opts: ImportOptions, lease: str,
                 res: ImportResult) -> tuple[list[Entry], Descriptor | None]:
        label = res.source
        # Some tools leave out oci-layout; an index.json alone is still an OCI layout.
        if "oci-layout" in r.meta or ("index.json" in r.meta and "manifest.json" not in r.meta):
            layout = load_json(r.meta.get("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                               "oci-layout", label)
            version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
            if version != "1.0.0":
                raise Unsupported(f"archive {label}: OCI layout version {version!r} is not "
                                  "supported", hint="only imageLayoutVersion 1.0.0 exists")
            if "index.json" not in r.meta:
                raise ArchiveError(f"archive {label}: OCI layout without index.json",
                                   hint="the archive is incomplete; export it again")
            res.format = "oci"
            return self._oci_entries(store, r, opts, lease, label)
        if "manifest.json" in r.meta:
            res.format = "docker"
            return docker_entries(store, r, lease, label, index=bool(opts.index_name))
        if "repositories" in r.meta:
            raise Unsupported(f"archive {label}: docker save format v1.0 (no manifest.json) "
                              "is not supported",
                              hint="save it again with docker 1.10 or later, or convert it "
                                   "with 'skopeo copy docker-archive:… oci-archive:…'")
        raise ArchiveError(f"archive {label}: not an image archive (no oci-layout with "
                           "index.json, and no docker manifest.json)",
                           hint="import docker save or OCI image-layout archives (skopeo "
                                "copy can convert other formats)")

    def _oci_entries(self, store: NamespacedStore, r: ArchiveIngest, opts: ImportOptions,
                     lease: str, label: str) -> tuple[list[Entry], Descriptor | None]:
        raw = r.meta["index.json"]
        idx = load_json(raw, "index.json", label)
        if not isinstance(idx, dict) or not isinstance(idx.get("manifests"), list):
            raise ArchiveError(f"archive {label}: index.json has no manifests list")
        out = []
        base = opts.base_name or time.strftime("import-%Y-%m-%d")
        for d in idx["manifests"]:
            desc = Descriptor.from_json(d)
            if "io.containerd.manifest.subject" in desc.annotations:
                continue  # referrers are content, not images (as containerd does)
            ann = desc.annotations
            names = []
            if ann.get(NAME_ANNOTATION):
                names.append(ann[NAME_ANNOTATION])
            elif ann.get(REF_ANNOTATION):
                ref = ann[REF_ANNOTATION]
                names.append(refs.normalize(ref) if refs.looks_like_reference(ref)
                             else f"{base}:{ref}")
            out.append(Entry(desc, names))
        index_desc = None
        if opts.index_name:
            digest = put_blob(store, raw, lease)
            index_desc = Descriptor(idx.get("mediaType") or mt.OCI_INDEX, digest, len(raw))
        return out, index_desc

    # --- step 3: completeness ----------------------------------------------------------------
    def _check_and_report(self, store: NamespacedStore, r: ArchiveIngest, entries: list[Entry],
                          opts: ImportOptions, res: ImportResult) -> None:
        has = store_has(store)
        explicit = bool(opts.platforms) and not opts.all_platforms
        matcher = plat.Matcher(opts.platforms or None, all_platforms=opts.all_platforms)
        for e in entries:
            what = f"image {e.names[0]}" if e.names else f"manifest {e.desc.digest}"
            if not (mt.is_index(e.desc.media_type) or mt.is_manifest(e.desc.media_type)):
                mt.refuse_schema1(e.desc.media_type, what)
                raise Unsupported(f"{what}: unknown media type {e.desc.media_type!r} in "
                                  "index.json", hint="only OCI/Docker image manifests and "
                                  "indexes can be imported as images")
            self._raise_bad(r, e.desc, what)
            states = platform_states(store, e.desc, what=what, has=has)
            single = mt.is_manifest(e.desc.media_type)
            picked = [s for s in states if not s.attestation
                      and matcher.match(plat.parse(s.platform) if s.platform else None)]
            # A damaged blob fails the import only where someone needs it; elsewhere it is
            # reported like a missing one (never fail on a platform nobody asked for).
            for s in states:
                for dgst in s.missing:
                    if single or s in picked:
                        self._raise_bad(r, Descriptor("", dgst, 0), what, s.platform)
                    elif _bad_member(r, dgst):
                        res.notes.append(f"note: {what}: platform {s.platform or 'unknown'}: "
                                         f"blob {dgst} is damaged in the archive; skipped")
            if single and states[0].missing:
                raise _missing(what, states[0], res.source)
            if explicit:
                for p in opts.platforms:
                    pm = plat.Matcher([p])
                    hits = [s for s in picked if s.platform and pm.match(plat.parse(s.platform))]
                    if not hits:
                        have = ", ".join(sorted({s.platform for s in states if s.platform
                                                 and not s.attestation})) or "none"
                        raise NotFound(f"{what}: platform {p}: not in the archive (it has "
                                       f"{have})", hint="choose one of those with --platform, "
                                       "or use --all-platforms")
                    if not any(s.complete for s in hits):
                        raise _missing(what, hits[0], res.source)
            if not any(s.complete for s in states if not s.attestation):
                first = next((s for s in states if not s.attestation), states[0])
                raise _missing(what, first, res.source)
            self._check_layer_types(store, states, picked, what, opts)
            names = list(e.names)
            nameless = not names
            if nameless:
                names = [opts.name] if opts.name else [f"<none>@{e.desc.digest}"]
            res.entries.append(ImportedEntry(e.desc, names, states, nameless))
        nameless = [e for e in res.entries if e.nameless]
        if opts.name and len(nameless) > 1:
            raise InvalidArgument(f"--name {opts.name}: the archive has {len(nameless)} "
                                  "nameless manifests, --name can name only one",
                                  hint="import without --name and tag them afterwards")
        if opts.name and not nameless:
            res.notes.append(f"--name {opts.name}: every manifest has a name; not used")
        for e in nameless:
            if not opts.name:
                res.notes.append(f"note: manifest {e.target.digest} has no name; imported as "
                                 f"{e.names[0]} (give one with --name, or 'hold images tag')")

    @staticmethod
    def _raise_bad(r: ArchiveIngest, desc: Descriptor, what: str, platform: str = "") -> None:
        member = _bad_member(r, desc.digest)
        if member is not None:
            where = f" platform {platform}:" if platform else ""
            raise IntegrityError(f"{what}:{where} blob {desc.digest}: {r.bad[member]}",
                                 hint="the archive is damaged; export or copy it again")

    def _check_layer_types(self, store: NamespacedStore, states: list[PlatformState],
                           picked: list[PlatformState], what: str, opts: ImportOptions) -> None:
        if not opts.unpack:
            return
        for s in picked:
            if not s.complete:
                continue
            m = parse_manifest(store, Descriptor(mt.OCI_MANIFEST, s.manifest, 1), what)
            for i, layer in enumerate(m.layers):
                if not mt.is_layer(layer.media_type):
                    raise Unsupported(
                        f"{what}: platform {s.platform or 'unknown'}: layer {i + 1} "
                        f"{layer.digest}: unknown media type {layer.media_type!r}",
                        hint="only tar, tar+gzip and tar+zstd layers can be unpacked; "
                             "import with --no-unpack to keep it as content only")

    # --- step 4: GC labels on parents ------------------------------------------------------
    def _label_parents(self, store: NamespacedStore, targets: list[Descriptor]) -> None:
        has = store_has(store)
        seen: set[str] = set()
        stack = list(targets)
        while stack:
            d = stack.pop()
            if d.digest in seen or not has(d.digest):
                continue
            seen.add(d.digest)
            if not (mt.is_index(d.media_type) or mt.is_manifest(d.media_type)):
                continue
            kids = children(store, d)
            _set_labels(store, d.digest, child_gc_labels(d, kids))
            stack.extend(k for k in kids if mt.is_index(k.media_type)
                         or mt.is_manifest(k.media_type))

    # --- step 5: unpack ----------------------------------------------------------------------
    def _unpack(self, store: NamespacedStore, lease: str, opts: ImportOptions,
                res: ImportResult) -> None:
        from cargohold.images.unpack import Unpacker

        host = plat.Matcher()
        with Unpacker(self.client, store, snapshotter=opts.snapshotter or None,
                      lease=lease, progress=self.progress) as unpacker:
            for e in res.entries:
                for s in _to_unpack(e.states, opts, host):
                    if not s.complete:
                        e.not_unpacked[s.manifest] = s.describe()
                        continue
                    desc = Descriptor(mt.OCI_MANIFEST, s.manifest, 1)
                    e.unpacked[s.manifest] = unpacker.unpack(desc, what=e.names[0])
                real = [s for s in e.states if not s.attestation]
                if not e.unpacked and real and not any(_selected(s, opts, host) for s in real):
                    res.notes.append(f"note: {e.names[0]}: no platform for this host "
                                     f"({plat.default()}); imported without unpacking")

    # --- step 6: image records --------------------------------------------------------------
    def _write_images(self, res: ImportResult, entries: list[Entry],
                      index_desc: Descriptor | None, opts: ImportOptions) -> None:
        want: dict[str, Descriptor] = {}
        for e in res.entries:
            for n in e.names:
                want[n] = e.target
                if opts.digests and not e.nameless:
                    want[f"{refs.repository(n)}@{e.target.digest}"] = e.target
        if opts.index_name and index_desc is not None:
            want[opts.index_name] = index_desc
        c = self.client
        with c.db.update() as tx:
            for name, target in want.items():
                try:
                    cur: Image | None = records.get(tx, c.namespace, name)
                except NotFound:
                    cur = None
                labels = dict(opts.labels)
                if (cur is not None and cur.target.digest == target.digest
                        and cur.target.media_type == target.media_type
                        and all(cur.labels.get(k) == v for k, v in labels.items())):
                    res.unchanged.append(name)
                    continue
                # Descriptors in image records carry no platform or annotations of the index.
                t = Descriptor(target.media_type, target.digest, target.size)
                records.upsert(tx, c.namespace, Image(name, t, labels))
                res.images.append(name)


def _selected(s: PlatformState, opts: ImportOptions, host: plat.Matcher) -> bool:
    p = plat.parse(s.platform) if s.platform else None
    if opts.platforms and not opts.all_platforms:
        return plat.Matcher(opts.platforms).match(p)
    return host.match(p)


def _to_unpack(states: list[PlatformState], opts: ImportOptions,
               host: plat.Matcher) -> list[PlatformState]:
    """Explicit platforms: each of them; --all-platforms: every one the host runs; default:
    the best match for this host.
    """
    real = [s for s in states if not s.attestation]
    if opts.platforms and not opts.all_platforms:
        out = []
        for p in opts.platforms:
            pm = plat.Matcher([p])
            hits = [s for s in real if pm.match(plat.parse(s.platform) if s.platform else None)]
            hits.sort(key=lambda s: (not s.complete, pm.rank(plat.parse(s.platform)
                                                              if s.platform else None)))
            out.extend(hits[:1])
        return out
    hits = [s for s in real if host.match(plat.parse(s.platform) if s.platform else None)]
    if opts.all_platforms:
        return hits
    hits.sort(key=lambda s: (not s.complete,
                             host.rank(plat.parse(s.platform) if s.platform else None)))
    return hits[:1]


def _bad_member(r: ArchiveIngest, digest: str) -> str | None:
    """The archive member that should have held ``digest`` but hashed otherwise."""
    hexpart = digest.split(":", 1)[-1]
    return next((m for m in r.bad if m.endswith("/" + hexpart)), None)


def _missing(what: str, s: PlatformState, source: str) -> CargoholdError:
    shown = ", ".join(s.missing[:3]) + (", ..." if len(s.missing) > 3 else "")
    p = s.platform or "unknown platform"
    return NotFound(f"{what}: platform {p}: {s.describe()} ({shown}) in archive {source}",
                    hint="export the image again with that platform's blobs (from a store "
                         "where it is complete: 'hold images export --all-platforms'), or "
                         "choose another with --platform")


def _set_labels(store: NamespacedStore, digest: str, labels: dict[str, str]) -> None:
    """Add ``labels`` to a blob unless it already has them (a repeat writes nothing)."""
    if not labels:
        return
    cur = store.info(digest).labels
    new = {k: v for k, v in labels.items() if cur.get(k) != v}
    if new:
        store.update(Info(digest, 0, labels=new), [f"labels.{k}" for k in new])

