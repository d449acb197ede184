"""fsck for the devmapper snapshotter: the bookkeeping against the pool's thin devices.

What is compared, in both directions:

- the pool's health (``dmsetup status <pool>``): a mode other than ``rw`` or ``needs_check``
  is reported (repairing a pool is thin_repair's job, not ours);
- snapshot records against their thin-device records (a record without a thin id);
- loaded devices (``dmsetup ls --target thin``) named ``<pool>-snap-<tid>`` against the thin
  ids the bookkeeping owns;
- the thin ids in the pool's metadata against the bookkeeping, when ``thin_ls``
  (thin-provisioning-tools) is installed: it reads a metadata snapshot
  (``message reserve_metadata_snap`` ... ``release_metadata_snap``), the only way to see thin
  ids that are not loaded. Without it this direction is skipped.
- removals whose teardown has not finished.

With ``repair`` everything runs in one bookkeeping write transaction, so no prepare allocates
an id while leftovers are judged: unowned devices and thin ids are deleted, records whose thin
id is gone are dropped unless children build on them, and pending removals are finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cargohold._lmdb import SEP, Tx
from cargohold.errors import CargoholdError
from cargohold.snapshotters.dmpool import delete_thin

if TYPE_CHECKING:
    from cargohold.snapshotters.devmapper import Devmapper


def fsck(d: Devmapper, *, repair: bool = False) -> list[str]:
    """Where the bookkeeping of ``d`` and its pool disagree, one message each (see module)."""
    problems: list[str] = []
    with d._diagnosed():
        st = d.pool.status()
        if st.mode != "rw" or st.needs_check:
            problems.append(f"thin pool {d.pool.name}: not healthy (mode {st.mode}"
                            f"{', needs_check' if st.needs_check else ''}); dmsetup status "
                            f"{d.pool.name}: {st.line}")
        if repair:
            with d.ms.update() as tx:
                _check(d, tx, problems, True)
        else:
            with d.ms.view() as tx:
                _check(d, tx, problems, False)
    return problems


def _owners(d: Devmapper, tx: Tx) -> dict[int, str]:
    prefix = d.key("thin") + SEP
    return {int(k[len(prefix):]): v.decode() for k, v in tx.scan(prefix)}


def pool_thin_ids(d: Devmapper) -> set[int] | None:
    """Thin ids in the pool's metadata, or None when thin_ls is not installed."""
    from cargohold.snapshotters import devmapper

    if not devmapper._have("thin_ls"):
        return None
    meta = d.pool.table()[3]  # the metadata device as major:minor
    d.pool.message("reserve_metadata_snap")
    try:
        out = d.runner.run(["thin_ls", "--metadata-snap", "-o", "DEV", "--no-headers",
                            f"/dev/block/{meta}"]).stdout
    finally:
        d.pool.message("release_metadata_snap", check=False)
    return {int(w) for w in out.split() if w.isdigit()}


def _forget(d: Devmapper, tx: Tx, sid: str, key: str) -> bool:
    tid = tx.get_str(d.key("snap", sid, "tid"))
    if not d.drop_if_childless(tx, sid, key):
        return False
    tx.delete_prefix(d.key("snap", sid) + SEP)
    if tid:
        tx.delete(d.key("thin", tid))
    return True


def _check(d: Devmapper, tx: Tx, problems: list[str], repair: bool) -> None:
    def fix(what: str, action: Callable[[], object]) -> None:
        if repair:
            try:
                action()
            except CargoholdError as exc:
                problems.append(f"{what}: repair failed: {exc}")

    ids = d.ms.id_map(tx)
    owners = _owners(d, tx)
    by_sid = {v: t for t, v in owners.items() if not v.startswith("rm ")}
    children_first = sorted(ids.items(), key=lambda kv: -int(kv[0]))
    for sid, key in children_first:
        if sid not in by_sid:
            problems.append(f"snapshot {key}: no thin device recorded for it")
            if repair and not _forget(d, tx, sid, key):
                problems.append(f"snapshot {key}: kept, other snapshots build on it")

    def drop_device(tid: int) -> None:
        d.pool.deactivate(d.dev_name(tid), check=False)
        delete_thin(d.pool, tid)

    handled: set[int] = set()
    prefix = d.dev_name(0)[:-1]
    for line in d.pool.dmsetup("ls", "--target", "thin").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            tid = int(name[len(prefix):])
            if tid not in owners:
                problems.append(f"device /dev/mapper/{name}: loaded, but no snapshot owns "
                                f"thin id {tid}")
                fix(name, lambda tid=tid: drop_device(tid))
                handled.add(tid)

    in_pool = pool_thin_ids(d)
    if in_pool is not None:
        for tid in sorted(in_pool - set(owners) - handled):
            problems.append(f"thin id {tid} in pool {d.pool.name}: no snapshot owns it")
            fix(f"thin id {tid}", lambda tid=tid: drop_device(tid))
        for tid, owner in sorted(owners.items()):
            if tid in in_pool:
                continue
            if owner.startswith("rm "):  # its removal got as far as the pool: only forget it
                if repair:
                    tx.delete(d.key("thin", str(tid)))
                continue
            key = ids.get(owner, f"id {owner}")
            problems.append(f"snapshot {key}: its thin id {tid} is not in pool {d.pool.name}")
            if repair and owner in ids and not _forget(d, tx, owner, key):
                problems.append(f"snapshot {key}: kept, other snapshots build on it")

    for tid, sectors in sorted(d.pending_removals(tx).items()):
        if in_pool is not None and tid not in in_pool:
            continue  # dealt with above
        problems.append(f"thin id {tid}: removal not finished (device not torn down)")

        def finish(tid: int = tid, sectors: int = sectors) -> None:
            d._teardown(tid, sectors)
            tx.delete(d.key("thin", str(tid)))

        fix(f"thin id {tid}", finish)
