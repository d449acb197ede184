"""Export images as an OCI image-layout tar that ``ctr``, ``docker load`` and ``skopeo`` read.

The archive (records sorted by name, each written once, owner 0:0, mtime 0, so the same images
always give the same bytes)::

    blobs/  blobs/sha256/            directories, 0755
    blobs/sha256/<hex>               every exported blob, 0444, re-hashed while copied
    index.json                       one entry per image name, 0644:
                                     io.containerd.image.name = the full name,
                                     org.opencontainers.image.ref.name = its tag (or the
                                     full name when it has none), distribution sources
    manifest.json                    docker's: [{Config, RepoTags, Layers}], one per manifest
    oci-layout                       {"imageLayoutVersion":"1.0.0"}, 0444
    repositories                     docker's legacy {repo: {tag: <config hex>}}; docker
                                     reads it only without manifest.json

Which manifests go in — planned completely before a byte is written, so a missing blob fails
the export before OUT exists:

- an image whose target is a manifest: that manifest, whatever its platform;
- an index: the entries whose platform the matcher selects (default: this host, strictly).
  Entries nobody asked for are left out (the index blob itself is copied unchanged, so its
  digest survives). Every blob of a selected platform must be present: a missing one raises
  :class:`MissingContent` naming the blob, the platform and the fix. Without ``--platform``
  (the host default), a host manifest whose blobs are absent is skipped instead — as long as
  the image still has *some* complete manifest; ``--all-platforms`` asks for every platform.
  Attestation manifests (``unknown/unknown``) go in with ``--all-platforms`` when complete,
  and are never an error.

``manifest.json`` lists, per image, the best matching exported manifest (host first); images
sharing a manifest share one entry with several RepoTags. ``--skip-manifest-json`` leaves out
``manifest.json`` and ``repositories``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO

from cargohold._record import field, record
from cargohold.errors import CargoholdError, IntegrityError, InvalidArgument, NotFound
from cargohold.images import mediatypes as mt
from cargohold.images import platforms
from cargohold.images.manifest import config_platform, parse_manifest, read_json
from cargohold.images.platforms import Matcher
from cargohold.metadata.images import Image
from cargohold.store.api import Store
from cargohold.types import LABEL_DISTRIBUTION_SOURCE, Descriptor, Platform

if TYPE_CHECKING:
    from cargohold.client import Client
    from cargohold.images.progress import Progress

ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
COPY_CHUNK = 4 << 20



class MissingContent(NotFound):
    """A blob of a platform the export was asked for is not in the store."""


@record(frozen=True)
class ExportOptions:
    """What to export: platforms (None = this host), all of them, docker compatibility."""

    platforms: Sequence[Platform] | None = None
    all_platforms: bool = False
    skip_manifest_json: bool = False


@record
class _DockerEntry:
    config: str
    layers: list[str]
    tags: list[str] = field(default_factory=list)


@record
class Plan:
    """Everything the archive will hold, decided before writing: blobs and small documents."""

    blobs: dict[str, Descriptor] = field(default_factory=dict)
    index: list[dict] = field(default_factory=list)
    docker: dict[str, _DockerEntry] = field(default_factory=dict)  # manifest digest -> entry
    notes: list[str] = field(default_factory=list)  # platforms skipped, for the caller

    @property
    def total(self) -> int:
        return sum(d.size for d in self.blobs.values())


# --- names -----------------------------------------------------------------------------------
def split_name(name: str) -> tuple[str, str, str]:
    """``(repository, tag, digest)`` of an image name; tag and digest may be empty."""
    from cargohold.images import refs

    return refs.split(name)


def familiar(repo: str) -> str:
    """Docker's short form: ``docker.io/library/x`` -> ``x``, ``docker.io/u/x`` -> ``u/x``."""
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/",
                   "index.docker.io/"):
        if repo.startswith(prefix) and repo[len(prefix):].count("/") <= 1:
            return repo[len(prefix):]
    return repo


def ref_name(name: str) -> str:
    """The ``org.opencontainers.image.ref.name`` of a name: its tag, else the full name."""
    _repo, tag, digest = split_name(name)
    return tag if tag and not digest else name


# --- planning --------------------------------------------------------------------------------
class _Planner:
    def __init__(self, store: Store, opts: ExportOptions) -> None:
        self.store = store
        self.opts = opts
        self.explicit = bool(opts.platforms) or opts.all_platforms
        self.matcher = Matcher(list(opts.platforms or []) or None,
                               all_platforms=opts.all_platforms)
        self.plan = Plan()

    def _have(self, d: Descriptor) -> bool:
        try:
            info = self.store.info(d.digest)
        except NotFound:
            return False
        if info.size != d.size:
            raise IntegrityError(f"blob {d.digest}: the store has {info.size} bytes, the "
                                 f"descriptor says {d.size}",
                                 hint="run 'hold fsck' and import or pull the image again")
        return True

    def _manifest_blobs(self, name: str, m: Descriptor) -> list[Descriptor] | str:
        """The blobs of one manifest, or the first missing one's description."""
        if not self._have(m):
            return f"manifest {m.digest}"
        man = parse_manifest(self.store, m, f"image {name}")
        out = [m]
        for i, d in enumerate([man.config, *man.layers]):
            if not self._have(d):
                what = "config" if i == 0 else f"layer {i} of {len(man.layers)}"
                return f"{what} {d.digest}"
            out.append(d)
        return out

    def _missing(self, name: str, plat: str, what: str, present: list[str]) -> MissingContent:
        have = f" (complete here: {', '.join(sorted(set(present)))})" if present else ""
        flag = f"--platform {present[0]}" if present else "--platform <one you have>"
        return MissingContent(
            f"image {name}: {what} for platform {plat}: not found",
            hint=f"pull or import that platform, or export with {flag}{have}")

    def add_image(self, img: Image) -> None:
        target = img.target
        if not (mt.is_index(target.media_type) or mt.is_manifest(target.media_type)):
            mt.refuse_schema1(target.media_type, f"image {img.name}")
            raise InvalidArgument(f"image {img.name}: target {target.media_type!r} is not a "
                                  "manifest or index", hint="only images can be exported")
        chosen: list[tuple[int, Descriptor, list[Descriptor]]] = []
        if mt.is_manifest(target.media_type):
            blobs = self._manifest_blobs(img.name, target)
            if isinstance(blobs, str):
                man_plat = self._plat_of(target) or "of the image"
                raise self._missing(img.name, str(man_plat), blobs, [])
            chosen.append((0, target, blobs))
            tree: list[Descriptor] = []
        else:
            tree = self._walk_index(img, target, chosen)
        if not chosen:
            raise NotFound(f"image {img.name}: no manifest for {self.matcher.describe()}",
                           hint="list its platforms with 'hold images inspect' and export "
                                "with --platform, or use --all-platforms")
        for d in tree:
            self.plan.blobs.setdefault(d.digest, d)
        for _rank, _m, blobs in chosen:
            for d in blobs:
                self.plan.blobs.setdefault(d.digest, d)
        self._index_entry(img)
        best = min(chosen, key=lambda c: c[0])
        self._docker_entry(img.name, best[1], best[2])

    def _plat_of(self, m: Descriptor) -> Platform | None:
        if m.platform is not None:
            return m.platform
        try:
            return config_platform(self.store, parse_manifest(self.store, m))
        except CargoholdError:
            return None

    def _walk_index(self, img: Image, index: Descriptor,
                    chosen: list[tuple[int, Descriptor, list[Descriptor]]]) -> list[Descriptor]:
        """Select manifests under ``index`` into ``chosen``; return the index blobs."""
        if not self._have(index):
            raise self._missing(img.name, self.matcher.describe(), f"index {index.digest}", [])
        tree = [index]
        doc = read_json(self.store, index, f"image {img.name}")
        entries = [Descriptor.from_json(e) for e in doc.get("manifests") or []]
        wanted: list[tuple[Descriptor, list[Descriptor] | str]] = []
        for e in entries:
            if mt.is_index(e.media_type):
                if self.matcher.match(e.platform) and self._have(e):
                    tree.extend(self._walk_index(img, e, chosen))
                continue
            if not mt.is_manifest(e.media_type):
                continue
            attest = platforms.is_unknown(e.platform)
            if not (self.matcher.match(e.platform) or (attest and self.opts.all_platforms)):
                continue
            wanted.append((e, self._manifest_blobs(img.name, e)))
        skipped: MissingContent | None = None
        for e, blobs in wanted:
            plat = str(e.platform) if e.platform else "(unspecified)"
            if isinstance(blobs, str):
                if platforms.is_unknown(e.platform):
                    continue  # an attestation nobody needs to run
                err = self._missing(img.name, plat, blobs, self._complete(img, entries))
                if self.explicit:
                    raise err
                skipped = skipped or err
                self.plan.notes.append(f"image {img.name}: skipped {plat}: {blobs} is "
                                       "not in the store")
                continue
            chosen.append((self.matcher.rank(e.platform), e, blobs))
        if skipped is not None and not chosen:
            raise skipped  # the host default found nothing complete: say what is missing
        return tree

    def _complete(self, img: Image, entries: list[Descriptor]) -> list[str]:
        """Platforms of ``entries`` whose blobs are all here (for hints)."""
        out = []
        for e in entries:
            if (mt.is_manifest(e.media_type) and e.platform is not None
                    and not platforms.is_unknown(e.platform)
                    and not isinstance(self._manifest_blobs(img.name, e), str)):
                out.append(str(e.platform))
        return out

    def _index_entry(self, img: Image) -> None:
        ann = dict(img.target.annotations)
        ann[ANNOTATION_IMAGE_NAME] = img.name
        ann[ANNOTATION_REF_NAME] = ref_name(img.name)
        try:
            labels = self.store.info(img.target.digest).labels
        except NotFound:
            labels = {}
        for k, v in labels.items():
            if k.startswith(LABEL_DISTRIBUTION_SOURCE):
                ann[k] = v
        d = Descriptor(img.target.media_type, img.target.digest, img.target.size, ann,
                       img.target.urls, img.target.platform)
        self.plan.index.append(d.to_json())

    def _docker_entry(self, name: str, m: Descriptor, blobs: list[Descriptor]) -> None:
        if self.opts.skip_manifest_json:
            return
        entry = self.plan.docker.get(m.digest)
        if entry is None:
            layers = [f"blobs/sha256/{d.digest.split(':', 1)[1]}" for d in blobs[2:]]
            entry = _DockerEntry(f"blobs/sha256/{blobs[1].digest.split(':', 1)[1]}", layers)
            self.plan.docker[m.digest] = entry
        repo, tag, digest = split_name(name)
        if tag and not digest:
            t = f"{familiar(repo)}:{tag}"
            if t not in entry.tags:
                entry.tags.append(t)


def plan_export(store: Store, images: Sequence[Image], opts: ExportOptions | None = None
                ) -> Plan:
    """Decide what an export of ``images`` holds; raise before anything is written.

    Raises :class:`MissingContent` for a missing blob of a requested platform, NotFound when
    an image has no manifest for the platforms asked, InvalidArgument for a non-image target,
    IntegrityError when the store's size of a blob disagrees with its descriptor.
    """
    if not images:
        raise InvalidArgument("export: no images given", hint="name at least one image")
    p = _Planner(store, opts or ExportOptions())
    for img in images:
        p.add_image(img)
    return p.plan


def documents(plan: Plan) -> dict[str, bytes]:
    """The small JSON records of the archive, by name."""
    docs = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "index.json": json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                  "manifests": plan.index},
                                 separators=(",", ":")).encode(),
    }
    if plan.docker:
        docs["manifest.json"] = json.dumps(
            [{"Config": e.config, "RepoTags": e.tags or None, "Layers": e.layers}
             for e in plan.docker.values()], separators=(",", ":")).encode()
        repos: dict[str, dict[str, str]] = {}
        for e in plan.docker.values():
            for t in e.tags:
                repo, tag = t.rsplit(":", 1)
                repos.setdefault(repo, {})[tag] = e.config.rsplit("/", 1)[1]
        if repos:
            docs["repositories"] = json.dumps(repos, sort_keys=True,
                                              separators=(",", ":")).encode()
    return docs


def write_archive(store: Store, plan: Plan, out: BinaryIO, *,
                  progress: Progress | None = None) -> int:
    """Write the archive of ``plan`` to ``out``; return the bytes of blob data copied.

    Every blob is hashed as it is copied; a mismatch raises IntegrityError naming the blob
    (what was written so far is the caller's to discard).
    """
    from cargohold.differ.tarwriter import end_of_archive, header

    docs = documents(plan)
    records: list[tuple[str, object]] = [("blobs/", None), ("blobs/sha256/", None)]
    for d in plan.blobs.values():
        alg, hexd = d.digest.split(":", 1)
        if alg != "sha256":
            raise InvalidArgument(f"blob {d.digest}: only sha256 blobs can be exported")
        records.append((f"blobs/sha256/{hexd}", d))
    records += list(docs.items())
    records.sort(key=lambda r: r[0])
    buf = bytearray(COPY_CHUNK)
    done = 0
    for name, item in records:
        if item is None:
            out.write(header(name, b"5", mode=0o755, uid=0, gid=0))
        elif isinstance(item, bytes):
            mode = 0o444 if name == "oci-layout" else 0o644
            out.write(header(name, b"0", mode=mode, uid=0, gid=0, size=len(item)))
            out.write(item + bytes(-len(item) % 512))
        else:
            assert isinstance(item, Descriptor)
            out.write(header(name, b"0", mode=0o444, uid=0, gid=0, size=item.size))
            done += _copy_blob(store, item, out, buf, progress)
            out.write(bytes(-item.size % 512))
    out.write(end_of_archive())
    return done


def _copy_blob(store: Store, d: Descriptor, out: BinaryIO, buf: bytearray,
               progress: Progress | None) -> int:
    h = hashlib.sha256()
    if progress is not None:
        progress.start(d.digest, f"{_kind(d.media_type)} {d.digest[7:19]}", d.size)
    view = memoryview(buf)
    left = d.size
    with store.reader(d.digest) as r:
        while left:
            n = r.readinto(view[:min(left, len(buf))])
            if not n:
                raise IntegrityError(f"blob {d.digest}: ends {left} bytes early",
                                     hint="run 'hold fsck' to find and drop damaged blobs")
            chunk = view[:n]
            h.update(chunk)
            out.write(chunk)
            left -= n
            if progress is not None:
                progress.advance(d.digest, n)
    if "sha256:" + h.hexdigest() != d.digest:
        if progress is not None:
            progress.done(d.digest, "failed")
        raise IntegrityError(f"blob {d.digest}: content hashes to sha256:{h.hexdigest()}",
                             hint="the store is damaged: run 'hold fsck --repair', then pull "
                                  "or import the image again")
    if progress is not None:
        progress.done(d.digest)
    return d.size


def _kind(media_type: str) -> str:
    if mt.is_layer(media_type):
        return "layer"
    if mt.is_config(media_type):
        return "config"
    if mt.is_index(media_type):
        return "index"
    return "manifest" if mt.is_manifest(media_type) else "blob"


# --- the whole export ------------------------------------------------------------------------
@record(frozen=True)
class ExportResult:
    """What an export wrote."""

    plan: Plan
    blob_bytes: int
    path: str  # "-" for a stream


def resolve(client: Client, refs: Sequence[str]) -> list[Image]:
    """The image records named by ``refs`` (NotFound names the first missing one)."""
    from cargohold.metadata import images as records

    with client.db.view() as tx:
        return [records.get(tx, client.namespace, r) for r in refs]


#: file name suffix → the compression written under it; every suffix here is really written
SUFFIXES = {".gz": "gzip", ".tgz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".tzst": "zstd",
            ".xz": "xz", ".txz": "xz"}
#: compression suffixes we do not write: refused rather than a plain tar under that name
_REFUSED = {".bz2": "bzip2", ".tbz": "bzip2", ".tbz2": "bzip2", ".lz4": "lz4",
            ".lz": "lzip", ".lzma": "lzma", ".lzo": "lzop", ".z": "compress", ".br": "brotli",
            ".sz": "snappy"}


def compression_of(path: str) -> str:
    """``gzip``, ``zstd`` or ``xz`` by the suffix of ``path`` (see :data:`SUFFIXES`), else
    ``none``. InvalidArgument for a compression suffix that is not written (``.bz2``, …).
    """
    ext = os.path.splitext(path)[1].lower()
    if ext in SUFFIXES:
        return SUFFIXES[ext]
    if ext in _REFUSED:
        raise InvalidArgument(f"export {path}: {_REFUSED[ext]} compression is not supported",
                              hint="name the file .tar, .tar.gz, .tar.zst or .tar.xz")
    return "none"


@contextlib.contextmanager
def _compressed(raw: BinaryIO, compression: str) -> Iterator[BinaryIO]:
    if compression == "gzip":
        from isal import igzip_threaded

        # Threads so compression runs beside the blob copy; blocks make it deterministic.
        with igzip_threaded.open(raw, "wb", compresslevel=1, threads=2) as z:
            yield z  # type: ignore[misc]
    elif compression == "zstd":
        import zstandard

        with zstandard.ZstdCompressor(level=3, threads=2).stream_writer(
                raw, closefd=False) as z:
            yield z  # type: ignore[misc]
    elif compression == "xz":
        import lzma

        # Preset 1: layers are mostly compressed already, and xz's default (6) is ~10x slower
        # for a few percent; one thread, so the same images always give the same bytes.
        with lzma.LZMAFile(raw, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                           preset=1) as z:
            yield z  # type: ignore[misc]
    else:
        yield raw


def export(client: Client, dest: str, refs: Sequence[str], opts: ExportOptions | None = None,
           *, stream: BinaryIO | None = None, progress: Progress | None = None
           ) -> ExportResult:
    """Export the images ``refs`` to the file ``dest`` (or ``stream`` when ``dest`` is ``-``).

    A file is written under a temporary name beside ``dest`` and renamed into place when
    complete, so ``dest`` never holds half an archive; on any error the temporary file is
    removed. ``*.gz``, ``*.zst`` and ``*.xz`` names are compressed (ISA-L gzip, zstd, xz; see
    :func:`compression_of`, which refuses ``*.bz2`` and other suffixes it cannot write); a
    stream is not.
    Raises what :func:`plan_export` raises (before anything is written), IntegrityError when
    a blob does not hash to its digest, and FailedPrecondition for an unwritable ``dest`` or a
    full stream (:func:`cargohold._oserror.output_error`: the filesystem, the space free).
    """
    from cargohold._oserror import is_env_errno, output_error, stream_error

    compression = "none" if dest == "-" else compression_of(dest)
    plan = plan_export(client.content, resolve(client, refs), opts)
    if dest == "-":
        if stream is None:
            raise InvalidArgument("export -: no stream to write to")
        try:
            n = write_archive(client.content, plan, stream, progress=progress)
            stream.flush()
        except OSError as exc:
            if not is_env_errno(exc.errno):
                raise  # a closed pipe (EPIPE) among them: the CLI says nothing of it
            raise stream_error(exc, _fileno(stream), "export to standard output") from exc
        return ExportResult(plan, n, "-")
    full = os.path.abspath(dest)
    tmp = os.path.join(os.path.dirname(full), f".{os.path.basename(full)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb", buffering=0) as raw:
            with _compressed(raw, compression) as out:  # type: ignore[arg-type]
                n = write_archive(client.content, plan, out, progress=progress)
        os.replace(tmp, full)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise output_error(exc, full, f"export {dest}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return ExportResult(plan, n, full)


def _fileno(stream: BinaryIO) -> int | None:
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        return None
