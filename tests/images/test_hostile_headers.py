"""Hostile tar headers in image archives, as one table: each with its exact error text.

Each archive is a handful of raw blocks (``tests/differ/rawtar.py``), imported by a real
``hold`` child with a time limit (a hang fails the case). Every case must exit 1 (damaged
data, not a usage error) with exactly the expected first line, a hint, no traceback, and
leave nothing visible. A few are also run gzip-compressed, with the same text: the reader
sits behind the decompressor.
"""

from __future__ import annotations

import pytest
from isal import igzip
from tests.differ.rawtar import block, end, member, pax, record

OCI = member("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')

# (id, archive bytes, the message after "hold: archive PATH: ")
CASES = [
    # the 2 KB archive of issue 7 whose first PAX record has length 0 (it spun forever)
    ("zero-length-pax-record", pax(b"0 path=x\n") + end(),
     "entry 'PaxHeaders/f': bad PAX header at byte 0: record 1: length 0 is too short"),
    # a PAX uid of 2^40 ended in "internal error" (chown overflow)
    ("pax-uid-2^40", pax(record("uid", str(1 << 40))) + OCI + end(),
     "entry 'oci-layout': bad PAX header: PAX uid 1099511627776 is out of range (at most "
     "4294967294)"),
    ("overlong-pax-length", pax(b"999 path=x\n") + OCI + end(),
     "entry 'PaxHeaders/f': bad PAX header at byte 0: record 1: length 999 runs past the end "
     "of the 11-byte header"),
    ("non-numeric-pax-length", pax(b"1x path=x\n") + OCI + end(),
     "entry 'PaxHeaders/f': bad PAX header at byte 0: record 1: length '1x' is not a decimal "
     "number"),
    ("negative-pax-length", pax(b"-5 path=x\n") + OCI + end(),
     "entry 'PaxHeaders/f': bad PAX header at byte 0: record 1: length '-5' is not a decimal "
     "number"),
    ("pax-record-without-equals", pax(b"11 pathxyz\n") + OCI + end(),
     "entry 'PaxHeaders/f': bad PAX header at byte 0: record 1 has no '='"),
    ("pax-record-without-newline", pax(b"11 path=xyz") + OCI + end(),
     "entry 'PaxHeaders/f': bad PAX header at byte 0: record 1 does not end with a newline"),
    ("pax-path-with-nul", pax(record("path", "a\0b")) + OCI + end(),
     "entry 'PaxHeaders/f': bad PAX header at byte 0: record 1: path holds a NUL byte"),
    ("pax-size-not-decimal", pax(record("size", "0x10")) + OCI + end(),
     "entry 'oci-layout': bad PAX header: PAX size '0x10' is not a decimal number"),
    ("pax-mtime-not-a-time", pax(record("mtime", "1e9")) + OCI + end(),
     "entry 'oci-layout': bad PAX header: PAX mtime '1e9' is not a time (seconds[.fraction])"),
    ("absurd-extended-header-size", pax(b"", size=1 << 30) + OCI + end(),
     "entry 'PaxHeaders/f': PAX header of 1073741824 bytes is larger than the 1048576-byte "
     "limit"),
    ("size-beyond-the-stream", block("oci-layout", size=10**6) + b"x" * 1000,
     "entry 'oci-layout': truncated tar stream inside the file data: the entry is 1000000 "
     "bytes, the stream ends after 1000"),
    ("negative-size-in-base-256", block("oci-layout", size=b"\xff" * 11 + b"\xfe") + end(),
     "entry 'oci-layout': bad tar header at byte 0 (after 0 entries): size -2 is negative"),
    ("uid-2^40-in-base-256", block("oci-layout", uid=b"\x80" + (1 << 40).to_bytes(7, "big"))
     + end(), "entry 'oci-layout': bad tar header at byte 0 (after 0 entries): uid "
     "1099511627776 is out of range (at most 4294967294)"),
    ("non-octal-mtime", block("oci-layout", mtime=b"99999999999\0") + end(),
     "entry 'oci-layout': bad tar header at byte 0 (after 0 entries): mtime field "
     "'99999999999' is not an octal number"),
    ("bad-checksum", OCI + block("index.json", chksum=b"0000000\0") + end(),
     "entry 'index.json': bad tar header at byte 1024 (after 1 entries): checksum mismatch "
     "(not a tar stream, or corrupt)"),
    ("zero-block-then-data", OCI + bytes(512) + member("index.json", b"{}") + end(),
     "a zero block at byte 1024 is followed by data, not by the second zero block that ends "
     "an archive"),
    ("huge-gnu-long-name", block("././@LongLink", "L", size=1 << 40) + end(),
     "entry '././@LongLink': GNU long name header of 1099511627776 bytes is larger than the "
     "1048576-byte limit"),
    ("truncated-inside-a-header", OCI + block("index.json")[:300],
     "truncated tar stream inside a header (at byte 1024)"),
    # JSON nested past Python's recursion limit ended in "internal error: RecursionError"
    ("deeply-nested-index-json", OCI + member("index.json", b"[" * 200_000) + end(),
     "index.json is not valid JSON (nested too deeply)"),
]


GZIPPED = {"zero-length-pax-record", "pax-uid-2^40", "size-beyond-the-stream",
           "truncated-inside-a-header"}


@pytest.mark.parametrize("case_id, data, expected, compressed",
                         [(*c, False) for c in CASES]
                         + [(*c, True) for c in CASES if c[0] in GZIPPED],
                         ids=[c[0] for c in CASES] + [f"{c[0]}-gzip" for c in CASES
                                                       if c[0] in GZIPPED])
def test_hostile_archive_header(hold, tmp_path, case_id, data, expected, compressed):
    path = tmp_path / ("a.tar.gz" if compressed else "a.tar")
    path.write_bytes(igzip.compress(data) if compressed else data)
    p = hold("images", "import", "--progress", "none", str(path), check=False, timeout=60)
    err = p.stderr.decode()
    lines = err.splitlines()
    assert p.returncode == 1, err
    assert lines[0] == f"hold: archive {path}: {expected}", err
    assert lines[1].startswith("hint: "), err
    assert "Traceback" not in err and "internal error" not in err
    assert hold("images", "ls", "-q").stdout == b""
    assert hold("leases", "ls", "-q").stdout == b""


def test_the_zero_length_pax_archive_is_2_kib():
    assert len(CASES[0][1]) == 2048


def test_a_deeply_nested_manifest_blob(hold, tmp_path):
    """A manifest blob (reached through a well-formed index) nested past the recursion
    limit: one clear line naming the blob, exit 1, nothing left visible."""
    import hashlib
    import json

    man = b"[" * 200_000
    digest = "sha256:" + hashlib.sha256(man).hexdigest()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
        "size": len(man), "annotations": {"io.containerd.image.name": "x.io/deep:1"}}]})
    path = tmp_path / "a.tar"
    path.write_bytes(OCI + member("index.json", index.encode())
                     + member(f"blobs/sha256/{digest[7:]}", man) + end())
    p = hold("images", "import", "--progress", "none", str(path), check=False, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert err.splitlines()[0].endswith(f"blob {digest}: not valid JSON (nested too deeply)"), \
        err
    assert "Traceback" not in err and "internal error" not in err
    assert hold("images", "ls", "-q").stdout == b""
    assert hold("leases", "ls", "-q").stdout == b""


# Docker archives whose manifest.json or config has the wrong JSON types: (id, members,
# what the first line ends with). Each ended in "internal error" (TypeError, AttributeError)
# or, for a tag that is not a reference, in exit 2 as if the user had typed it.
_CFG = member("c.json", b'{"rootfs": {"diff_ids": []}}')
DOCKER_CASES = [
    ("config-not-a-string", member("manifest.json", b'[{"Config": 5}]'),
     "manifest.json entry 0: Config is not a string"),
    ("repotags-not-a-list", member("manifest.json", b'[{"Config": "c.json", "RepoTags": 7}]')
     + _CFG, "manifest.json entry 0: RepoTags is not a list of strings"),
    ("layers-not-strings", member("manifest.json", b'[{"Config": "c.json", "Layers": [1]}]')
     + _CFG, "manifest.json entry 0: Layers is not a list of strings"),
    ("rootfs-not-an-object", member("manifest.json", b'[{"Config": "c.json"}]')
     + member("c.json", b'{"rootfs": 5}'), ": rootfs is not an object"),
    ("diff-ids-not-a-list", member("manifest.json", b'[{"Config": "c.json"}]')
     + member("c.json", b'{"rootfs": {"diff_ids": 5}}'), ": diff_ids is not a list of strings"),
    ("repotag-not-a-reference",
     member("manifest.json", b'[{"Config": "c.json", "RepoTags": ["::bad::"]}]') + _CFG,
     "manifest.json entry 0: RepoTags: image reference '::bad::': not a valid reference"),
]


@pytest.mark.parametrize("case_id, data, expected", DOCKER_CASES,
                         ids=[c[0] for c in DOCKER_CASES])
def test_malformed_docker_manifest_json(hold, tmp_path, case_id, data, expected):
    path = tmp_path / "d.tar"
    path.write_bytes(data + end())
    p = hold("images", "import", "--progress", "none", str(path), check=False, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert err.splitlines()[0].startswith("hold: ") and err.splitlines()[0].endswith(expected), \
        err
    assert hold("images", "ls", "-q").stdout == b""
    assert hold("leases", "ls", "-q").stdout == b""


def test_an_oci_config_whose_rootfs_is_not_an_object(hold, tmp_path):
    """It ended in "internal error: AttributeError"; imported without unpacking, inspect
    shows it."""
    import hashlib
    import json

    blobs = {}

    def put(data: bytes) -> str:
        blobs[hashlib.sha256(data).hexdigest()] = data
        return "sha256:" + hashlib.sha256(data).hexdigest()

    cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": 7}).encode()
    man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                 "digest": put(cfg), "size": len(cfg)}, "layers": []}).encode()
    md = put(man)
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
        "size": len(man), "annotations": {"io.containerd.image.name": "x.io/r:1"},
        "platform": {"os": "linux", "architecture": "amd64"}}]})
    path = tmp_path / "a.tar"
    path.write_bytes(OCI + member("index.json", index.encode()) + b"".join(
        member(f"blobs/sha256/{h}", d) for h, d in blobs.items()) + end())
    p = hold("images", "import", "--progress", "none", "--platform", "linux/amd64", str(path),
             check=False, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 1 and "internal error" not in err, err
    assert err.splitlines()[0].endswith(f"config {put(cfg)}: no rootfs.diff_ids"), err
    assert hold("images", "ls", "-q").stdout == b""
    hold("images", "import", "--progress", "none", "--no-unpack", "--platform", "linux/amd64",
         str(path))
    doc = json.loads(hold("images", "inspect", "x.io/r:1").stdout)
    assert doc["manifests"][0]["diff_ids"] == []
