"""Unpack: the committed chain equals `umoci unpack`'s rootfs; labels, reuse, locks, GC."""

from __future__ import annotations

import json
import os

import pytest
from tests.images.imagekit import merged_tree, tree, tree_diff

from cargohold.errors import CargoholdError
from cargohold.images.importer import Importer, ImportOptions
from cargohold.images.manifest import chain_ids, diff_ids, parse_manifest
from cargohold.images.unpack import Unpacker, unpack_image
from cargohold.types import LABEL_SNAPSHOT_REF, LABEL_UNCOMPRESSED, Descriptor

pytestmark = pytest.mark.peer


@pytest.mark.parametrize("key", ["oci", "docker_zstd"])
def test_unpacked_tree_equals_umoci_unpack(client, archives, key):
    res = Importer(client).import_archive(archives[key], ImportOptions(base_name="x"))
    [top] = res.entries[0].unpacked.values()
    ref = tree(archives["ref"])
    assert ref["bin/ping"][1] == 0o4711 and ref["dev/null"][9] == os.makedev(1, 3)
    assert ref["bin/busybox.hard"][8] == "bin/busybox"  # a real hardlink pair
    assert "etc/hostname" not in ref and "opt/old/sub" not in ref  # deletions happened
    # umoci gives directories it recreates for whiteouts the time of the unpack: compare
    # directory times out (tree() does by default) and everything else exactly.
    assert tree_diff(ref, merged_tree(client, top)) == []


def test_two_layer_base_shares_snapshots(client, archives):
    imp = Importer(client)
    base = imp.import_archive(archives["oci_base"], ImportOptions(base_name="b"))
    full = imp.import_archive(archives["oci"], ImportOptions(base_name="f"))
    [btop] = base.entries[0].unpacked.values()
    [ftop] = full.entries[0].unpacked.values()
    assert tree_diff(tree(archives["refbase"]), merged_tree(client, btop)) == []
    sn = client.snapshotter()
    assert sn.stat(ftop).parent == btop  # the third layer sits on the base's chain
    keys = []
    sn.walk(lambda i: keys.append(i.name))
    assert len(keys) == 3


def test_labels_and_skip_when_unpacked(client, archives):
    Importer(client).import_archive(archives["oci"], ImportOptions(base_name="x"))
    store = client.content
    m = parse_manifest(store, Descriptor("application/vnd.oci.image.manifest.v1+json",
                                         archives["manifest"], 1))
    ids = diff_ids(store, m.config)
    chains = chain_ids(ids)
    cfg = store.info(m.config.digest).labels
    assert cfg["containerd.io/gc.ref.snapshot.overlayfs"] == chains[-1]
    for layer, d in zip(m.layers, ids, strict=True):
        assert store.info(layer.digest).labels[LABEL_UNCOMPRESSED] == d
    sn = client.snapshotter()
    for i, c in enumerate(chains):
        info = sn.stat(c)
        assert info.kind.name == "COMMITTED" and info.labels[LABEL_SNAPSHOT_REF] == c
        assert info.parent == (chains[i - 1] if i else "")
    u = Unpacker(client, store)
    assert u.unpack(m.desc) == chains[-1] and u.applied == 0
    assert unpack_image(client, "x:1.0") == chains[-1]


def test_failed_layer_leaves_no_extract_snapshot(client, archives, tmp_path):
    from tests.images.imagekit import single_layout

    def edit(m, cfg):
        cfg["rootfs"]["diff_ids"][2] = "sha256:" + "1" * 64
    d = str(tmp_path / "bad")
    single_layout(archives["layout"], d, "t", name="example.com/bad:1", edit=edit)
    with pytest.raises(CargoholdError) as e:
        Importer(client).import_archive(d)
    assert "layer 3/3" in str(e.value) and "diffID" in str(e.value)
    keys = []
    client.snapshotter().walk(lambda i: keys.append((i.name, i.kind.name)))
    assert keys == []  # the failed import's lease went and GC took the good layers too
    with client.db.view() as tx:
        from cargohold.metadata import images as records

        assert records.list_images(tx, client.namespace) == []


def test_rm_sync_frees_blobs_and_snapshots(hold, archives):
    hold("images", "import", "--progress", "none", archives["oci"], "--base-name", "x")
    hold("gc")  # a collection with the image present removes nothing of it
    assert len(hold("snapshots", "ls").stdout.decode().splitlines()) == 4
    p = hold("images", "rm", "--sync", "x:1.0")
    assert p.stdout.decode().split() == ["x:1.0"] and b"freed" in p.stderr
    assert hold("content", "ls", "-q").stdout == b""
    assert hold("snapshots", "ls").stdout.decode().splitlines()[1:] == []


def test_no_unpack_then_check_says_so(hold, archives):
    hold("images", "import", "--no-unpack", archives["docker"])
    [img] = json.loads(hold("images", "check", "--format", "json").stdout)
    assert img["complete"] and img["platforms"][0]["unpacked"] is False
    assert hold("snapshots", "ls").stdout.decode().splitlines()[1:] == []
