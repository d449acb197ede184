"""Resumable blob downloads into the content store, readable while they run.

:class:`BlobDownload` brings one blob from a :class:`~.remote.Remote` into a namespaced store:

- Its ingest ref is stable per digest (``layer-sha256:…``, as containerd's ``MakeRefKey``), so
  the next pull of the same blob — in this process or after a ``kill -9`` — reopens the same
  ingest and continues from its offset with a ``Range`` request. The store re-hashes the prefix
  it has, so a torn tail can never pass the digest check. The writer's store has no lease: the
  ingest record carries its own expiry (``[gc] ingest_expiry``), so partial data outlives a
  dead pull's lease until the retry. A registry that ignores ``Range`` on that first request
  (200 instead of 206) makes the ingest start over from zero.
- Within a run, a dropped connection or a 5xx mid-body reopens at the current offset (up to
  :data:`STALLS` times without progress); a registry that then ignores ``Range`` has the
  bytes we have skipped, never rewritten.
- A blob larger than twice ``chunk`` (when the registry honours ``Range``) is fetched as
  ranged parts by ``parts`` workers and written in order; at most ``parts + 1`` parts wait in
  memory. Only the contiguous prefix is ever written, so a crash loses at most the parts in
  flight. Each read is pushed to the ingest's file at once (not left in the store's 4 MiB
  write buffer), so a single-stream download killed with -9 loses at most one read (1 MiB).
- :meth:`BlobDownload.reader` is a file object over the bytes as they arrive (the ingest's
  own file, then the same descriptor after the commit renamed it into place): unpack reads a
  layer while it downloads. Its last read waits for the commit, and raises the download's
  error instead of ending when the digest or size did not match.

The commit verifies size and digest and labels the blob (the caller's labels, e.g.
``containerd.io/distribution.source.<host>``); a blob the namespace has already costs no
request, one another namespace has costs none either (the store shares it).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from cargohold.errors import (
    AlreadyExists,
    CargoholdError,
    IntegrityError,
    NotFound,
    Unavailable,
)
from cargohold.fetch.api import Endpoint, RegistryError
from cargohold.fetch.remote import BlobStream, Remote
from cargohold.images.progress import Progress
from cargohold.store.api import Info
from cargohold.types import LABEL_DISTRIBUTION_SOURCE, Descriptor

if TYPE_CHECKING:
    from cargohold.metadata.content import NamespacedStore

READ = 1 << 20
STALLS = 3  # reopen attempts without progress before a download gives up
LOCK_WAIT = 600.0  # seconds to wait for another process that downloads the same blob
_WAKE = 0.05


class Cancelled(CargoholdError):
    """The download was stopped because the operation failed elsewhere."""


def ingest_ref(kind: str, digest: str) -> str:
    """The stable ingest ref of a blob (``layer-sha256:…``)."""
    return f"{kind}-{digest}"


def open_writer(store: NamespacedStore, ref: str, desc: Descriptor,
                check: Callable[[], None] | None = None) -> Any:
    """The store's writer for ``ref``, or None when the blob is there already.

    While another process holds the ingest (a concurrent pull of the same blob), wait for it
    to finish or go away, up to :data:`LOCK_WAIT` seconds; ``check`` may raise to stop.
    """
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        if check is not None:
            check()
        try:
            return store.writer(ref, total=desc.size, expected=desc.digest)
        except AlreadyExists:
            return None
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def merge_source_label(current: str, repo: str) -> str:
    """containerd's ``distribution.source`` value: sorted, unique, comma-separated repos."""
    repos = {r for r in current.split(",") if r}
    repos.add(repo)
    return ",".join(sorted(repos))


def add_labels(store: NamespacedStore, digest: str, labels: dict[str, str]) -> None:
    """Give the blob ``digest`` (which the namespace has) ``labels``: a
    ``distribution.source`` value is merged into the one it has, others replace theirs; no
    write when nothing changes. Raises NotFound when the blob is not in the namespace.
    """
    cur = store.info(digest).labels
    new = {}
    for k, v in labels.items():
        if k.startswith(LABEL_DISTRIBUTION_SOURCE):
            v = merge_source_label(cur.get(k, ""), v)
        if cur.get(k) != v:
            new[k] = v
    if new:
        store.update(Info(digest, 0, labels=new), [f"labels.{k}" for k in new])


class BlobDownload:
    """One blob into ``store`` (see the module docstring). Run :meth:`run` on a thread."""

    def __init__(self, remote: Remote, store: NamespacedStore, desc: Descriptor, *,
                 kind: str = "layer", labels: dict[str, str] | None = None,
                 progress: Progress | None = None, total_key: str = "",
                 chunk: int = 0, parts: int = 1, cancel: threading.Event | None = None,
                 backoff: float = 0.5) -> None:
        self.remote = remote
        self.store = store
        self.desc = desc
        self.kind = kind
        self.ref = ingest_ref(kind, desc.digest)
        self.labels = dict(labels or {})
        self.progress = progress or Progress()
        self.total_key = total_key
        self.chunk = chunk
        self.parts = max(1, parts)
        self.cancel = cancel or threading.Event()
        self.backoff = backoff
        self.ready = threading.Event()  # the file a reader follows is settled
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.status = ""  # "exists", "done", "failed"
        self.resumed_from = 0  # the ingest offset this run started at
        self.fetched = 0  # body bytes received in this run
        self.endpoint: Endpoint | None = None
        self._cond = threading.Condition()
        self._live: list[BlobStream] = []  # responses opened, for interrupt()

    # --- the download --------------------------------------------------------------------
    def run(self) -> None:
        """Download, verify and commit; never raises (see :attr:`error`, :meth:`wait`)."""
        key = self.desc.digest
        short = self.desc.digest.split(":", 1)[-1][:12]
        self.progress.start(key, f"{self.kind} {short}", self.desc.size)
        try:
            self._run()
            self.progress.done(key, self.status)
        except BaseException as exc:  # handed to whoever waits, in order
            self.error = exc
            self.status = "failed"
            self.progress.done(key, "failed")
        finally:
            self.ready.set()
            with self._cond:
                self.done.set()
                self._cond.notify_all()

    def wait(self) -> None:
        """Wait for the end; re-raise the download's error."""
        self.done.wait()
        if self.error is not None:
            raise self.error

    def _advance(self, n: int) -> None:
        self.progress.advance(self.desc.digest, n)
        if self.total_key:
            self.progress.advance(self.total_key, n)
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        if self._claim_existing():
            return
        w = self._open_writer()
        if w is None:
            return
        try:
            offset = w.status().offset
            self.resumed_from = offset
            if offset:
                self._advance(offset)
            if offset > self.desc.size:
                w.truncate(0)
                offset = 0
            stream: BlobStream | None = None
            if offset < self.desc.size:
                stream, offset = self._first(w, offset)
            self.ready.set()
            if stream is not None:
                if stream.ranged and self._use_parts(offset):
                    self._parallel(w, stream, offset)
                else:
                    self._sequential(w, stream, offset)
            try:
                w.commit(self.desc.size, self.desc.digest, self.labels)
            except AlreadyExists:
                self._label_existing()
            except IntegrityError:
                # Bad bytes: never resume from them.
                with contextlib.suppress(CargoholdError):
                    self.store.abort(self.ref)
                raise
            self.status = "done"
        finally:
            with contextlib.suppress(Exception):
                w.close()  # after a failure the ingest stays for the next pull

    def _claim_existing(self) -> bool:
        """True when the namespace (or, shared, the blob store) already has the blob."""
        try:
            self.store.info(self.desc.digest)
        except NotFound:
            pass
        else:
            self._label_existing()
            self.status = "exists"
            return True
        try:
            self.store.backend.info(self.desc.digest)
        except NotFound:
            return False
        try:
            w = self.store.writer(self.ref, total=self.desc.size, expected=self.desc.digest)
            w.commit(self.desc.size, self.desc.digest, self.labels)
        except AlreadyExists:
            self._label_existing()
        except (NotFound, IntegrityError):
            return False  # GC took it meanwhile (or it is damaged): download it
        self.status = "exists"
        return True

    def _label_existing(self) -> None:
        add_labels(self.store, self.desc.digest, self.labels)

    def _open_writer(self) -> Any:
        w = open_writer(self.store, self.ref, self.desc, self._check_cancel)
        if w is None:
            self._label_existing()
            self.status = "exists"
        return w

    def _open(self, desc: Descriptor, offset: int = 0, end: int = 0,
              endpoint: Endpoint | None = None) -> BlobStream:
        s = self.remote.open_blob(desc, offset, end, endpoint=endpoint)
        with self._cond:
            self._live.append(s)
        if self.cancel.is_set():
            s.abort()  # interrupt() ran while this request was being made
        return s

    def interrupt(self) -> None:
        """Stop now (from another thread): cancel, and abort the responses being read."""
        self.cancel.set()
        with self._cond:
            live = list(self._live)
        for s in live:
            s.abort()

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled(f"blob {self.desc.digest}: download stopped")

    def _use_parts(self, offset: int) -> bool:
        return self.chunk > 0 and self.parts > 1 and self.desc.size - offset > 2 * self.chunk

    def _first(self, w: Any, offset: int) -> tuple[BlobStream, int]:
        """The first request: from ``offset``, bounded to one chunk when parts may follow."""
        end = offset + self.chunk if self._use_parts(offset) else 0
        s = self._open(self.desc, offset, end)
        self.endpoint = s.endpoint
        if offset and not s.ranged:
            # The registry ignores Range: start over (nobody reads this ingest yet).
            w.truncate(0)
            self._advance(-offset)
            offset = 0
        elif s.ranged and s.start != offset:
            s.close()
            raise RegistryError(f"{s.endpoint.describe()}: blob {self.desc.digest}: asked "
                                f"for bytes from {offset}, got them from {s.start}")
        return s, offset

    def _sequential(self, w: Any, s: BlobStream, offset: int) -> None:
        size = self.desc.size
        stalls = 0
        skip = 0  # bytes of a Range-ignoring answer that we already have
        while True:
            try:
                while offset < size:
                    self._check_cancel()
                    data = s.read(READ)
                    if not data:
                        break
                    if skip:
                        cut = min(skip, len(data))
                        skip -= cut
                        data = data[cut:]
                        if not data:
                            continue
                    if offset + len(data) > size:
                        raise IntegrityError(f"{s.endpoint.describe()}: blob "
                                             f"{self.desc.digest}: more than its {size} bytes")
                    w.write(data)
                    # Push it to the file now (the store buffers 4 MiB): readers follow the
                    # file, and a kill -9 loses at most this one read.
                    w.digest()
                    offset += len(data)
                    self.fetched += len(data)
                    self._advance(len(data))
                    stalls = 0
                s.close()
                if offset >= size:
                    return
                raise _Dropped()
            except (_Dropped, *_read_errors()) as exc:
                s.close()
                self._check_cancel()  # an interrupt() aborted the read: stop, do not retry
                stalls += 1
                if stalls > STALLS:
                    raise RegistryError(f"{s.endpoint.describe()}: blob {self.desc.digest}: "
                                        f"connection kept dropping at byte {offset} of "
                                        f"{size}", hint="try again: the pull resumes from "
                                        "there") from (exc if not isinstance(exc, _Dropped)
                                                       else None)
                time.sleep(self.backoff * stalls)
                s = self._open(self.desc, offset, endpoint=s.endpoint)
                skip = offset if not s.ranged else 0

    def _fetch_part(self, start: int, end: int, stop: threading.Event) -> bytes:
        """Bytes ``[start, end)``, retried on dropped connections."""
        assert self.endpoint is not None
        stalls = 0
        parts: list[bytes] = []
        got = 0
        while True:
            self._check_cancel()
            if stop.is_set():
                raise Cancelled(f"blob {self.desc.digest}: part stopped")
            s = self._open(self.desc, start + got, end, endpoint=self.endpoint)
            try:
                if not s.ranged:
                    raise RegistryError(f"{s.endpoint.describe()}: blob {self.desc.digest}: "
                                        "stopped honouring Range requests",
                                        hint="try again with --chunk-size 0")
                while got < end - start:
                    self._check_cancel()
                    if stop.is_set():
                        raise Cancelled(f"blob {self.desc.digest}: part stopped")
                    data = s.read(min(READ, end - start - got))
                    if not data:
                        raise _Dropped()
                    parts.append(data)
                    got += len(data)
                return b"".join(parts)
            except (_Dropped, *_read_errors()) as exc:
                self._check_cancel()
                stalls += 1
                if stalls > STALLS:
                    raise RegistryError(f"{s.endpoint.describe()}: blob {self.desc.digest}: "
                                        f"connection kept dropping in bytes {start}-{end}"
                                        ) from (exc if not isinstance(exc, _Dropped) else None)
                time.sleep(self.backoff * stalls)
            finally:
                s.close()

    def _parallel(self, w: Any, first: BlobStream, offset: int) -> None:
        """Parts after the first from ``parts`` workers; the first from ``first`` here."""
        size = self.desc.size
        bounds = [(a, min(a + self.chunk, size)) for a in range(offset, size, self.chunk)]
        window = self.parts + 1
        stop = threading.Event()
        with ThreadPoolExecutor(self.parts, thread_name_prefix="cargohold-part") as pool:
            futs: dict[int, Future[bytes]] = {}
            nxt = 1
            try:
                for i in range(len(bounds)):
                    while nxt < len(bounds) and nxt < i + window:
                        futs[nxt] = pool.submit(self._fetch_part, *bounds[nxt], stop)
                        nxt += 1
                    if i == 0:
                        data = self._read_first(first, *bounds[0], stop)
                    else:
                        data = futs.pop(i).result()
                    w.write(data)
                    w.digest()  # on to the file: readers follow it (see _sequential)
                    self.fetched += len(data)
                    self._advance(len(data))
            except BaseException:
                stop.set()
                for f in futs.values():
                    f.cancel()
                raise

    def _read_first(self, s: BlobStream, start: int, end: int, stop: threading.Event) -> bytes:
        buf = bytearray()
        try:
            while len(buf) < end - start:
                self._check_cancel()
                data = s.read(min(READ, end - start - len(buf)))
                if not data:
                    break
                buf += data
        except _read_errors():
            self._check_cancel()
        finally:
            s.close()
        if len(buf) == end - start:
            return bytes(buf)
        return buf + self._fetch_part(start + len(buf), end, stop)

    # --- reading while it runs ------------------------------------------------------------
    def reader(self) -> _Follower:
        """A file object over the blob's bytes as they arrive (see the module docstring)."""
        return _Follower(self)

    def wait_more(self) -> None:
        with self._cond:
            if not self.done.is_set():
                self._cond.wait(_WAKE)


class _Dropped(Exception):
    """The body ended before the bytes we asked for."""


def _read_errors() -> tuple[type[BaseException], ...]:
    import requests
    import urllib3

    return (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError,
            TimeoutError)


class _Follower:
    """Reads a download's bytes as they reach the file (see :meth:`BlobDownload.reader`)."""

    def __init__(self, dl: BlobDownload) -> None:
        self.dl = dl
        self._f: Any = None
        self._pos = 0
        self.size = dl.desc.size

    def _open(self) -> None:
        dl = self.dl
        dl.ready.wait()
        if dl.error is not None:
            raise dl.error
        if dl.status in ("exists", "done"):
            self._f = dl.store.reader(dl.desc.digest)
            return
        try:
            self._f = dl.store.ingest_reader(dl.ref)
        except NotFound:
            dl.wait()  # committed between ready and now
            self._f = dl.store.reader(dl.desc.digest)

    def read(self, n: int = -1) -> bytes:
        if self._f is None:
            self._open()
        n = READ if n is None or n < 0 else n
        fd = self._f.fileno()
        while True:
            finished = self.dl.done.is_set()
            data = os.pread(fd, n, self._pos)
            if data:
                self._pos += len(data)
                return data
            if finished:
                if self.dl.error is not None:
                    raise self.dl.error
                return b""
            self.dl.wait_more()

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> _Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FollowingStore:
    """A store whose ``reader`` follows running downloads, and whose ``info``/``update`` of
    a blob still downloading wait for its commit (and raise its error). Everything else goes
    to ``inner``. Unpack reads through it, so it applies layers as they arrive without
    knowing about downloads.
    """

    def __init__(self, inner: Any, downloads: dict[str, BlobDownload]) -> None:
        self._inner = inner
        self._downloads = downloads

    def reader(self, digest: str) -> Any:
        dl = self._downloads.get(digest)
        if dl is not None and not (dl.done.is_set() and dl.error is None):
            return dl.reader()
        return self._inner.reader(digest)

    def _settled(self, digest: str) -> None:
        dl = self._downloads.get(digest)
        if dl is not None:
            dl.wait()

    def info(self, digest: str) -> Info:
        self._settled(digest)
        return self._inner.info(digest)

    def update(self, info: Info, fieldpaths: Any = ()) -> Info:
        self._settled(info.digest)
        return self._inner.update(info, fieldpaths)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return getattr(self._inner, name)
