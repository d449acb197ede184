"""A read-only root serves every read and refuses every write with one clear line.

Two ways a root is read-only, both real: a read-only bind mount of a populated root (the
filesystem under it stays writable, as with a store exported read-only to a consumer), and
``--read-only`` / ``HOLD_READ_ONLY=1`` on a writable root, where nothing on disk may change —
the test compares every entry's mode, size, mtime and ctime before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest

from tests.conftest import run_hold
from tests.diskkit import make_archive, ro_bind, tree

A, B = "example.com/ro/a:1", "example.com/ro/b:1"


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    d = tmp_path_factory.mktemp("read-only-archives")
    return {"a": make_archive(str(d / "a.tar"), 2, A, seed="a"),
            "b": make_archive(str(d / "b.tar"), 2, B, seed="b"),
            "c": make_archive(str(d / "c.tar"), 1, "example.com/ro/c:1", seed="c")}


def _layer(archive: str) -> str:
    import tarfile

    with tarfile.open(archive) as t:
        sizes = {m.name.rsplit("/", 1)[1]: m.size for m in t.getmembers()
                 if m.name.startswith("blobs/")}
    return "sha256:" + max(sizes, key=sizes.get)


@pytest.fixture
def populated(tmp_path, archives):
    """A root with two unpacked images, a lease, a second namespace and a labelled blob."""
    root = str(tmp_path / "root")
    os.makedirs(root)
    for args in (["images", "import", archives["a"]], ["images", "import", archives["b"]],
                 ["leases", "create", "--id", "keep"], ["namespaces", "create", "other"],
                 ["content", "label", _layer(archives["a"]), "note=kept"]):
        run_hold(root, *args)
    return root


def reads(archives: dict, out: str) -> list[list[str]]:
    layer = _layer(archives["a"])
    return [["images", "ls", "-q"], ["images", "check"], ["images", "inspect", A],
            ["images", "export", os.path.join(out, "export.tar"), A],
            ["content", "ls", "-q"], ["content", "get", layer],
            ["snapshots", "ls", "-q"], ["snapshots", "info", layer],
            ["snapshots", "usage", layer], ["snapshots", "tree"],
            ["df", "--format", "json"], ["fsck"], ["gc", "--dry-run", "--format", "json"],
            ["gc", "--why", layer], ["images", "mounts"], ["leases", "ls", "-q"],
            ["namespaces", "ls", "-q"]]


def writes(archives: dict, target: str) -> list[tuple[list[str], bytes | None]]:
    layer = _layer(archives["a"])
    return [(["images", "rm", A], None), (["images", "tag", A, "example.com/ro/x:1"], None),
            (["images", "label", A, "k=v"], None), (["images", "import", archives["c"]], None),
            (["images", "mount", A, target], None),
            (["content", "rm", layer], None), (["content", "label", layer, "k=v"], None),
            (["content", "ingest", "some-ref"], b"hello"),
            (["snapshots", "prepare", "work1"], None), (["snapshots", "rm", layer], None),
            (["snapshots", "label", layer, "k=v"], None),
            (["leases", "create"], None), (["leases", "rm", "keep"], None),
            (["namespaces", "create", "n2"], None), (["namespaces", "rm", "other"], None),
            (["gc"], None), (["fsck", "--repair"], None)]


def _normal(args: list[str], out: bytes) -> object:
    """Stdout with what legitimately differs between two runs (timings, ages) taken out."""
    if args[0] == "gc" and "--dry-run" in args:
        doc = json.loads(out)
        return doc["removed"], doc["bytes_freed"]
    if args[0] == "fsck":
        return out.decode().rsplit(" in ", 1)[0]
    # every age ctr's words give: "5 minutes", "Less than a second", "About a minute", ...
    return re.sub(rb"(?:\d+ \w+|Less than a second|About an? \w+) ago", b"", out)


def _no_trace(p) -> str:  # noqa: ANN001
    err = p.stderr.decode()
    assert "internal error" not in err and "Traceback" not in err, err
    return err


def test_read_only_bind_mount_serves_every_read(tmp_path, populated, archives):
    out = str(tmp_path / "out")
    os.makedirs(out)
    expected = {}
    for args in reads(archives, out):
        p = run_hold(populated, *args)
        expected[tuple(args)] = _normal(args, p.stdout)
    with open(os.path.join(out, "export.tar"), "rb") as f:
        export_rw = hashlib.sha256(f.read()).hexdigest()
    ro = str(tmp_path / "ro")
    with ro_bind(populated, ro):
        before = tree(populated)
        for args in reads(archives, out):
            p = run_hold(ro, *args, check=False)
            _no_trace(p)
            assert p.returncode == 0, (args, p.stderr.decode())
            assert _normal(args, p.stdout) == expected[tuple(args)], args
        with open(os.path.join(out, "export.tar"), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == export_rw
        for args, stdin in writes(archives, str(tmp_path / "target")):
            p = run_hold(ro, *args, input=stdin, check=False)
            err = _no_trace(p)
            assert p.returncode == 1, (args, err)
            lines = err.splitlines()
            assert lines[0] == f"hold: root {ro} is read-only", (args, err)
            assert len(lines) == 2 and lines[1] == (
                f"hint: filesystem {ro} is mounted read-only: remount it read-write to change "
                "it; every read works as it is"), (args, err)
        assert tree(populated) == before
    # The root itself was writable all along and still works read-write.
    run_hold(populated, "images", "rm", B)
    assert run_hold(populated, "images", "ls", "-q").stdout.decode().split() == [A]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_read_only_flag_changes_nothing_on_disk(tmp_path, populated, archives, how):
    out = str(tmp_path / "out")
    os.makedirs(out)

    def hold(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        if how == "flag":
            return run_hold(populated, "--read-only", *args, check=False, **kw)
        return run_hold(populated, *args, check=False, env={"HOLD_READ_ONLY": "1"}, **kw)

    expected = {tuple(a): _normal(a, run_hold(populated, *a).stdout)
                for a in reads(archives, out)}
    before = tree(populated)
    for args in reads(archives, out):
        p = hold(*args)
        _no_trace(p)
        assert p.returncode == 0, (args, p.stderr.decode())
        assert _normal(args, p.stdout) == expected[tuple(args)], args
    for args, stdin in writes(archives, str(tmp_path / "target")):
        p = hold(*args, input=stdin)
        err = _no_trace(p)
        assert p.returncode == 1, (args, err)
        assert err.splitlines() == [
            f"hold: root {populated} is read-only",
            "hint: it was opened with --read-only (or HOLD_READ_ONLY=1): run without it to "
            "write"], (args, err)
    assert tree(populated) == before
    assert not os.path.exists(str(tmp_path / "target"))


def test_read_only_root_that_does_not_exist(tmp_path):
    p = run_hold(str(tmp_path / "nowhere"), "--read-only", "images", "ls", check=False)
    assert p.returncode == 1
    assert p.stderr.decode().splitlines()[0] == f"hold: root {tmp_path / 'nowhere'}: does not exist"
    assert not os.path.exists(tmp_path / "nowhere")


def test_read_only_reads_see_a_consistent_snapshot_or_say_retry(tmp_path, populated):
    """An unlocked (read-only) reader refuses a view that more than one commit overtook."""
    from cargohold import _oserror
    from cargohold.errors import Unavailable
    from cargohold.metadata.db import DB

    path = os.path.join(populated, "metadata")
    ro = str(tmp_path / "ro")
    with ro_bind(populated, ro):
        _oserror.mark_read_only(ro, "fs")
        try:
            db = DB(os.path.join(ro, "metadata"))
            try:
                with db.view() as tx:
                    assert tx.get(b"version") is not None
                with pytest.raises(Unavailable, match="changed by another process while it "
                                                      "was read"):
                    with db.view() as tx:
                        # Two commits through the writable path while this view is open.
                        for i in range(2):
                            run_hold(populated, "leases", "create", "--id", f"l{i}")
                        tx.get(b"version")
                with db.view() as tx:  # a fresh view sees them
                    assert tx.get(b"version") is not None
            finally:
                db.close()
        finally:
            _oserror.unmark_read_only(ro)
    assert os.path.isdir(path)

