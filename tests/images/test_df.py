"""`hold df`: content, snapshots and per-image shared/exclusive bytes from stored numbers."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.peer


def test_df_totals_and_sharing(hold, archives):
    empty = json.loads(hold("df", "--format", "json").stdout)
    assert empty["content"]["bytes"] == 0 and empty["images"] == []
    hold("images", "import", "--progress", "none", archives["oci_base"], "--base-name", "b")
    hold("images", "import", "--progress", "none", archives["oci"], "--base-name", "f")
    hold("images", "tag", "f:1.0", "f:also")
    u = json.loads(hold("df", "--format", "json").stdout)
    blobs = json.loads(hold("content", "ls", "--format", "json").stdout)
    assert u["content"]["bytes"] == sum(b["size"] for b in blobs)
    assert u["content"]["count"] == len(blobs) and u["content"]["reclaimable"] == 0
    assert u["snapshots"]["count"] == 3 and u["snapshots"]["bytes"] > 1_000_000
    imgs = {tuple(i["names"]): i for i in u["images"]}
    base, full = imgs[("b:base",)], imgs[("f:1.0", "f:also")]  # two names, one image
    # base = layers 1-2 (+ its manifest and config); full = layers 1-3 (+ its own).
    assert base["exclusive"] < 2_000 < full["exclusive"]
    assert base["shared"] == full["shared"] > 1_000_000
    for i in (base, full):
        assert i["shared"] + i["exclusive"] == i["content"] + i["snapshots"]
    # Removing the full image frees exactly its exclusive bytes.
    before = u["content"]["bytes"] + u["snapshots"]["bytes"]
    hold("images", "rm", "--sync", "f:1.0", "f:also")
    after = json.loads(hold("df", "--format", "json").stdout)
    assert before - (after["content"]["bytes"] + after["snapshots"]["bytes"]) == full[
        "exclusive"]


def test_df_table_and_reclaimable(hold, archives):
    hold("images", "import", "--progress", "none", archives["oci"], "--base-name", "x")
    hold("images", "rm", "x:1.0")  # no --sync: everything is now reclaimable
    out = hold("df").stdout.decode()
    assert out.splitlines()[0].split() == ["TYPE", "COUNT", "SIZE", "RECLAIMABLE"]
    u = json.loads(hold("df", "--format", "json").stdout)
    assert u["content"]["reclaimable"] == u["content"]["bytes"] > 0
    assert u["snapshots"]["reclaimable"] == u["snapshots"]["bytes"] > 0
