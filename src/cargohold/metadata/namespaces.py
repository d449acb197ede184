"""Namespaces: create, list, label, and remove only when empty.

A namespace is created explicitly (``hold namespaces create``) or implicitly by the first
object written into it, as in containerd. Namespaces are not a security boundary: they decide
what each tenant *sees*; blobs and snapshots are shared underneath.
"""

from __future__ import annotations

from cargohold.errors import AlreadyExists, FailedPrecondition, NotFound
from cargohold.metadata.db import Tx
from cargohold.metadata.schema import ROOT, bucket, ns_bucket, ns_key, ns_path
from cargohold.types import validate_identifier, validate_labels


def exists(tx: Tx, ns: str) -> bool:
    return tx.exists(ns_key(ns)) or tx.has_prefix(ns_bucket(ns))


def ensure(tx: Tx, ns: str) -> None:
    """Create the namespace marker if it is missing (implicit creation)."""
    if not tx.exists(ns_key(ns)):
        validate_identifier("namespace", ns)
        tx.put(ns_key(ns), b"")


def create(tx: Tx, ns: str, labels: dict[str, str] | None = None) -> None:
    """Create ``ns``; AlreadyExists when it exists."""
    validate_identifier("namespace", ns)
    if exists(tx, ns):
        raise AlreadyExists(f"namespace {ns}: already exists")
    tx.put(ns_key(ns), b"")
    if labels:
        tx.write_labels(ns_key(ns), validate_labels(labels), replace=True)


def list_all(tx: Tx) -> list[str]:
    return list(tx.children(bucket(ROOT)))


def get_labels(tx: Tx, ns: str) -> dict[str, str]:
    if not exists(tx, ns):
        raise NotFound(f"namespace {ns}: not found", hint="list them with 'hold namespaces ls'")
    return tx.read_labels(ns_key(ns))


def set_labels(tx: Tx, ns: str, labels: dict[str, str]) -> dict[str, str]:
    """Merge labels (an empty value deletes one); return the result."""
    if not exists(tx, ns):
        raise NotFound(f"namespace {ns}: not found", hint="list them with 'hold namespaces ls'")
    tx.write_labels(ns_key(ns), validate_labels(labels), replace=False)
    return tx.read_labels(ns_key(ns))


def contents(tx: Tx, ns: str) -> dict[str, int]:
    """What the namespace still holds, by kind (only kinds with a non-zero count)."""
    counts: dict[str, int] = {}

    def count(kind: str, prefix: bytes) -> None:
        n = sum(1 for _ in tx.children(prefix))
        if n:
            counts[kind] = n

    count("images", ns_bucket(ns, "images"))
    count("blobs", ns_bucket(ns, "content", "blob"))
    count("ingests", ns_bucket(ns, "content", "ingests"))
    count("leases", ns_bucket(ns, "leases"))
    count("containers", ns_bucket(ns, "containers"))
    for sn in tx.children(ns_bucket(ns, "snapshots")):
        count(f"snapshots on {sn}", ns_bucket(ns, "snapshots", sn))
    return counts


def delete(tx: Tx, ns: str) -> None:
    """Remove an empty namespace; refuse (FailedPrecondition) saying what is left in it."""
    if not exists(tx, ns):
        raise NotFound(f"namespace {ns}: not found", hint="list them with 'hold namespaces ls'")
    left = contents(tx, ns)
    if left:
        what = ", ".join(f"{n} {k}" for k, n in left.items())
        raise FailedPrecondition(
            f"namespace {ns}: not empty, it still has {what}",
            hint=f"remove them first (e.g. 'hold -n {ns} images rm ...', "
                 f"'hold -n {ns} leases rm ...'), then run 'hold gc'")
    tx.delete_tree(ns_key(ns))
    tx.delete_prefix(ns_path(ns, "labels"))
