"""Snapshot bookkeeping shared by every backend: ids, kinds, parents, labels, stored usage.

Each backend keeps its own LMDB environment (``<backend root>/metadata/``), apart from the
metadata database of :mod:`cargohold.metadata`, so a backend can be opened, checked and
repaired on its own. The tree of keys (segments joined by NUL, see :mod:`cargohold._lmdb`)::

    v1/seq                                   last internal id handed out (ids are never reused)
    v1/snapshots/<key>/id                    internal id (decimal; names the backend's object)
    v1/snapshots/<key>/kind                  1 view, 2 active, 3 committed (api.Kind)
    v1/snapshots/<key>/parent                key of the committed parent ("" or absent: none)
    v1/snapshots/<key>/createdat, updatedat  nanoseconds since the epoch
    v1/snapshots/<key>/labels/<k>            labels
    v1/snapshots/<key>/size, inodes          usage, committed snapshots only (computed once)
    v1/ids/<id>                              key of the snapshot holding that id
    v1/parents/<parent id>/<child id>        key of the child (back-link: one seek finds children)

A backend does its filesystem work *inside* the write transaction of :meth:`MetaStore.update`:
LMDB allows one writer at a time across all processes, so that transaction is also the lock that
serialises prepare, commit and remove on one backend root. Helpers never commit for their
caller. Changing this tree needs a new ``v2`` prefix and a migration here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cargohold._lmdb import SEP, Env, Tx
from cargohold._record import record
from cargohold.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from cargohold.filters import adaptor_for
from cargohold.snapshotters.api import Info, Kind, Usage, kind_filter
from cargohold.types import apply_field_paths, now_ns, validate_labels

_V1 = b"v1"
_SEQ = _V1 + SEP + b"seq"
_SNAPS = _V1 + SEP + b"snapshots" + SEP
_IDS = _V1 + SEP + b"ids" + SEP
_PARENTS = _V1 + SEP + b"parents" + SEP
MAX_KEY_BYTES = 400  # leaves room for the sub-keys under LMDB's 511-byte key limit


@record(frozen=True)
class Snapshot:
    """An active or view snapshot as a backend needs it to build mounts.

    ``parent_ids`` lists the internal ids of the whole parent chain, nearest parent first.
    """

    id: str
    kind: Kind
    parent_ids: tuple[str, ...] = ()


def _rec(key: str) -> bytes:
    b = key.encode()
    if not key or len(b) > MAX_KEY_BYTES or "\x00" in key:
        raise InvalidArgument(f"snapshot key {key[:60]!r}: empty, too long or contains NUL",
                              hint=f"keys are 1 to {MAX_KEY_BYTES} bytes")
    return _SNAPS + b


def _f(rec: bytes, field: str) -> bytes:
    return rec + SEP + field.encode()


class MetaStore(Env):
    """The bookkeeping database of one backend root.

    Use :meth:`view` for reads and :meth:`update` for changes; every other method takes the
    transaction (``tx``) from its caller and never commits it. Errors follow the snapshotter
    contract of :mod:`cargohold.snapshotters.api`.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, "snapshot metadata")

    # --- reads -------------------------------------------------------------------------------
    def _kind(self, tx: Tx, key: str) -> tuple[bytes, Kind]:
        rec = _rec(key)
        raw = tx.get(_f(rec, "kind"))
        if raw is None:
            raise NotFound(f"snapshot {key}: not found")
        return rec, Kind(int(raw))

    def get_snapshot(self, tx: Tx, key: str) -> Snapshot:
        """The active or view snapshot ``key`` with its parent chain.

        Raises NotFound when missing and FailedPrecondition when it is committed.
        """
        rec, kind = self._kind(tx, key)
        if kind == Kind.COMMITTED:
            raise FailedPrecondition(f"snapshot {key}: committed, not active or view",
                                     hint="prepare or view a child of it to get mounts")
        return Snapshot(tx.get_str(_f(rec, "id")), kind,
                        tuple(self._chain(tx, tx.get_str(_f(rec, "parent")))))

    def get_active(self, tx: Tx, key: str) -> Snapshot:
        """The active snapshot ``key``, about to be committed: a view or a committed one is
        refused with FailedPrecondition, a missing one with NotFound.
        """
        _, info, _ = self.get_info(tx, key)
        if info.kind != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key}: {info.kind} cannot be committed",
                                     hint="only snapshots made by prepare can be committed")
        return self.get_snapshot(tx, key)

    def _chain(self, tx: Tx, parent: str) -> list[str]:
        ids = []
        while parent:
            rec = _rec(parent)
            ids.append(tx.get_str(_f(rec, "id")))
            parent = tx.get_str(_f(rec, "parent"))
        return ids

    def parent_ids(self, tx: Tx, key: str) -> list[str]:
        """Ids of ``key`` (any kind) followed by its whole parent chain."""
        rec, _ = self._kind(tx, key)
        return [tx.get_str(_f(rec, "id"))] + self._chain(tx, tx.get_str(_f(rec, "parent")))

    def get_info(self, tx: Tx, key: str) -> tuple[str, Info, Usage]:
        """(id, Info, stored Usage) of any kind; Usage is zero unless committed."""
        rec, kind = self._kind(tx, key)
        info = Info(key, kind, tx.get_str(_f(rec, "parent")), tx.read_labels(rec),
                    tx.get_int(_f(rec, "createdat")), tx.get_int(_f(rec, "updatedat")))
        usage = Usage(tx.get_int(_f(rec, "size")), tx.get_int(_f(rec, "inodes")))
        return tx.get_str(_f(rec, "id")), info, usage

    def walk_info(self, tx: Tx, fn: Callable[[Info], None], filters: Sequence[str] = ()) -> None:
        """Call ``fn`` for each snapshot matching ``filters`` (kind, name, parent, labels.<k>).

        ``fn`` runs inside the caller's transaction; to call the backend again from ``fn``
        (a stat inside a walk), collect first and call after the transaction ends.
        """
        flt = kind_filter(filters)
        for key in list(tx.children(_SNAPS)):
            _, info, _ = self.get_info(tx, key)
            fields = {"kind": info.kind.name.lower(), "name": info.name, "parent": info.parent}
            if flt.match(adaptor_for(fields, info.labels)):
                fn(info)

    def id_map(self, tx: Tx) -> dict[str, str]:
        """Every internal id in use, mapped to its key: what a cleanup must keep."""
        n = len(_IDS)
        return {k[n:].decode(): v.decode() for k, v in tx.scan(_IDS)}

    def has_children(self, tx: Tx, id: str) -> bool:
        """Whether any snapshot names the snapshot with this id as its parent."""
        return tx.has_prefix(_PARENTS + id.encode() + SEP)

    # --- writes ------------------------------------------------------------------------------
    def create(self, tx: Tx, kind: Kind, key: str, parent: str = "",
               labels: dict[str, str] | None = None) -> Snapshot:
        """Record a new active or view snapshot and hand out its id.

        Raises AlreadyExists for a taken key, NotFound for a missing parent and
        InvalidArgument for a parent that is not committed or a kind that is not active/view.
        """
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise InvalidArgument(f"snapshot {key}: kind {kind} cannot be created directly")
        rec = _rec(key)
        if tx.exists(_f(rec, "kind")):
            raise AlreadyExists(f"snapshot {key}: already exists")
        parent_ids: list[str] = []
        if parent:
            try:
                prec, pkind = self._kind(tx, parent)
            except NotFound:
                raise NotFound(f"parent snapshot {parent}: not found",
                               hint="commit the parent first, or check its name") from None
            if pkind != Kind.COMMITTED:
                raise InvalidArgument(f"parent snapshot {parent}: {pkind} is not committed",
                                      hint="only committed snapshots can be parents")
            parent_ids = self._chain(tx, parent)
        new_id = str(tx.get_int(_SEQ) + 1)
        tx.put(_SEQ, new_id)
        now = now_ns()
        tx.put(_f(rec, "id"), new_id)
        tx.put(_f(rec, "kind"), int(kind))
        tx.put(_f(rec, "createdat"), now)
        tx.put(_f(rec, "updatedat"), now)
        if parent:
            tx.put(_f(rec, "parent"), parent)
            tx.put(_PARENTS + parent_ids[0].encode() + SEP + new_id.encode(), key)
        tx.write_labels(rec, validate_labels(dict(labels or {})), replace=True)
        tx.put(_IDS + new_id.encode(), key)
        return Snapshot(new_id, kind, tuple(parent_ids))

    def update_info(self, tx: Tx, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Change labels only: ``labels`` replaces them all, ``labels.<k>`` sets or (with an
        empty or absent value) deletes one; no fieldpaths replaces all labels.
        """
        rec, _ = self._kind(tx, info.name)
        labels, _ = apply_field_paths(tx.read_labels(rec), info.labels, fieldpaths,
                                      subject=f"snapshot {info.name}")
        tx.write_labels(rec, labels, replace=True)
        tx.put(_f(rec, "updatedat"), now_ns())
        return self.get_info(tx, info.name)[1]

    def commit_active(self, tx: Tx, key: str, name: str, usage: Usage,
                      labels: dict[str, str] | None = None) -> str:
        """Turn active ``key`` into committed ``name`` with the same id; return that id.

        ``key`` stops existing; labels are replaced by ``labels``; ``usage`` is stored for good.
        Raises NotFound (no key), FailedPrecondition (not active), AlreadyExists (name taken).
        """
        rec, kind = self._kind(tx, key)
        if kind != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key}: {kind} cannot be committed",
                                     hint="only snapshots made by prepare can be committed")
        nrec = _rec(name)
        if tx.exists(_f(nrec, "kind")):
            raise AlreadyExists(f"snapshot {name}: already exists")
        sid = tx.get_str(_f(rec, "id"))
        parent = tx.get_str(_f(rec, "parent"))
        tx.delete_tree(rec)
        now = now_ns()
        tx.put(_f(nrec, "id"), sid)
        tx.put(_f(nrec, "kind"), int(Kind.COMMITTED))
        tx.put(_f(nrec, "createdat"), now)
        tx.put(_f(nrec, "updatedat"), now)
        tx.put(_f(nrec, "size"), usage.size)
        tx.put(_f(nrec, "inodes"), usage.inodes)
        if parent:
            tx.put(_f(nrec, "parent"), parent)
            pid = tx.get_str(_f(_rec(parent), "id"))
            tx.put(_PARENTS + pid.encode() + SEP + sid.encode(), name)
        tx.write_labels(nrec, validate_labels(dict(labels or {})), replace=True)
        tx.put(_IDS + sid.encode(), name)
        return sid

    def remove(self, tx: Tx, key: str) -> tuple[str, Kind]:
        """Forget ``key``; return its (id, kind) so the backend can delete its object.

        Raises NotFound, or FailedPrecondition when other snapshots have it as their parent.
        """
        rec, kind = self._kind(tx, key)
        sid = tx.get_str(_f(rec, "id"))
        if self.has_children(tx, sid):
            raise FailedPrecondition(f"snapshot {key}: cannot remove a snapshot with children",
                                     hint="remove its children first")
        parent = tx.get_str(_f(rec, "parent"))
        if parent:
            pid = tx.get_str(_f(_rec(parent), "id"))
            tx.delete(_PARENTS + pid.encode() + SEP + sid.encode())
        tx.delete_tree(rec)
        tx.delete(_IDS + sid.encode())
        return sid, kind
