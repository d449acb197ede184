"""Pass 1 of an import: archive members into the content store; docker manifests made up.

:class:`ArchiveIngest` consumes :meth:`cargohold.images.archive.Archive.members` once. Files
under ``blobs/<alg>/<hex>`` are written with that digest as ``expected``: a blob the namespace
already has costs no bytes, and one whose content hashes otherwise is recorded in ``bad``
(its ingest aborted) so that the importer can name the image and platform it belongs to.
Other files (docker layers and configs) are hashed on the way in. ``oci-layout``,
``index.json``, ``manifest.json`` and ``repositories`` are kept in memory (20 MiB at most);
docker's v1 ``<id>/json`` and ``<id>/VERSION`` are skipped; symlinks and hardlinks (docker's
layer dedup) are remembered and resolved by :meth:`ArchiveIngest.resolve`.

Ingest refs are stable, so an interrupted import resumes where it stopped (the ingest record
outlives the import's lease until its own expiry): ``import-<alg>-<hex>`` for a member whose
digest is known (``blobs/<alg>/<hex>``, and the manifests made up here), otherwise
``import-<hash>`` of the archive's identity (device, inode, size and mtime of the file; of the
member's own file in a directory), the member name and its size: the same unchanged archive
gives the same refs, a changed one new refs. A stream with no identity (a pipe on stdin) gets
refs of its own lease for those members, and their partial data is dropped on failure, since
nothing could resume it. Resumed bytes are checked against the archive before they are kept
(:func:`~cargohold.store.api.copy_into`).

Two imports of the same archive at once meet on the same refs: the second waits for the
first's ingest lock, then finds the blob committed (no bytes) or resumes what the first left.

On failure: a member that hashes otherwise is aborted (``bad``); on a full disk the ingest is
aborted too (free space matters more than a resume); anything else (Ctrl-C, a truncated
archive) keeps the partial ingest, closed, for the next import.
:func:`docker_entries` turns ``manifest.json`` into Docker schema 2 manifests.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cargohold.errors import (
    AlreadyExists,
    FailedPrecondition,
    IntegrityError,
    NotFound,
    Unavailable,
    Unsupported,
)
from cargohold.images import mediatypes as mt
from cargohold.images import refs
from cargohold.images.archive import ArchiveError, Member
from cargohold.images.manifest import MAX_JSON
from cargohold.images.progress import Progress
from cargohold.store.api import ResumeMismatch, Writer, copy_into
from cargohold.types import Descriptor, Platform

if TYPE_CHECKING:
    from cargohold.metadata.content import NamespacedStore

NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
META_FILES = ("oci-layout", "index.json", "manifest.json", "repositories")
_BLOB = re.compile(r"blobs/(sha256|sha512)/([0-9a-f]+)")  # fullmatch, never "$"
_LEGACY = re.compile(r"[0-9a-f]{64}/(json|VERSION)")


@dataclass
class Entry:
    """A top-level manifest or index of an archive, with the names it carries."""

    desc: Descriptor
    names: list[str]


@dataclass
class Blob:
    """A member stored as a blob."""

    digest: str
    size: int


class ArchiveIngest:
    """Pass 1: stream every member into the store (see the module docstring).

    ``source`` is the path the archive was opened from (``-`` for stdin): it gives the
    archive's identity for stable refs. ``resumed`` counts the bytes taken over from partial
    ingests, so ``bytes - resumed`` is what this run wrote.
    """

    def __init__(self, store: NamespacedStore, lease: str, progress: Progress,
                 label: str, source: str = "") -> None:
        self.store = store
        self.lease = lease
        self.progress = progress
        self.label = label
        self.source = source
        self._identity = _file_identity(source) if source else ""
        self._dir = bool(source) and source != "-" and os.path.isdir(source)
        self.blobs: dict[str, Blob] = {}
        self.links: dict[str, str] = {}
        self.meta: dict[str, bytes] = {}
        self.bad: dict[str, str] = {}  # member name -> problem
        self.count = 0
        self.bytes = 0
        self.resumed = 0

    def run(self, members: Any) -> None:
        for m in members:
            if m.kind == "symlink":
                base = m.name.rsplit("/", 1)[0] if "/" in m.name else ""
                target = m.linkname if m.linkname.startswith("/") else f"{base}/{m.linkname}"
                self.links[m.name] = _resolve_dots(target)
            elif m.kind == "hardlink":
                self.links[m.name] = m.linkname
            elif m.kind == "file":
                self._file(m)

    def _file(self, m: Member) -> None:
        assert m.reader is not None
        if m.name in META_FILES:
            if m.size > MAX_JSON:
                raise ArchiveError(f"archive {self.label}: {m.name} is {m.size} bytes, too "
                                   "large for image metadata")
            self.meta[m.name] = m.reader.read()
            return
        if _LEGACY.fullmatch(m.name):
            return  # docker's v1 layer metadata: no manifest refers to it
        match = _BLOB.fullmatch(m.name)
        expected = f"{match.group(1)}:{match.group(2)}" if match else ""
        self._ingest(m, expected)

    def ref_for(self, m: Member, expected: str) -> tuple[str, bool]:
        """The ingest ref of member ``m`` and whether a later import can resume it."""
        if expected:
            return digest_ref(expected), True
        identity = self._identity
        if self._dir:
            identity = _file_identity(os.path.join(self.source, m.name))
        if identity:
            key = f"{identity}\0{m.name}\0{m.size}"
            return f"import-{_sha(key)[:40]}", True
        return f"import-{self.lease}-{_sha(m.name)[:20]}", False

    def _ingest(self, m: Member, expected: str) -> None:
        ref, resumable = self.ref_for(m, expected)
        key = expected or m.name
        short = f"blob {expected.split(':', 1)[1][:12]}" if expected else m.name[-40:]
        self.progress.start(key, short, m.size)
        try:
            w = open_writer(self.store, ref, m.size, expected, self.progress)
        except AlreadyExists:
            self.blobs[m.name] = Blob(expected, m.size)
            self.progress.done(key, "exists")
            return
        existed: list[bool] = []
        had: list[int] = []
        try:
            digest = copy_into(w, m.reader, size=m.size, expected=expected,  # type: ignore
                               progress=lambda n: self.progress.advance(key, n),
                               then=lambda d, e: existed.append(e), verify_resumed=True,
                               kept=had.append)
        except BaseException as exc:
            self.progress.done(key, "failed")
            # copy_into closed the writer; decide what happens to the bytes it kept.
            if isinstance(exc, IntegrityError) and not isinstance(exc, ResumeMismatch):
                self._abort(ref)  # they hash otherwise: nothing to resume
                self.bad[m.name] = exc.message
                return
            if not resumable or _out_of_space(exc):
                try:
                    self._abort(ref)
                except Exception as abort_exc:  # noqa: BLE001 - never instead of exc
                    # The ingest record has its own expiry: GC removes it and its data then.
                    exc.add_note(f"ingest {ref} was left behind: {abort_exc}")
            raise
        self.progress.done(key, "exists" if any(existed) else "done")
        self.blobs[m.name] = Blob(digest, m.size)
        if not any(existed):
            self.count += 1
            self.bytes += m.size
            self.resumed += sum(had)

    def _abort(self, ref: str) -> None:
        try:
            self.store.abort(ref)
        except (NotFound, Unavailable):
            # Gone already, or a concurrent import of the same archive took the ingest over
            # the moment this one let go: it checks the bytes against its own archive before
            # keeping any (copy_into), so nothing wrong can survive through it.
            pass

    def resolve(self, name: str) -> str:
        name = _resolve_dots(name)
        for _ in range(16):
            if name not in self.links:
                return name
            name = self.links[name]
        return name


def _resolve_dots(path: str) -> str:
    out: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if out:
                out.pop()
            continue
        out.append(p)
    return "/".join(out)


def load_json(data: bytes, what: str, label: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ArchiveError(f"archive {label}: {what} is not valid JSON ({exc})",
                           hint="the archive is damaged; export it again") from exc


def put_blob(store: NamespacedStore, data: bytes, lease: str) -> str:
    """Store a small blob we made (synthesized manifest, index.json); returns its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        w = open_writer(store, digest_ref(digest), len(data), digest, None)
    except AlreadyExists:
        return digest
    copy_into(w, io.BytesIO(data), size=len(data), expected=digest, then=lambda d, e: None)
    return digest


def digest_ref(digest: str) -> str:
    """The ingest ref of a blob whose digest is known: the same in every import."""
    alg, _, hexpart = digest.partition(":")
    return f"import-{alg}-{hexpart}"


#: how often a writer waiting for another process's ingest lock looks again
WAIT_POLL = 0.05


def open_writer(store: NamespacedStore, ref: str, total: int, expected: str,
                progress: Progress | None) -> Writer:
    """``store.writer(ref)``, waiting while another process holds the ingest (a concurrent
    import of the same archive); raises AlreadyExists once the blob is there.

    A resumed ingest whose recorded total contradicts ``total`` is left over from something
    else: it is aborted and started again. The wait is noted on ``progress`` after a second,
    naming the holder.
    """
    since = time.monotonic()
    noted = restarted = False
    while True:
        try:
            return store.writer(ref, total=total, expected=expected)
        except Unavailable as exc:
            # The holder is a live process (an ingest lock dies with its process); when it
            # lets go, the blob exists or its partial data is ours to resume. Wait by asking
            # who holds the lock (no write transaction per look), then open again.
            while True:
                if not noted and progress is not None and time.monotonic() - since > 1:
                    progress.note(f"waiting: {exc.message}")
                    noted = True
                time.sleep(WAIT_POLL)
                try:
                    if not store.status(ref).holder:
                        break
                except NotFound:
                    break
        except FailedPrecondition:
            if restarted:
                raise
            restarted = True
            store.abort(ref)


def _sha(text: str) -> str:
    # tar member names need not be UTF-8: the reader keeps their bytes as surrogates
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _file_identity(path: str) -> str:
    """``dev:ino:size:mtime`` of a regular file (stdin for ``-``); '' for anything else."""
    try:
        st = os.fstat(0) if path == "-" else os.stat(path)
    except OSError:
        return ""
    if not stat.S_ISREG(st.st_mode):
        return ""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk or an exhausted quota."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def docker_entries(store: NamespacedStore, r: ArchiveIngest, lease: str, label: str, *,
                   index: bool = False) -> tuple[list[Entry], Descriptor | None]:
    """Synthesize a Docker schema 2 manifest per ``manifest.json`` entry (deterministic
    JSON, so a repeat gives the same digest); with ``index``, also an OCI index of them all.
    Raises NotFound (a Config or Layers member missing) or IntegrityError (a bad member).
    """
    doc = load_json(r.meta["manifest.json"], "manifest.json", label)
    if not isinstance(doc, list):
        raise ArchiveError(f"archive {label}: manifest.json is not a list")
    out: list[Entry] = []
    index_entries = []
    for i, ent in enumerate(doc):
        if not isinstance(ent, dict) or "Config" not in ent:
            raise ArchiveError(f"archive {label}: manifest.json entry {i} has no Config")
        tags = [str(t) for t in ent.get("RepoTags") or []]
        what = f"image {tags[0]}" if tags else f"manifest.json entry {i}"
        config = _docker_blob(r, str(ent["Config"]), what, "config", label)
        cfg = _config(store, config.digest)
        ids = (cfg.get("rootfs") or {}).get("diff_ids") or []
        names_in = [str(x) for x in ent.get("Layers") or []]
        if len(ids) != len(names_in):
            raise IntegrityError(f"{what}: config {config.digest} lists {len(ids)} diff IDs "
                                 f"for {len(names_in)} layers",
                                 hint="the archive is damaged; save or export it again")
        layers = []
        for n, lname in enumerate(names_in):
            b = _docker_blob(r, lname, what, f"layer {n + 1}", label)
            kind = _layer_type(store, b.digest, f"{what}: layer {n + 1} {lname}")
            # A plain tar's digest is its diffID: check it now, so that even --no-unpack
            # imports of docker archives are verified end to end.
            if kind == mt.DOCKER_LAYER and b.digest != ids[n]:
                raise IntegrityError(
                    f"{what}: layer {n + 1} {lname}: content {b.digest} does not match the "
                    f"config's diffID {ids[n]}",
                    hint="the archive is damaged or mixes images; save or export it again")
            layers.append({"mediaType": kind, "size": b.size, "digest": b.digest})
        man = {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
               "config": {"mediaType": mt.DOCKER_CONFIG, "size": config.size,
                          "digest": config.digest},
               "layers": layers}
        data = json.dumps(man, indent=3).encode()
        digest = put_blob(store, data, lease)
        platform = _platform(cfg)
        names = [refs.normalize(t) for t in tags]
        desc = Descriptor(mt.DOCKER_MANIFEST, digest, len(data), platform=platform)
        out.append(Entry(desc, names))
        for n in names or [""]:
            ann = {NAME_ANNOTATION: n, REF_ANNOTATION: refs.split(n)[1]} if n else {}
            index_entries.append(Descriptor(mt.DOCKER_MANIFEST, digest, len(data), ann,
                                            platform=platform).to_json())
    index_desc = None
    if index:
        data = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                           "manifests": index_entries}, indent=3).encode()
        index_desc = Descriptor(mt.OCI_INDEX, put_blob(store, data, lease), len(data))
    return out, index_desc

def _docker_blob(r: ArchiveIngest, member: str, what: str, kind: str, label: str) -> Blob:
    name = r.resolve(member)
    if name in r.bad:
        raise IntegrityError(f"{what}: {kind} {member}: {r.bad[name]}",
                             hint="the archive is damaged; save or export it again")
    b = r.blobs.get(name)
    if b is None:
        raise NotFound(f"{what}: {kind} {member}: missing from archive {label}",
                       hint="the archive is incomplete; save or export the image again")
    return b


def _layer_type(store: NamespacedStore, digest: str, what: str) -> str:
    """The docker media type of a layer blob, from its magic bytes (docker archives say
    nothing else about a layer's compression).
    """
    from cargohold.differ.api import Compression, media_type_for
    from cargohold.differ.compression import SNIFF_BYTES, sniff

    with store.reader(digest) as r:
        head = r.read_at(SNIFF_BYTES, 0)
    kind = sniff(head) or Compression.NONE
    if kind not in (Compression.NONE, Compression.GZIP, Compression.ZSTD):
        raise Unsupported(f"{what}: blob {digest} is {kind.value}-compressed",
                          hint="layers are tar, tar+gzip or tar+zstd: recompress the layer, "
                               "or save the image again")
    return media_type_for(kind, docker=True)


def _config(store: NamespacedStore, digest: str) -> dict[str, Any]:
    from cargohold.images.manifest import read_json

    return read_json(store, Descriptor(mt.DOCKER_CONFIG, digest, 1), "docker config")


def _platform(cfg: dict[str, Any]) -> Platform | None:
    if not cfg.get("os"):
        return None
    return Platform(str(cfg.get("os", "")), str(cfg.get("architecture", "")),
                    str(cfg.get("variant", "")), str(cfg.get("os.version", "")))
