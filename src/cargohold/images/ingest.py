"""Pass 1 of an import: archive members into the content store; docker manifests made up.

:class:`ArchiveIngest` consumes :meth:`cargohold.images.archive.Archive.members` once. Files
under ``blobs/<alg>/<hex>`` are written with that digest as ``expected``: a blob the namespace
already has costs no bytes, and one whose content hashes otherwise is recorded in ``bad``
(its ingest aborted) so that the importer can name the image and platform it belongs to.
Other files (docker layers and configs) are hashed on the way in; progress names them by
member until their digest is known, then by digest (``blob <12 hex>``, as layout blobs).
``oci-layout``, ``index.json``, ``manifest.json`` and ``repositories`` are kept in memory
(20 MiB at most);
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
import os
import re
import stat
import time
from typing import TYPE_CHECKING, Any

from cargohold._record import record
from cargohold.errors import (
    AlreadyExists,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unsupported,
)
from cargohold.images import mediatypes as mt
from cargohold.images import refs
from cargohold.images.archive import ArchiveError, Member
from cargohold.images.manifest import MAX_JSON, loads
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


@record
class Entry:
    """A top-level manifest or index of an archive, with the names it carries."""

    desc: Descriptor
    names: list[str]


@record
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
        short = _blob_label(expected) if expected else _member_label(m.name)
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
        # Now that its digest is known, a member is named by it, as a blob of a layout is.
        self.progress.done(key, "exists" if any(existed) else "done", _blob_label(digest))
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


def _blob_label(digest: str) -> str:
    """``blob <12 hex>``: how progress names a blob whose digest is known."""
    return f"blob {digest.split(':', 1)[-1][:12]}"


_HEX64 = re.compile(r"(sha256:)?([0-9a-f]{12})[0-9a-f]{52}")


def _member_label(name: str) -> str:
    """How progress names a member until its digest is known (docker layers and configs are
    hashed on the way in): ``member 25c993c526f1/layer.tar``, every 64-hex run cut to 12.
    """
    short = _HEX64.sub(lambda mo: mo.group(2), name)
    return f"member {short if len(short) <= 33 else short[:32] + '…'}"


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
        return loads(data)
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
    """Convert ``manifest.json`` as containerd 1.6 does (``images/archive/importer.go``), byte
    for byte, so that ``hold`` and ``ctr`` give the same image digest for the same archive.

    Per entry, a Docker schema 2 manifest ``{"schemaVersion":2,"mediaType":...,"config":
    {...},"layers":[...]}`` written as Go's ``json.Marshal`` writes it (compact, descriptor
    fields in the order mediaType, digest, size); the config blob is kept as it is. A layer is
    typed from its first bytes: a plain tar ``...rootfs.diff.tar``, gzip ``...tar.gzip``. With
    ``index``, an OCI index of them all, as containerd writes it (no mediaType field; one
    descriptor per RepoTag with the ``io.containerd.image.name`` and
    ``org.opencontainers.image.ref.name`` annotations, one bare descriptor for an entry without
    tags; each with the platform containerd derives from the config, see
    :func:`containerd_platform`).

    Two deliberate differences, both where containerd's result depends on more than the
    archive or is wrong: a zstd layer is typed ``...tar.zstd`` (containerd 1.6 calls it gzip,
    which the differ here refuses to unpack, since the data contradicts it); and containerd
    replaces a plain-tar layer by any compressed blob its store already labels
    ``containerd.io/uncompressed`` = that digest, so its digest depends on what was pulled
    before, while here the same archive always gives the same manifest.

    Raises NotFound (a Config or Layers member missing) or IntegrityError (a bad member, or
    a plain-tar layer whose digest is not the config's diffID).
    """
    doc = load_json(r.meta["manifest.json"], "manifest.json", label)
    if not isinstance(doc, list):
        raise ArchiveError(f"archive {label}: manifest.json is not a list")
    out: list[Entry] = []
    index_entries: list[dict[str, Any]] = []
    for i, ent in enumerate(doc):
        if not isinstance(ent, dict) or "Config" not in ent:
            raise ArchiveError(f"archive {label}: manifest.json entry {i} has no Config")
        where = f"archive {label}: manifest.json entry {i}"
        if not isinstance(ent["Config"], str):
            raise ArchiveError(f"{where}: Config is not a string")
        tags = _strings(ent.get("RepoTags"), f"{where}: RepoTags")
        what = f"image {tags[0]}" if tags else f"manifest.json entry {i}"
        config = _docker_blob(r, ent["Config"], what, "config", label)
        cfg = _config(store, config.digest)
        rootfs = cfg.get("rootfs") or {}
        if not isinstance(rootfs, dict):
            raise ArchiveError(f"{what}: config {config.digest}: rootfs is not an object")
        ids = _strings(rootfs.get("diff_ids"), f"{what}: config {config.digest}: diff_ids")
        names_in = _strings(ent.get("Layers"), f"{where}: Layers")
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
            layers.append({"mediaType": kind, "digest": b.digest, "size": b.size})
        man = {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
               "config": {"mediaType": mt.DOCKER_CONFIG, "digest": config.digest,
                          "size": config.size},
               "layers": layers}
        data = go_json(man)
        digest = put_blob(store, data, lease)
        try:
            names = [refs.normalize(t) for t in tags]
        except InvalidArgument as exc:  # damaged data, not a usage error (exit 1, not 2)
            raise ArchiveError(f"{where}: RepoTags: {exc.message}",
                               hint="the archive is damaged; save or export it again") from exc
        desc = Descriptor(mt.DOCKER_MANIFEST, digest, len(data), platform=_platform(cfg))
        out.append(Entry(desc, names))
        for n in names or [""]:
            d: dict[str, Any] = {"mediaType": mt.DOCKER_MANIFEST, "digest": digest,
                                 "size": len(data)}
            if n:  # a Go map: its keys come out sorted
                d["annotations"] = {NAME_ANNOTATION: n, REF_ANNOTATION: refs.split(n)[1]}
            d["platform"] = containerd_platform(cfg)
            index_entries.append(d)
    index_desc = None
    if index:
        # A nil slice in Go: an archive without entries gives "manifests":null.
        data = go_json({"schemaVersion": 2, "manifests": index_entries or None})
        index_desc = Descriptor(mt.OCI_INDEX, put_blob(store, data, lease), len(data))
    return out, index_desc


def _strings(value: Any, what: str) -> list[str]:
    """A JSON list of strings (null or absent: none); anything else is a damaged archive."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ArchiveError(f"{what} is not a list of strings",
                           hint="the archive is damaged; save or export it again")
    return value


#: containerd 1.6 ``platforms.normalizeArch`` for an empty variant (all it is ever given here)
_CONTAINERD_ARCH = {"i386": ("386", ""), "x86_64": ("amd64", ""), "x86-64": ("amd64", ""),
                    "aarch64": ("arm64", ""), "armhf": ("arm", "v7"), "armel": ("arm", "v6"),
                    "arm": ("arm", "v7")}


def containerd_platform(cfg: dict[str, Any]) -> dict[str, str]:
    """The platform containerd 1.6 records beside a manifest converted from a docker archive.

    ``images.Platforms`` reads only the config's ``os`` and ``architecture`` (never its
    variant, ``os.version`` or ``os.features``) and normalises them: lower case, an empty OS
    becomes the host's (``runtime.GOOS``), ``macos`` becomes ``darwin``, ``x86_64`` ``amd64``,
    ``aarch64`` ``arm64``, ``i386`` ``386``, and ``arm`` gains the variant ``v7`` (``armel``
    ``v6``). An empty architecture stays empty.
    """
    os_ = str(cfg.get("os") or "").lower() or os.uname().sysname.lower()
    if os_ == "macos":
        os_ = "darwin"
    arch = str(cfg.get("architecture") or "").lower()
    arch, variant = _CONTAINERD_ARCH.get(arch, (arch, ""))
    p = {"architecture": arch, "os": os_}
    if variant:
        p["variant"] = variant
    return p


_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _go_string(s: str) -> str:
    """A JSON string as Go 1.19's encoding/json writes it.

    UTF-8 is kept; ``<``, ``>``, ``&``, U+2028, U+2029 and control characters other than
    newline, return and tab become six-character ``u00XX`` escapes; a lone surrogate (invalid
    UTF-8 in Go) becomes U+FFFD.
    """
    out = []
    for ch in s:
        o = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif o < 0x20 or ch in "<>&\u2028\u2029":
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _go_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _go_string(v)
    if isinstance(v, dict):
        return "{" + ",".join(f"{_go_string(k)}:{_go_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_go_value(x) for x in v) + "]"
    raise TypeError(f"go_json: cannot encode {type(v).__name__}")


def go_json(value: Any) -> bytes:
    """``value`` encoded as Go's ``json.Marshal`` encodes the same struct: compact, keys in
    the order given (a struct's field order; give a Go map's keys sorted), strings escaped as
    Go escapes them. Only None, bool, int, str, dict and list occur in manifests.
    """
    return _go_value(value).encode()


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
