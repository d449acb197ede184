r"""The metadata schema: an ordered tree of bucket paths in one LMDB database.

A key is its bucket path with the segments joined by NUL (``\\x00``), so a bucket is a key
prefix, listing a bucket is a prefix scan, and a child always sorts right after its parent.
Segments may hold any text but NUL; LMDB caps a whole key at 511 bytes.

::

    version                                   schema version (decimal)
    epoch                                     mutation counter, bumped by every write txn
    removals                                  records removed (images, blobs, snapshots,
                                              leases), bumped by the txn that removes them;
                                              read by hold serve's GC scheduler
    gcactive                                  set while a collection runs (a deadline, ns)
    gclog/<epoch>                             JSON [key, value] of the v1 puts of that txn,
                                              written only while gcactive (the GC's barrier)
    v1/<ns>                                   namespace marker (empty value)
    v1/<ns>/labels/<k>                        namespace labels
    v1/<ns>/images/<name>/target              descriptor JSON {mediaType,digest,size,annotations}
    v1/<ns>/images/<name>/{createdat,updatedat}
    v1/<ns>/images/<name>/labels/<k>
    v1/<ns>/content/blob/<digest>/{size,createdat,updatedat}
    v1/<ns>/content/blob/<digest>/labels/<k>
    v1/<ns>/content/ingests/<ref>/{ref,expected,expireat}
    v1/<ns>/snapshots/<sn>/<key>/{name,parent,createdat,updatedat}
    v1/<ns>/snapshots/<sn>/<key>/children/<key>
    v1/<ns>/snapshots/<sn>/<key>/labels/<k>
    v1/<ns>/leases/<id>/{createdat}
    v1/<ns>/leases/<id>/labels/<k>
    v1/<ns>/leases/<id>/content/<digest>
    v1/<ns>/leases/<id>/snapshots/<sn>/<key>
    v1/<ns>/leases/<id>/ingests/<ref>
    v1/<ns>/leases/<id>/images/<name>
    v1/<ns>/containers/<id>/{image,runtime,spec,snapshotter,snapshotkey,createdat,updatedat}
    v1/<ns>/containers/<id>/labels/<k>
    quarantine/<digest>/<ns>                  {size, labels} of a record fsck moved aside with
                                              its corrupt blob; restored in every namespace at
                                              the digest's next commit (v2)

Lease labels in ``cargohold.owner/{pid,start,boot,pidns,purpose}`` name the process that owns
an internal lease (see :mod:`cargohold.leases.owner`); every ingest record has ``expireat``,
leased or not, so a partial ingest outlives a dead owner's lease long enough to be resumed.

Values: text as UTF-8; sizes and times (nanoseconds since the epoch) as decimal ASCII;
``ingests/<ref>/ref`` is the backend ingest ref; a snapshot's ``name`` is its backend key.

Migrations are ordered ``(version, description, function(tx))``; :func:`migrate` runs the
pending ones in the opening write transaction. Change this tree only with a new migration.
"""

from __future__ import annotations

from collections.abc import Callable

from cargohold._lmdb import MAX_KEY, SEP
from cargohold.errors import FailedPrecondition, InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cargohold.metadata.db import Tx

VERSION_KEY = b"version"
EPOCH_KEY = b"epoch"
REMOVALS_KEY = b"removals"
ROOT = "v1"

SCHEMA_VERSION = 2
# The oldest version this code reads as it is, without migrating (what a read-only root
# needs): every migration since only added buckets.
READABLE_FROM = 1
QUARANTINE = "quarantine"



def key(*parts: str) -> bytes:
    """The LMDB key of a bucket path; raises InvalidArgument for NUL or oversize keys."""
    enc = []
    for p in parts:
        if "\x00" in p:
            raise InvalidArgument(f"name {p!r}: contains a NUL byte")
        enc.append(p.encode())
    k = SEP.join(enc)
    if len(k) > MAX_KEY:
        raise InvalidArgument(
            f"name {parts[-1][:60]!r}...: too long to store (key of {len(k)} bytes, max "
            f"{MAX_KEY})", hint="use a shorter name or label key")
    return k


def bucket(*parts: str) -> bytes:
    """The prefix every key inside the bucket ``parts`` starts with."""
    return key(*parts) + SEP


def split(k: bytes) -> list[str]:
    """The segments of a key."""
    return k.decode().split("\x00")


def ns_key(ns: str) -> bytes:
    return key(ROOT, ns)


def ns_bucket(ns: str, *parts: str) -> bytes:
    return bucket(ROOT, ns, *parts)


def ns_path(ns: str, *parts: str) -> bytes:
    return key(ROOT, ns, *parts)


# --- migrations --------------------------------------------------------------------------------


def _initial(tx: Tx) -> None:
    """Version 1: the tree above; nothing to convert from."""


def _quarantine_bucket(tx: Tx) -> None:
    """Version 2: adds the ``quarantine`` bucket (empty until fsck moves a blob aside)."""


MIGRATIONS: list[tuple[int, str, Callable[[Tx], None]]] = [
    (1, "initial schema", _initial),
    (2, "quarantine bucket for blobs fsck moved aside", _quarantine_bucket),
]


def migrate(tx: Tx) -> list[int]:
    """Run the migrations newer than the stored version; return the versions applied.

    Refuses a database written by a newer cargohold (it would misread it).
    """
    raw = tx.get(VERSION_KEY)
    current = int(raw) if raw else 0
    if current > SCHEMA_VERSION:
        raise FailedPrecondition(
            f"metadata schema version {current}: newer than this cargohold understands "
            f"({SCHEMA_VERSION})", hint="upgrade cargohold before opening this root")
    applied = []
    for version, _desc, fn in MIGRATIONS:
        if version > current:
            fn(tx)
            tx.put(VERSION_KEY, str(version).encode())
            applied.append(version)
    return applied
