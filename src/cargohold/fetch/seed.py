"""``hold airgap seed BUNDLE|DIR...``: images into the store (or a private registry), once.

Sources: bundle or image archives, and directories read as k3s reads its images directory —
every ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.zst``/``.tzst``, ``.tar.lz4``, ``.tar.bz2``/``.tbz``
file (imported with all platforms, verified, idempotent), and every ``.txt`` file (one image
reference per line, ``#`` comments; each pulled unless the store has it, and pinned either
way). Other files are reported and left alone.

Archives are imported ``jobs`` at a time (2 by default), reference lists after them.
Unchanged archives are skipped without being read: each seeded archive is recorded in
``<root>/airgap/seeded.json`` (per namespace) with its device, inode, size, mtime and ctime
and the images it gave; an archive whose stat is the same, and whose images still point at
the same targets, is skipped (k3s re-reads every tarball at every start). A crash before the
record is written just seeds it again next time.

Seeded images are pinned — labelled ``io.cri-containerd.pinned=pinned`` as containerd's CRI
pins images — and ``hold images rm`` refuses to drop a pinned image without ``--force``: a
node that loses seeded images to cleanup would go to the internet for them.

With ``push`` (a registry host), the images are also pushed to ``REGISTRY/<path>``
(:mod:`.mirrors`), all platforms the store has, after checking for collisions.

bzip2 and lz4 archives are decompressed to a temporary tar beside the store first (the
importer reads gzip, zstd and xz itself).
"""

from __future__ import annotations

import bz2
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import TYPE_CHECKING, Any

from cargohold import _fsutil
from cargohold._record import field, record
from cargohold.errors import CargoholdError, InvalidArgument, NotFound, Unsupported
from cargohold.fetch.mirrors import destinations
from cargohold.fetch.pull import Puller, PullOptions
from cargohold.fetch.push import Pusher, PushOptions
from cargohold.fetch.registry import Registry
from cargohold.images.manage import PINNED_LABEL as PINNED
from cargohold.images.progress import Progress

if TYPE_CHECKING:
    from cargohold.client import Client

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".tar.lz4", ".tar.bz2",
                    ".tbz")


@record
class SeedItem:
    """One source file and what seeding it did."""

    source: str
    kind: str  # "archive" or "list"
    status: str = ""  # "seeded", "unchanged", "ignored"
    images: dict[str, str] = field(default_factory=dict)  # name -> target digest
    new: list[str] = field(default_factory=list)  # names created or re-pointed
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "status": self.status,
                "images": self.images, "new": self.new, "seconds": round(self.seconds, 3)}


@record
class SeedResult:
    """Every source seeded, and where images were pushed."""

    items: list[SeedItem] = field(default_factory=list)
    pushed: dict[str, str] = field(default_factory=dict)  # name -> destination

    def to_json(self) -> dict[str, Any]:
        return {"items": [i.to_json() for i in self.items], "pushed": self.pushed}


@record
class SeedOptions:
    """What ``hold airgap seed`` can ask for."""

    push: str = ""  # registry host[:port]; "" = seed the local store only
    prefix_host: bool = False
    unpack: bool = True
    jobs: int = 2  # archives imported at once


def expand(sources: list[str]) -> list[tuple[str, str]]:
    """``(path, kind)`` for every source file, directories expanded (sorted, not recursive)."""
    out = []
    for s in sources:
        if os.path.isdir(s):
            for n in sorted(os.listdir(s)):
                p = os.path.join(s, n)
                if not os.path.isfile(p) or n.startswith("."):
                    continue
                out.append((p, _kind(n)))
        elif os.path.exists(s):
            out.append((s, "list" if s.endswith(".txt") else "archive"))
        else:
            raise NotFound(f"seed source {s}: no such file or directory",
                           hint="give bundles, image archives, .txt reference lists, or "
                                "directories of them")
    return out


def _kind(name: str) -> str:
    if name.endswith(".txt"):
        return "list"
    if name.endswith(ARCHIVE_SUFFIXES):
        return "archive"
    return "ignored"


class _State:
    """``<root>/airgap/seeded.json``: ``{namespace: {path: {"stat": [...], "images": {}}}}``."""

    def __init__(self, root: str, ns: str) -> None:
        import threading

        self._mu = threading.Lock()
        self.path = os.path.join(root, "airgap", "seeded.json")
        self.ns = ns
        try:
            with open(self.path, encoding="utf-8") as f:
                self.doc = json.load(f)
        except (FileNotFoundError, ValueError):
            self.doc = {}

    def get(self, path: str) -> dict[str, Any] | None:
        return self.doc.get(self.ns, {}).get(path)

    def put(self, path: str, stat: list[int], images: dict[str, str]) -> None:
        with self._mu:
            self.doc.setdefault(self.ns, {})[path] = {"stat": stat, "images": images}
            _fsutil.makedirs(os.path.dirname(self.path))
            _fsutil.atomic_write(self.path,
                                 json.dumps(self.doc, indent=1, sort_keys=True).encode())


def _stat(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class Seeder:
    """Seeds ``client``'s namespace (see the module docstring)."""

    def __init__(self, client: Client, registry: Registry, *,
                 progress: Progress | None = None) -> None:
        self.client = client
        self.registry = registry
        self.progress = progress or Progress()

    def seed(self, sources: list[str], opts: SeedOptions | None = None) -> SeedResult:
        """Seed every source; raises on the first source that fails (those before it stay
        seeded and recorded). With ``opts.push``, push every image afterwards.
        """
        from concurrent.futures import ThreadPoolExecutor

        opts = opts or SeedOptions()
        res = SeedResult()
        state = _State(self.client.root, self.client.namespace)
        res.items = [SeedItem(os.path.abspath(p), k) for p, k in expand(sources)]

        def run(item: SeedItem) -> None:
            t0 = time.monotonic()
            if item.kind == "ignored":
                item.status = "ignored"
            elif item.kind == "list":
                self._list(item, opts)
            else:
                self._archive(item, state, opts)
            item.seconds = time.monotonic() - t0

        # Archives several at once (decompression and hashing run beside each other's file
        # writes); reference lists afterwards, so they find what the archives brought.
        archives = [i for i in res.items if i.kind != "list"]
        with ThreadPoolExecutor(max(1, opts.jobs), thread_name_prefix="cargohold-seed") as pool:
            for f in [pool.submit(run, i) for i in archives]:
                f.result()
        for item in res.items:
            if item.kind == "list":
                run(item)
        if opts.push:
            self._push(res, opts)
        return res

    def _current(self, names: list[str]) -> dict[str, str]:
        from cargohold.metadata import images as records

        out = {}
        with self.client.db.view() as tx:
            for n in names:
                try:
                    out[n] = records.get(tx, self.client.namespace, n).target.digest
                except NotFound:
                    pass
        return out

    def _archive(self, item: SeedItem, state: _State, opts: SeedOptions) -> None:
        from cargohold.images.importer import Importer, ImportOptions

        stat = _stat(item.source)
        rec = state.get(item.source)
        if rec is not None and rec["stat"] == stat and rec["images"] and \
                self._current(list(rec["images"])) == rec["images"]:
            item.status = "unchanged"
            item.images = dict(rec["images"])
            return
        iopts = ImportOptions(all_platforms=True, unpack=opts.unpack and not opts.push,
                              labels={PINNED: "pinned"})
        with self._plain_tar(item.source) as path:
            r = Importer(self.client, progress=self.progress).import_archive(path, iopts)
        item.status = "seeded"
        item.new = list(r.images)
        item.images = self._current([n for e in r.entries for n in e.names])
        state.put(item.source, stat, item.images)

    def _plain_tar(self, path: str) -> Any:
        """``path`` itself, or a temporary plain tar of a bzip2/lz4 archive."""
        import contextlib

        @contextlib.contextmanager
        def ctx() -> Any:
            with open(path, "rb") as f:
                head = f.read(4)
            if head[:3] == b"BZh":
                opener = "bzip2"
            elif head == b"\x04\x22\x4d\x18":
                opener = "lz4"
            else:
                yield path
                return
            tmpdir = _fsutil.makedirs(os.path.join(self.client.root, "airgap", "tmp"))
            fd, tmp = tempfile.mkstemp(prefix="seed-", suffix=".tar", dir=tmpdir)
            try:
                with os.fdopen(fd, "wb") as out:
                    if opener == "bzip2":
                        with bz2.open(path, "rb") as src:
                            shutil.copyfileobj(src, out, 4 << 20)
                    else:
                        lz4 = shutil.which("lz4")
                        if lz4 is None:
                            raise Unsupported(f"archive {path}: lz4 compressed, and no lz4 "
                                              "command", hint="install lz4 (apt-get install "
                                                              "lz4), or recompress with zstd")
                        p = subprocess.run([lz4, "-dc", path], stdout=out,
                                           stderr=subprocess.PIPE)
                        if p.returncode != 0:
                            raise InvalidArgument(f"archive {path}: lz4 failed: "
                                                  f"{p.stderr.decode(errors='replace')[:200]}")
                yield tmp
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

        return ctx()

    def _list(self, item: SeedItem, opts: SeedOptions) -> None:
        from cargohold.images import refs

        with open(item.source, encoding="utf-8") as f:
            wanted = [line.split("#", 1)[0].strip() for line in f]
        names = []
        for lineno, w in enumerate(wanted, 1):
            if not w:
                continue
            try:
                names.append(refs.normalize(w))
            except InvalidArgument as exc:  # which of many files, and where
                exc.message = f"reference list {item.source} line {lineno}: {exc.message}"
                exc.args = (exc.message,)
                raise
        have = self._current(names)
        self._pin([n for n in names if n in have])
        puller = Puller(self.client, self.registry, progress=self.progress)
        for n in names:
            if n in have:
                continue
            popts = PullOptions(all_platforms=bool(opts.push),
                                unpack=opts.unpack and not opts.push,
                                labels={PINNED: "pinned"})
            puller.pull(n, popts)
            item.new.append(n)
        item.images = self._current(names)
        item.status = "seeded" if item.new else "unchanged"

    def _pin(self, names: list[str]) -> None:
        """Pin images a reference list names that were in the store before (pulled by hand,
        say): they are seeded now, and cleanup must not take them either.
        """
        from cargohold.metadata import images as records
        from cargohold.metadata.images import Image

        with self.client.db.update() as tx:
            for n in names:
                img = records.get(tx, self.client.namespace, n)
                if img.labels.get(PINNED) != "pinned":
                    records.update(tx, self.client.namespace,
                                   Image(n, img.target, {PINNED: "pinned"}),
                                   [f"labels.{PINNED}"])

    def _push(self, res: SeedResult, opts: SeedOptions) -> None:
        images: dict[str, str] = {}
        for item in res.items:
            images.update(item.images)
        dests = destinations(images, opts.push, prefix_host=opts.prefix_host)
        pusher = Pusher(self.client, self.registry, progress=self.progress)
        pushed: set[str] = set()
        for name, dest in sorted(dests.items()):
            if dest in pushed:
                continue
            try:
                pusher.push(name, dest, PushOptions(present_only=True))
            except CargoholdError as exc:
                exc.message = f"seed --push {name} → {dest}: {exc.message}"
                exc.args = (exc.message,)
                raise
            pushed.add(dest)
            res.pushed[name] = dest
