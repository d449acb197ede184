"""hold's tables against what a real ctr 1.6 prints for the same things, cell by cell.

A private containerd (tests/peers.py) and a hold root get the same archives, leases and
namespaces; each table is cut into cells by its header's column starts (both tools left-align
cells under their headers) and compared. Where hold does more on purpose (a row per platform
in `images check`, attestations left out of PLATFORMS) the test says so.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
from datetime import datetime

import pytest
from tests.peers import run

from cargohold.types import human_size

pytestmark = pytest.mark.peer
_ns = itertools.count()


@pytest.fixture
def ctr(ctrd):
    """``ctr(*args)`` in a namespace of its own for this test; returns stdout text."""
    ns = f"parity{next(_ns)}"

    def _run(*args: str, check: bool = True) -> str:
        return run("ctr", "--address", ctrd.sock, "-n", ns, *args,
                   check=check).stdout.decode()
    _run.ns = ns
    _run.sock = ctrd.sock
    return _run


def cells(text: str, headers: list[str]) -> list[dict[str, str]]:
    """Rows of a left-aligned table as {header: cell}, cut at the header's column starts."""
    lines = text.rstrip("\n").splitlines()
    head, starts, at = lines[0], [], 0
    for h in headers:
        at = head.index(h, at)
        starts.append(at)
        at += len(h)
    assert head.split() == " ".join(headers).split(), head
    out = []
    for line in lines[1:]:
        bounds = [*starts, None]
        out.append({h: line[bounds[i]:bounds[i + 1]].strip() for i, h in enumerate(headers)})
    return out


LS = ["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]
CHECK = ["REF", "TYPE", "DIGEST", "STATUS", "SIZE", "UNPACKED"]


def _by_ref(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["REF"]: r for r in rows if r["REF"]}


def test_images_ls_and_check_rows_are_ctrs(ctr, hold, archives):
    for a in ("oci", "multi_tar"):
        ctr("images", "import", "--base-name", "x", archives[a])
        hold("images", "import", "--progress", "none", "--base-name", "x", archives[a])

    theirs = _by_ref(cells(ctr("images", "ls"), LS))
    ours = _by_ref(cells(hold("images", "ls").stdout.decode(), LS))
    assert set(ours) == set(theirs) == {"x:1.0", "example.com/multi:1"}
    assert ours["x:1.0"] == theirs["x:1.0"]
    # ctr: "1.0 MiB linux/amd64,linux/arm64,linux/s390x,unknown/unknown -". hold leaves the
    # attestation manifest out of PLATFORMS: it is not a platform.
    m_ours, m_theirs = ours["example.com/multi:1"], theirs["example.com/multi:1"]
    assert m_ours["PLATFORMS"] == m_theirs["PLATFORMS"].replace(",unknown/unknown", "")
    assert {**m_ours, "PLATFORMS": ""} == {**m_theirs, "PLATFORMS": ""}
    assert m_ours["SIZE"] == "1.0 MiB"

    def check() -> tuple[dict, dict]:
        # ctr exits 1 when it cannot tell whether an image is unpacked (its manifest is
        # gone), after printing the table.
        t = _by_ref(cells(ctr("images", "check", check=False), CHECK))
        text = hold("images", "check").stdout.decode()
        # hold's own rows (one per platform of an index) are indented under ctr's.
        assert re.search(r"^  linux/s390x +\S+ +\S+ +incomplete \(1/3\)", text, re.M), text
        o = _by_ref(cells("\n".join(ln for ln in text.splitlines()
                                     if not ln.startswith("  ")), CHECK))
        return o, t

    ours, theirs = check()
    assert ours == theirs
    assert theirs["x:1.0"]["STATUS"] == "complete (4/4)" and theirs["x:1.0"]["UNPACKED"] == "true"

    # A missing layer: "incomplete (3/4)", present/required bytes, still unpacked.
    man = json.loads(hold("content", "get", archives["manifest"]).stdout)
    layer = man["layers"][1]["digest"]
    ctr("content", "rm", layer)
    hold("content", "rm", layer)
    ours, theirs = check()
    assert theirs["x:1.0"]["STATUS"] == "incomplete (3/4)"
    assert ours == theirs

    # The host's manifest of the index gone: "unavailable (0/?)", "0.0 B/?", not unpacked.
    host = archives["multi"]["present"]
    ctr("content", "rm", host)
    hold("content", "rm", host)
    ours, theirs = check()
    assert theirs["example.com/multi:1"]["STATUS"] == "unavailable (0/?)"
    assert theirs["example.com/multi:1"]["SIZE"] == "0.0 B/?"
    assert ours == theirs


def test_leases_ls_is_ctrs(ctr, hold):
    ctr("leases", "create", "--id", "L1", "-x", "0", "a=b", "c=d")
    ctr("leases", "create", "--id", "L2", "-x", "0")
    hold("leases", "create", "--id", "L1", "a=b", "c=d")
    hold("leases", "create", "--id", "L2")
    heads = ["ID", "CREATED AT", "LABELS"]
    theirs = cells(ctr("leases", "ls"), heads)
    ours = cells(hold("leases", "ls").stdout.decode(), heads)
    assert [(r["ID"], r["LABELS"]) for r in ours] == [(r["ID"], r["LABELS"]) for r in theirs]
    assert [r["LABELS"] for r in theirs] == ["a=b,c=d", "-"]
    for a, b in zip(ours, theirs, strict=True):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", a["CREATED AT"])
        assert len(a["CREATED AT"]) == len(b["CREATED AT"])
        gap = datetime.fromisoformat(a["CREATED AT"]) - datetime.fromisoformat(b["CREATED AT"])
        assert abs(gap.total_seconds()) < 120


def test_namespaces_ls_is_ctrs(ctr, hold):
    run("ctr", "--address", ctr.sock, "namespaces", "create", f"{ctr.ns}a", "k=v")
    run("ctr", "--address", ctr.sock, "namespaces", "create", f"{ctr.ns}b")
    hold("namespaces", "create", f"{ctr.ns}a", "k=v")
    hold("namespaces", "create", f"{ctr.ns}b")
    heads = ["NAME", "LABELS"]
    want = {f"{ctr.ns}a", f"{ctr.ns}b"}
    theirs = [r for r in cells(run("ctr", "--address", ctr.sock, "namespaces", "ls")
                               .stdout.decode(), heads) if r["NAME"] in want]
    ours = [r for r in cells(hold("namespaces", "ls").stdout.decode(), heads)
            if r["NAME"] in want]
    assert ours == theirs and [r["LABELS"] for r in ours] == ["k=v", ""]


def test_namespace_names_accepted_as_containerd_accepts_them(ctr, hold):
    names = ["bad ns!", "a..b", "-a", "a-", "é", "a/b", "a" * 77, "a:b", "a", "A.b_c-1",
             "k8s.io", "x" * 76, "1-2-3"]
    for n in names:
        theirs = run("ctr", "--address", ctr.sock, "-n", n, "images", "ls", check=False)
        ours = hold("-n", n, "images", "ls", check=False)
        assert (theirs.returncode == 0) == (ours.returncode == 0), (n, theirs.stderr)
        if ours.returncode:
            assert ours.returncode == 2  # ctr exits 1; a bad name is a usage error here
            if b"greater than maximum length (76 characters)" in theirs.stderr:
                assert b"longer than 76 characters" in ours.stderr
            else:
                assert b"must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$" in theirs.stderr
                assert b"must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$" in ours.stderr


def test_sizes_are_printed_as_ctr_prints_them(ctr):
    """ctr snapshots usage of an active snapshot: allocated bytes of its upper directory."""
    ctr("snapshots", "prepare", "k")
    cmd = ctr("snapshots", "mounts", "/x", "k").split()
    upper = cmd[cmd.index("bind") + 1]
    for size in (0, 3 * 4096, 1536 * 1024, 5 * 1024 * 1024 + 300 * 1024, 37 * 4096 * 1000):
        for f in os.listdir(upper):
            os.unlink(os.path.join(upper, f))
        if size:
            subprocess.run(["fallocate", "-l", str(size), os.path.join(upper, "f")],
                           check=True)
        used = os.lstat(upper).st_blocks * 512 + sum(
            os.lstat(os.path.join(upper, f)).st_blocks * 512 for f in os.listdir(upper))
        row = cells(ctr("snapshots", "usage", "k"), ["KEY", "SIZE", "INODES"])[0]
        assert row["SIZE"] == human_size(used), (size, used, row)
