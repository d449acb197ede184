"""Apply: compressions, magic checks, diffIDs, truncation, entry types, target selection."""

from __future__ import annotations

import io
import os
import stat
import zlib

import pytest
import zstandard
from treeutil import MEDIA, bind, desc, diff_id, gz, tar_bytes, zst

from cargohold.differ.api import (
    MEDIA_TYPE_DOCKER_GZIP,
    MEDIA_TYPE_TAR,
    MEDIA_TYPE_TAR_GZIP,
    MEDIA_TYPE_TAR_ZSTD,
    LayerError,
)
from cargohold.differ.apply import apply
from cargohold.errors import IntegrityError, Unsupported
from cargohold.types import Mount

SIMPLE = [("d", "dir"), ("d/a", "file", {"data": b"alpha" * 100_000}),
          ("d/b", "file", {"data": b"beta"}), ("s", "sym", {"target": "d/a"})]


def _apply(blob, target, media_type=MEDIA_TYPE_TAR_GZIP, **kw):
    return apply(desc(blob, media_type), bind(target), reader=io.BytesIO(blob), **kw)


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_compressions_give_the_diff_id_of_the_plain_tar(tmp_path, kind):
    plain = tar_bytes(SIMPLE)
    media_type, comp = MEDIA[kind]
    out = _apply(comp(plain), tmp_path, media_type, expected_diff_id=diff_id(plain))
    assert out.media_type == MEDIA_TYPE_TAR
    assert (out.digest, out.size) == (diff_id(plain), len(plain))
    assert (tmp_path / "d/a").read_bytes() == b"alpha" * 100_000
    assert os.readlink(tmp_path / "s") == "d/a"


def test_zlib_fallback_and_docker_media_type(tmp_path):
    plain = tar_bytes(SIMPLE)
    co = zlib.compressobj(6, zlib.DEFLATED, 31)
    blob = co.compress(plain) + co.flush()
    out = apply(desc(blob, MEDIA_TYPE_DOCKER_GZIP), bind(tmp_path), reader=io.BytesIO(blob),
                use_isal=False)
    assert out.digest == diff_id(plain)


def test_multi_member_gzip_and_multi_frame_zstd(tmp_path):
    plain = tar_bytes(SIMPLE)
    half = len(plain) // 2
    blob = gz(plain[:half]) + gz(plain[half:]) + b"\0" * 32  # pigz-style, zero padded
    (tmp_path / "g").mkdir()
    assert _apply(blob, tmp_path / "g").digest == diff_id(plain)
    (tmp_path / "z").mkdir()
    zblob = zst(plain[:half]) + zst(plain[half:])
    assert _apply(zblob, tmp_path / "z", MEDIA_TYPE_TAR_ZSTD).digest == diff_id(plain)


def test_trailing_data_after_the_tar_is_hashed(tmp_path):
    plain = tar_bytes(SIMPLE) + b"\0" * 8192 + b"junk after the end"
    assert _apply(gz(plain), tmp_path).digest == diff_id(plain)


@pytest.mark.parametrize("media_type, blob_of, says", [
    (MEDIA_TYPE_TAR_GZIP, zst, "media type says gzip but the data is zstd"),
    (MEDIA_TYPE_TAR_ZSTD, gz, "media type says zstd but the data is gzip"),
    (MEDIA_TYPE_TAR, gz, "media type says none but the data is gzip"),
    (MEDIA_TYPE_TAR_GZIP, lambda b: b, "media type says gzip but the data is uncompressed"),
])
def test_magic_must_match_the_media_type(tmp_path, media_type, blob_of, says):
    blob = blob_of(tar_bytes(SIMPLE))
    d = desc(blob, media_type)
    with pytest.raises(LayerError) as ei:
        apply(d, bind(tmp_path), reader=io.BytesIO(blob))
    assert says in str(ei.value) and d.digest in str(ei.value)


def test_unknown_media_type_is_unsupported(tmp_path):
    with pytest.raises(Unsupported, match="not a layer"):
        apply(desc(b"x", "application/vnd.oci.image.config.v1+json"), bind(tmp_path),
              reader=io.BytesIO(b"x"))


def test_diff_id_mismatch_names_layer_and_both_digests(tmp_path):
    blob = gz(tar_bytes(SIMPLE))
    d = desc(blob)
    wrong = "sha256:" + "1" * 64
    with pytest.raises(IntegrityError) as ei:
        apply(d, bind(tmp_path), reader=io.BytesIO(blob), expected_diff_id=wrong)
    msg = str(ei.value)
    assert d.digest in msg and wrong in msg and diff_id(tar_bytes(SIMPLE)) in msg


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_truncated_stream_names_the_layer(tmp_path, kind):
    media_type, comp = MEDIA[kind]
    full = comp(tar_bytes(SIMPLE))
    blob = full[:len(full) // 2]
    d = desc(blob, media_type)
    with pytest.raises(LayerError) as ei:
        apply(d, bind(tmp_path), reader=io.BytesIO(blob))
    assert "truncated" in str(ei.value) and d.digest in str(ei.value)


def test_corrupt_gzip_names_the_layer(tmp_path):
    blob = bytearray(gz(tar_bytes(SIMPLE)))
    blob[40:60] = b"\xff" * 20
    with pytest.raises(LayerError, match="layer sha256:"):
        _apply(bytes(blob), tmp_path)


def test_every_entry_type_with_metadata(tmp_path, as_root):
    long = "/".join(["p" * 90] * 3) + "/" + "n" * 150
    plain = tar_bytes([
        ("bin", "dir", {"mode": 0o755, "mtime": 1_500_000_000}),
        ("bin/su", "file", {"data": b"su", "mode": 0o4755, "uid": 0, "gid": 0,
                            "xattrs": {"security.capability": b"\x01\x00\x00\x02" + bytes(16),
                                       "user.x": b"\xff\x00v"}}),
        ("bin/su-hard", "link", {"target": "bin/su"}),
        ("bin/sg", "file", {"data": b"", "mode": 0o2711, "uid": 1000, "gid": 50}),
        ("tmp", "dir", {"mode": 0o1777}),
        ("dev/null", "chr", {"dev": (1, 3), "mode": 0o666}),
        ("dev/sda", "blk", {"dev": (8, 0), "mode": 0o660, "gid": 6}),
        ("run/fifo", "fifo", {"mode": 0o600}),
        ("lnk", "sym", {"target": "/bin/su", "uid": 7, "gid": 8}),
        (long, "file", {"data": b"deep", "uid": 3_000_000, "gid": 3_000_001}),
        ("long-link", "sym", {"target": long}),
    ])
    _apply(gz(plain), tmp_path)
    st = os.stat(tmp_path / "bin/su")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_nlink == 2
    assert os.getxattr(tmp_path / "bin/su", "security.capability")[:4] == b"\x01\x00\x00\x02"
    assert os.getxattr(tmp_path / "bin/su", "user.x") == b"\xff\x00v"
    assert os.stat(tmp_path / "bin/su-hard").st_ino == st.st_ino
    sg = os.stat(tmp_path / "bin/sg")
    assert (stat.S_IMODE(sg.st_mode), sg.st_uid, sg.st_gid) == (0o2711, 1000, 50)
    assert stat.S_IMODE(os.stat(tmp_path / "tmp").st_mode) == 0o1777
    assert os.stat(tmp_path / "bin").st_mtime == 1_500_000_000  # dir times set at the end
    null = os.lstat(tmp_path / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.lstat(tmp_path / "dev/sda").st_mode)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "run/fifo").st_mode)
    ln = os.lstat(tmp_path / "lnk")
    assert os.readlink(tmp_path / "lnk") == "/bin/su" and (ln.st_uid, ln.st_gid) == (7, 8)
    lst = os.stat(tmp_path / long)
    assert (lst.st_uid, lst.st_gid) == (3_000_000, 3_000_001)
    assert os.readlink(tmp_path / "long-link") == long


def test_gnu_long_names(tmp_path):
    import tarfile

    name = "g/" + "x" * 150 + "/" + "y" * 150
    plain = tar_bytes([(name, "file", {"data": b"gnu"}), ("g/l", "sym", {"target": "y" * 200})],
                      fmt=tarfile.GNU_FORMAT)
    _apply(gz(plain), tmp_path)
    assert (tmp_path / name).read_bytes() == b"gnu"
    assert os.readlink(tmp_path / "g/l") == "y" * 200


def test_replace_unless_both_dirs(tmp_path):
    _apply(gz(tar_bytes([("a", "dir"), ("a/keep", "file", {"data": b"1"}),
                         ("f", "file", {"data": b"old"}), ("s", "dir")])), tmp_path)
    _apply(gz(tar_bytes([("a", "dir", {"mode": 0o700}), ("a/new", "file"),
                         ("f", "dir"), ("s", "file", {"data": b"was a dir"})])), tmp_path)
    assert sorted(os.listdir(tmp_path / "a")) == ["keep", "new"]  # merged
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o700
    assert (tmp_path / "f").is_dir() and (tmp_path / "s").read_bytes() == b"was a dir"


def test_hardlink_is_not_written_through(tmp_path):
    _apply(gz(tar_bytes([("a", "file", {"data": b"A"}), ("b", "link", {"target": "a"}),
                         ("b", "file", {"data": b"B"})])), tmp_path)
    assert (tmp_path / "a").read_bytes() == b"A" and (tmp_path / "b").read_bytes() == b"B"


def test_real_whiteouts_and_opaque_on_bind_target(tmp_path):
    _apply(gz(tar_bytes([("d/x", "file"), ("d/y", "file"), ("e/z", "file"),
                         ("gone/deep/f", "file")])), tmp_path)
    _apply(gz(tar_bytes([("d/new", "file"), ("d/.wh..wh..opq", "file"),
                         ("e/.wh.z", "file"), (".wh.gone", "file"), ("e/.wh.absent", "file"),
                         ("nodir/.wh.x", "file")])), tmp_path)
    assert os.listdir(tmp_path / "d") == ["new"]
    assert os.listdir(tmp_path / "e") == []
    assert not (tmp_path / "gone").exists() and not (tmp_path / "nodir").exists()


def test_devices_skipped_with_warning_when_not_allowed(tmp_path):
    warnings: list[str] = []
    _apply(gz(tar_bytes([("null", "chr", {"dev": (1, 3)}), ("f", "file")])), tmp_path,
           devices=False, warnings=warnings)
    assert not os.path.lexists(tmp_path / "null") and (tmp_path / "f").exists()
    assert any("'null'" in w and "device node skipped" in w for w in warnings)


def test_trusted_and_overlay_xattrs_are_never_written(tmp_path, as_root):
    warnings: list[str] = []
    _apply(gz(tar_bytes([("d", "dir", {"xattrs": {"trusted.overlay.opaque": b"y"}}),
                         ("f", "file", {"xattrs": {"user.overlay.redirect": b"/x",
                                                   "trusted.evil": b"1", "user.ok": b"2"}})])),
           tmp_path, warnings=warnings)
    assert os.listxattr(tmp_path / "d") == []
    assert os.listxattr(tmp_path / "f") == ["user.ok"]
    assert len([w for w in warnings if "not applied" in w]) == 3


def test_temp_mount_target_for_other_mounts(tmp_path, as_root):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "old").write_text("x")
    # two stacked binds are "anything else": mounted on a temp dir, applied there
    mounts = [Mount("bind", str(a), ("rbind",)), Mount("bind", str(b), ("rbind",))]
    blob = gz(tar_bytes([("new", "file", {"data": b"n"}), (".wh.old", "file")]))
    apply(desc(blob), mounts, reader=io.BytesIO(blob), sync=True)
    assert os.listdir(b) == ["new"] and os.listdir(a) == []


def test_progress_counts_compressed_bytes(tmp_path):
    blob = gz(tar_bytes(SIMPLE))
    seen: list[int] = []
    _apply(blob, tmp_path, progress=seen.append, sync=True)
    assert sum(seen) == len(blob)


def test_zstd_bomb_is_read_in_bounded_chunks(tmp_path):
    # 64 MiB of zeros inside one file compress to a few KiB; apply must stream, not inflate all
    plain = tar_bytes([("zeros", "file", {"data": bytes(64 << 20)})])
    blob = zstandard.ZstdCompressor(level=19).compress(plain)
    assert len(blob) < 1 << 20
    _apply(blob, tmp_path, MEDIA_TYPE_TAR_ZSTD)
    assert os.path.getsize(tmp_path / "zeros") == 64 << 20
