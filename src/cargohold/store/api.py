"""The blob store contract: what every content store (local, namespaced) provides.

A store is four roles (containerd's ``Manager + Provider + IngestManager + Ingester``), the
:class:`Store`, :class:`ReaderAt` and :class:`Writer` protocols of
:mod:`cargohold.store.protocols` (importable from here too):

- provider: :meth:`Store.reader` opens a committed blob for random access;
- manager: :meth:`Store.info`, :meth:`Store.update` (labels only), :meth:`Store.walk`,
  :meth:`Store.delete`;
- ingester: :meth:`Store.writer` opens (or resumes) the ingest named by ``ref``;
- ingest manager: :meth:`Store.status`, :meth:`Store.list_statuses`, :meth:`Store.abort`.

Until committed, bytes are visible only as an ingest; after commit only as a blob. A commit
verifies size and digest before the blob becomes visible and never makes a second copy of a
digest that exists already (:class:`~cargohold.errors.AlreadyExists`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cargohold._record import field, record
from cargohold.errors import IntegrityError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

    from cargohold.store.protocols import Store, Writer

READ_CHUNK = 1 << 20


@record(frozen=True)
class Info:
    """A committed blob: digest, size, times (ns since the epoch) and labels."""

    digest: str
    size: int
    created_at: int = 0
    updated_at: int = 0
    labels: dict[str, str] = field(default_factory=dict)


@record(frozen=True)
class Status:
    """An ingest in progress.

    ``offset`` is how many bytes are durable-enough to resume from; ``holder`` names the
    process that holds the ingest's lock (empty when nobody writes to it now).
    """

    ref: str
    offset: int
    total: int = 0
    expected: str = ""
    started_at: int = 0
    updated_at: int = 0
    holder: str = ""


CommitHook = Callable[[str, bool], None]
"""Called as ``hook(digest, existed)`` while the digest lock is held during a commit."""


def __getattr__(name: str) -> object:
    # The protocols live in store.protocols (typing's Protocol costs a hot command its
    # start-up); ``from cargohold.store.api import Store`` still finds them.
    if name in ("ReaderAt", "Writer", "Store"):
        from cargohold.store import protocols

        return getattr(protocols, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ResumeMismatch(IntegrityError):
    """The bytes an interrupted copy left in an ingest are not the start of this source."""


def copy_into(writer: Writer, src: BinaryIO, *, size: int = 0, expected: str = "",
              labels: dict[str, str] | None = None,
              progress: Callable[[int], None] | None = None,
              then: CommitHook | None = None, verify_resumed: bool = False,
              kept: Callable[[int], None] | None = None) -> str:
    """Stream ``src`` into ``writer`` from the writer's current offset, then commit.

    A resumed writer (offset > 0, left by an interrupted copy) skips what it already has:
    ``src`` is seeked when it can be, otherwise the bytes are read and dropped; commit's digest
    check is then what catches a wrong start. With ``verify_resumed`` (for refs without an
    ``expected`` digest, or when a wrong start must not fail the commit), the first ``offset``
    bytes of ``src`` are read and hashed instead (reading is cheap; writing them again is what
    a resume saves) and kept only if they hash as the writer's data does. Otherwise the
    ingest restarts from zero: a seekable ``src`` is copied again from its start; from a
    stream those bytes are gone, so :class:`ResumeMismatch` is raised (the ingest is empty
    now, and a repeat copies it whole). ``progress(n)`` is called for every ``n`` bytes
    written, and for the bytes a verified resume keeps; ``kept(n)`` once, with the number of
    bytes taken over from the earlier copy (0 when there were none or they were discarded).

    Returns the committed digest; raises what commit raises. Whatever fails, the writer is
    closed (its lock freed, its data kept for a later resume) before the error propagates.
    """
    try:
        offset = writer.status().offset
        if offset and verify_resumed:
            if not _same_prefix(writer, src, offset):
                offset = 0
                writer.truncate(0)
                try:
                    src.seek(0)
                except (OSError, AttributeError, ValueError) as exc:
                    raise ResumeMismatch(
                        f"ingest {writer.ref}: the {offset} bytes kept from an interrupted "
                        "copy are not the start of this source; they were discarded",
                        hint="run the command again: it copies the data from the start"
                    ) from exc
            elif progress is not None:
                progress(offset)
        elif offset:
            _skip(src, offset)
        if kept is not None:
            kept(offset)
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        readinto = getattr(src, "readinto", None)
        while True:
            if readinto is not None:
                n = readinto(view)
                if not n:
                    break
                writer.write(view[:n])
            else:
                data = src.read(READ_CHUNK)
                if not data:
                    break
                n = len(data)
                writer.write(data)
            if progress is not None:
                progress(n)
    except BaseException as exc:
        try:
            writer.close()
        except Exception as close_exc:  # noqa: BLE001 - the copy's own error is the one to raise
            exc.add_note(f"closing ingest {writer.ref} failed as well: {close_exc}")
        raise
    return writer.commit(size, expected, labels, then=then)  # commit always closes the writer


def _skip(src: BinaryIO, offset: int) -> None:
    try:
        src.seek(offset)
    except (OSError, AttributeError, ValueError):
        left = offset
        while left:
            chunk = src.read(min(left, READ_CHUNK))
            if not chunk:
                break
            left -= len(chunk)


def _same_prefix(writer: Writer, src: BinaryIO, offset: int) -> bool:
    """Whether the first ``offset`` bytes of ``src`` hash to what ``writer`` holds; ``src``
    is left right after them (or at its end, when it is shorter).
    """
    import hashlib

    algorithm, _, want = writer.digest().partition(":")
    h = hashlib.new(algorithm)
    left = offset
    while left:
        chunk = src.read(min(left, READ_CHUNK))
        if not chunk:
            return False
        h.update(chunk)
        left -= len(chunk)
    return h.hexdigest() == want


def walk_all(store: Store, filters: Iterable[str] = ()) -> list[Info]:
    """Every blob the store lists, as a list."""
    out: list[Info] = []
    store.walk(out.append, list(filters))
    return out
