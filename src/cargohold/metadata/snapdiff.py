"""The diff of one snapshot against its parent, as a layer blob in the content store."""

from __future__ import annotations

import secrets
from typing import Any

from cargohold.snapshotters.api import Kind
from cargohold.store.api import Store
from cargohold.types import Descriptor

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def diff(sn: Any, key: str, store: Store, *, media_type: str = GZIP,
         labels: dict[str, str] | None = None) -> Descriptor:
    """Compare snapshot ``key`` (active or committed) with its parent; store the layer.

    Temporary views are made for whichever side needs one and removed afterwards, also on
    error; neither snapshot changes. Returns the compressed layer's descriptor; the blob carries
    ``containerd.io/uncompressed=<diffID>``. A blob nothing keeps alive goes at the next GC, so
    run this inside a lease (``hold --lease``) to keep it.
    """
    from cargohold.differ.compare import compare

    info = sn.stat(key)
    temps: list[str] = []

    def temp_view(parent: str) -> list:
        k = f"diff-{secrets.token_hex(6)}"
        mounts = sn.view(k, parent)
        temps.append(k)
        return mounts

    try:
        upper = temp_view(key) if info.kind == Kind.COMMITTED else sn.mounts(key)
        lower = temp_view(info.parent) if info.parent else []
        return compare(lower, upper, store=store, media_type=media_type, labels=labels)
    finally:
        for k in reversed(temps):
            try:
                sn.remove(k)
            except Exception:  # noqa: BLE001 - GC collects a leftover view; keep the real error
                pass
