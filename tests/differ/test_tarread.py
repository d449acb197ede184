"""The one tar reader: what it accepts (as Go's archive/tar does) and what it refuses.

Archives import through the same reader (tests/images/test_hostile_headers.py holds the
hostile-header table with exact texts); here the reader runs alone over a plain stream.
"""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from tests.differ.rawtar import block, end, member, pax, record

from cargohold.differ.api import Compression, LayerError
from cargohold.differ.compression import PlainStream, sniff
from cargohold.differ.tarheader import HeaderError, number, parse_pax
from cargohold.differ.tarread import TarReader

LAYER = "sha256:" + "c" * 64


def _entries(data: bytes) -> list[tuple[str, str, int, bytes]]:
    """(name, type, size, data) of every entry, data read through the fd path."""
    out = []
    with PlainStream(io.BytesIO(data), Compression.NONE, LAYER) as s:
        tar = TarReader(s)
        while (e := tar.next()) is not None:
            r, w = os.pipe()
            try:
                tar.copy_data(w)
                os.close(w)
                w = -1
                body = os.read(r, 1 << 20)
            finally:
                os.close(r)
                if w >= 0:
                    os.close(w)
            out.append((e.name, e.type, e.size, body))
    return out


def test_a_tarfile_archive_reads_back_with_data_and_pax():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        ti = tarfile.TarInfo("d/" + "x" * 150)  # needs a PAX path
        ti.size, ti.uid = 5, 1 << 30  # and a uid octal cannot hold
        t.addfile(ti, io.BytesIO(b"hello"))
    [(name, typ, size, body)] = _entries(buf.getvalue())
    assert (name, typ, size, body) == ("d/" + "x" * 150, "0", 5, b"hello")


def test_accepted_forms():
    data = (pax(record("path", "from-pax") + record("mtime", "-1.5"))
            + block("././@LongLink", "L", size=8) + b"from-gnu".ljust(512, b"\0")
            + block("ignored", b"0", size=3) + b"abc".ljust(512, b"\0")  # GNU name wins
            + pax(record("path", "first")) + pax(record("path", "second"))
            + member("x")  # a second x header replaces the first
            + block("link", b"2", size=4096, linkname="x")  # header-only: size ignored
            + block("neg", b"0", mtime=b"\xff" * 12)  # base-256 -1
            + member("last", b"tail")[:-500])  # no padding at the very end: a clean end
    got = _entries(data)
    assert [(n, t, s, b) for n, t, s, b in got] == [
        ("from-gnu", "0", 3, b"abc"), ("second", "0", 0, b""), ("link", "2", 4096, b""),
        ("neg", "0", 0, b""), ("last", "0", 4, b"tail")]


def test_one_zero_block_then_the_end_is_a_clean_end():
    assert _entries(member("a", b"1") + bytes(512)) == [("a", "0", 1, b"1")]
    assert _entries(member("a", b"1") + end() + b"garbage after the end")[0][0] == "a"


@pytest.mark.parametrize("payload, problem", [
    (b"0 a=b\n", "record 1: length 0 is too short"),
    (b"6 a=b\n7 c=d\n", "record 2: length 7 runs past the end of the 12-byte header"),
    (b"06 a=\n5 =x\n", "record 2: the key is empty"),
    (b"6 a=b\n\0\0x", "record 2 starts with a NUL byte"),
    (b"+6 a=b\n", "length '+6' is not a decimal number"),
    (b" 6 a=b\n", "length '' is not a decimal number"),
    (b"1_0 path=xy\n", "length '1_0' is not a decimal number"),
    (b"123456789012345678901234 a=b\n", "record 1 has no length"),
])
def test_pax_records_are_strict(payload, problem):
    with pytest.raises(HeaderError) as ei:
        parse_pax(payload)
    assert problem in str(ei.value)


def test_pax_padding_with_nuls_is_accepted():
    assert parse_pax(b"6 a=b\n\0\0\0") == {"a": b"b"}


@pytest.mark.parametrize("field, problem", [
    (b"0o17\0", "not an octal number"), (b"1_0\0", "not an octal number"),
    (b"-1\0", "not an octal number"), (b"1 2\0", "not an octal number"),
    (b"12\x0034\0", "not an octal number"),
])
def test_octal_fields_are_strict(field, problem):
    with pytest.raises(HeaderError, match=problem):
        number(field.ljust(8, b"\0"), "mode")


def test_base_256_numbers_sign_and_value():
    assert number(b"\x80" + (1 << 40).to_bytes(7, "big"), "uid") == 1 << 40
    assert number(b"\xff" * 8, "uid") == -1


def test_errors_name_the_layer_and_the_entry():
    data = member("ok", b"1") + pax(record("gid", "-1")) + member("bad") + end()
    with pytest.raises(LayerError) as ei:
        _entries(data)
    assert str(ei.value) == (f"layer {LAYER}: entry 'bad': bad PAX header: PAX gid '-1' is "
                             "not a decimal number")
    assert ei.value.exit_code == 1


def test_sniff_trusts_a_tar_header_over_a_look_alike_magic():
    looks_bzip2 = member("BZh91AY&SY", b"x") + end()
    assert sniff(looks_bzip2) is None
    assert sniff(b"BZh91AY&SY" + bytes(100)) is Compression.BZIP2
    assert sniff(b"\xfd7zXZ\x00" + bytes(10)) is Compression.XZ
