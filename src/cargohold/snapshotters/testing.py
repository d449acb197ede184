"""The snapshotter conformance suite: plain functions every backend and wrapper must pass.

Each ``check_*(make, tmp)`` takes a factory and a scratch directory. ``make(root)`` returns a
:class:`~cargohold.snapshotters.api.Snapshotter` rooted at (or derived only from) the directory
``root``; calling it twice with the same ``root`` must give two handles on the same store, since
some checks open it from two processes. ``tmp`` is an empty directory the check may use for
roots and mount points. Checks that mount need root and raise :class:`unittest.SkipTest`
otherwise, which pytest reports as a skip with the reason. Checks unmount everything they
mount, even when they fail.

Bind them to a test runner by iterating :data:`ALL_CHECKS`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import unittest
from collections.abc import Callable, Iterator

from cargohold.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from cargohold.mount import mount_all, unmount_all
from cargohold.snapshotters.api import Info, Kind, Snapshotter
from cargohold.types import Mount

Make = Callable[[str], Snapshotter]


# --- helpers ---------------------------------------------------------------------------------
def need_root(what: str = "mounting snapshots") -> None:
    """Skip the calling check unless running as root."""
    if os.geteuid() != 0:
        raise unittest.SkipTest(f"{what} needs root (CAP_SYS_ADMIN)")


@contextlib.contextmanager
def opened(make: Make, root: str) -> Iterator[Snapshotter]:
    """``make(root)``, closed after the block."""
    sn = make(root)
    try:
        yield sn
    finally:
        sn.close()


@contextlib.contextmanager
def mounted(mounts: list[Mount], tmp: str) -> Iterator[str]:
    """Mount ``mounts`` on a fresh directory under ``tmp``; always unmount after."""
    need_root()
    base = os.path.join(tmp, "mnt")
    os.makedirs(base, exist_ok=True)
    target = os.path.join(base, str(len(os.listdir(base))))
    os.mkdir(target)
    mount_all(mounts, target)
    try:
        yield target
    finally:
        unmount_all(target)
        os.rmdir(target)


def layer(sn: Snapshotter, tmp: str, name: str, parent: str,
          fn: Callable[[str], None]) -> None:
    """Prepare on ``parent``, mount, run ``fn(dir)``, unmount, commit as ``name``."""
    key = f"{name}-active"
    with mounted(sn.prepare(key, parent), tmp) as d:
        fn(d)
    sn.commit(name, key)


def _raises(cls: type[Exception], fn: Callable[[], object], what: str) -> None:
    try:
        fn()
    except cls:
        return
    except Exception as exc:  # a different class is as wrong as no error
        raise AssertionError(f"{what}: expected {cls.__name__}, got {exc!r}") from exc
    raise AssertionError(f"{what}: expected {cls.__name__}, nothing was raised")


def _write(path: str, data: bytes = b"x") -> None:
    with open(path, "wb") as f:
        f.write(data)


# --- checks ----------------------------------------------------------------------------------
def check_lifecycle(make: Make, tmp: str) -> None:
    """prepare → write → commit → prepare a child → view: the data flows through."""
    with opened(make, os.path.join(tmp, "root")) as sn:
        m = sn.prepare("base-active")
        assert m, "prepare returned no mounts"
        if os.geteuid() == 0:
            with mounted(m, tmp) as d:
                _write(os.path.join(d, "hello"), b"world")
        sn.commit("base", "base-active")
        m = sn.prepare("child", "base")
        assert m and sn.stat("child").parent == "base"
        v = sn.view("look", "base")
        assert sn.stat("look").kind == Kind.VIEW
        if os.geteuid() == 0:
            with mounted(m, tmp) as d:
                with open(os.path.join(d, "hello"), "rb") as f:
                    assert f.read() == b"world"
                _write(os.path.join(d, "more"))
            with mounted(v, tmp) as d:
                assert sorted(os.listdir(d)) == ["hello"]
        sn.commit("top", "child")
        assert sn.stat("top").parent == "base"


def check_kinds(make: Make, tmp: str) -> None:
    """Each call leaves the kind it promises, and stat finds keys and names alike."""
    with opened(make, os.path.join(tmp, "root")) as sn:
        sn.prepare("a")
        assert sn.stat("a").kind == Kind.ACTIVE
        sn.view("v")
        assert sn.stat("v").kind == Kind.VIEW
        sn.commit("c", "a")
        info = sn.stat("c")
        assert info.kind == Kind.COMMITTED and info.name == "c" and info.parent == ""
        assert info.created_at > 0 and info.updated_at >= info.created_at


def check_parent_rules(make: Make, tmp: str) -> None:
    """Only committed snapshots are parents; keys are unique across kinds."""
    with opened(make, os.path.join(tmp, "root")) as sn:
        _raises(NotFound, lambda: sn.prepare("x", "missing"), "prepare on a missing parent")
        sn.prepare("act")
        _raises(InvalidArgument, lambda: sn.prepare("x", "act"), "prepare on an active parent")
        sn.view("vw")
        _raises(InvalidArgument, lambda: sn.view("x", "vw"), "view on a view")
        _raises(AlreadyExists, lambda: sn.prepare("act"), "prepare of a taken key")
        _raises(AlreadyExists, lambda: sn.view("act"), "view of a taken key")
        _raises(FailedPrecondition, lambda: sn.commit("n", "vw"), "commit of a view")
        sn.prepare("act2")
        sn.commit("done", "act2")
        _raises(AlreadyExists, lambda: sn.commit("done", "act"), "commit to a taken name")
        _raises(FailedPrecondition, lambda: sn.commit("n", "done"), "commit of a committed")
        _raises(FailedPrecondition, lambda: sn.mounts("done"), "mounts of a committed")
        _raises(NotFound, lambda: sn.commit("n", "nope"), "commit of a missing key")
        _raises(NotFound, lambda: sn.stat("x"), "a failed prepare left a record")


def check_remove(make: Make, tmp: str) -> None:
    """A parent with children cannot go; children first, then the parent; missing → NotFound."""
    with opened(make, os.path.join(tmp, "root")) as sn:
        sn.prepare("p-a")
        sn.commit("p", "p-a")
        sn.prepare("c-a", "p")
        sn.commit("c", "c-a")
        sn.view("v", "c")
        _raises(FailedPrecondition, lambda: sn.remove("p"), "remove of a parent")
        _raises(FailedPrecondition, lambda: sn.remove("c"), "remove of a viewed parent")
        sn.remove("v")
        sn.remove("c")
        sn.remove("p")
        _raises(NotFound, lambda: sn.remove("p"), "second remove")
        _raises(NotFound, lambda: sn.stat("p"), "stat after remove")
        sn.cleanup()


def check_commit_retires_key(make: Make, tmp: str) -> None:
    """After commit the active key is gone (and free for reuse); the name carries on."""
    with opened(make, os.path.join(tmp, "root")) as sn:
        sn.prepare("k", labels={"old": "1"})
        sn.commit("n", "k", labels={"new": "2"})
        _raises(NotFound, lambda: sn.stat("k"), "stat of a committed key")
        _raises(NotFound, lambda: sn.mounts("k"), "mounts of a committed key")
        assert sn.stat("n").labels == {"new": "2"}, "commit replaces labels"
        sn.prepare("k", "n")
        assert sn.stat("k").parent == "n"


def check_view_read_only(make: Make, tmp: str) -> None:
    """Mounted views refuse writes with EROFS: empty, one parent, two parents."""
    need_root()
    with opened(make, os.path.join(tmp, "root")) as sn:
        layer(sn, tmp, "l1", "", lambda d: _write(os.path.join(d, "a")))
        layer(sn, tmp, "l2", "l1", lambda d: _write(os.path.join(d, "b")))
        for key, parent in (("v0", ""), ("v1", "l1"), ("v2", "l2")):
            with mounted(sn.view(key, parent), tmp) as d:
                try:
                    _write(os.path.join(d, "new"))
                except OSError as exc:
                    assert exc.errno == errno.EROFS, f"view {key}: {exc}"
                else:
                    raise AssertionError(f"view {key} on {parent or 'nothing'}: writable")
            assert all(m.read_only for m in sn.mounts(key)), f"view {key}: mounts not ro"


def check_usage(make: Make, tmp: str) -> None:
    """Committed usage is measured once at commit and plausible; parents are excluded."""
    need_root()
    with opened(make, os.path.join(tmp, "root")) as sn:
        def fill(d: str) -> None:
            _write(os.path.join(d, "big"), os.urandom(1 << 20))
            os.mkdir(os.path.join(d, "dir"))
            for i in range(3):
                _write(os.path.join(d, "dir", f"f{i}"), b"small")

        layer(sn, tmp, "u1", "", fill)
        u = sn.usage("u1")
        assert u.size >= 1 << 20 and (u.inodes >= 5 or u.inodes == -1), f"usage {u}"
        assert sn.usage("u1") == u
        layer(sn, tmp, "u2", "u1", lambda d: _write(os.path.join(d, "tiny"), b"t"))
        u2 = sn.usage("u2")
        assert (u2.inodes >= 1 or u2.inodes == -1) and u2.size < u.size, \
            f"child usage {u2} counts its parent"
        sn.prepare("act", "u2")
        assert sn.usage("act").size < 1 << 20


def check_labels_and_update(make: Make, tmp: str) -> None:
    """Labels are set at creation and changed only through update's fieldpaths."""
    with opened(make, os.path.join(tmp, "root")) as sn:
        sn.prepare("k", labels={"a": "1", "b": "2"})
        info = sn.stat("k")
        assert info.labels == {"a": "1", "b": "2"}
        new = sn.update(Info("k", info.kind, labels={"a": "9", "c": "3"}), ["labels.a"])
        assert new.labels == {"a": "9", "b": "2"}, new.labels
        assert new.updated_at >= info.updated_at
        new = sn.update(Info("k", info.kind, labels={}), ["labels.b"])
        assert new.labels == {"a": "9"}, "an absent value deletes the label"
        new = sn.update(Info("k", info.kind, labels={"z": "0"}))
        assert new.labels == {"z": "0"}, "no fieldpaths replaces all labels"
        assert sn.stat("k").labels == {"z": "0"}
        _raises(InvalidArgument, lambda: sn.update(Info("k", info.kind, parent="x"),
                                                   ["parent"]), "update of parent")
        _raises(NotFound, lambda: sn.update(Info("gone", Kind.ACTIVE)), "update of missing")


def check_walk_filters(make: Make, tmp: str) -> None:
    """walk filters on kind, name, parent and labels; stat works inside the callback."""
    with opened(make, os.path.join(tmp, "root")) as sn:
        sn.prepare("a")
        sn.commit("base", "a", labels={"x": "y"})
        sn.prepare("b", "base", labels={"x": "z", "dotted.key": "v"})
        sn.view("c", "base")

        def names(*filters: str) -> list[str]:
            out: list[str] = []
            sn.walk(lambda i: out.append(sn.stat(i.name).name), filters)
            return sorted(out)

        assert names() == ["b", "base", "c"]
        assert names("kind==committed") == ["base"]
        assert names("kind==Active") == ["b"]
        assert names("name==c") == ["c"]
        assert names("parent==base") == ["b", "c"]
        assert names('labels."x"==y') == ["base"]
        assert names('labels."dotted.key"') == ["b"]
        assert names("kind==view", "name==b") == ["b", "c"], "filters are ORed"
        assert names("parent==base,labels.x==z") == ["b"], "clauses are ANDed"


def check_close_twice(make: Make, tmp: str) -> None:
    """close is idempotent."""
    sn = make(os.path.join(tmp, "root"))
    sn.close()
    sn.close()


def _fork(fn: Callable[[], bytes], gate: int | None = None) -> tuple[int, int]:
    """Run ``fn`` in a forked child; return (pid, fd to read its one-line answer from)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(r)
            # The parent's LMDB handles must not be used after fork: forget them.
            from cargohold import _lmdb
            _lmdb._envs = {}
            if gate is not None:
                os.read(gate, 1)
            out = fn()
        except BaseException as exc:  # everything goes back to the parent as text
            out = f"error {type(exc).__name__}: {exc}".encode()
            code = 1
        finally:
            os.write(w, out + b"\n")
            os._exit(code)
    os.close(w)
    return pid, r


def _answer(fd: int) -> str:
    with os.fdopen(fd, "rb") as f:
        return f.readline().decode().strip()


def check_concurrent_prepare(make: Make, tmp: str) -> None:
    """Two processes prepare the same key at once: exactly one wins, the other AlreadyExists."""
    root = os.path.join(tmp, "root")
    make(root).close()  # create it first, so the race is on the key, not on the directory
    gr, gw = os.pipe()

    def child() -> bytes:
        with opened(make, root) as sn:
            try:
                sn.prepare("same")
            except AlreadyExists:
                return b"exists"
        return b"won"

    kids = [_fork(child, gr) for _ in range(2)]
    os.write(gw, b"go")
    answers = sorted(_answer(fd) for _, fd in kids)
    for pid, _ in kids:
        os.waitpid(pid, 0)
    os.close(gr)
    os.close(gw)
    assert answers == ["exists", "won"], answers
    with opened(make, root) as sn:
        found: list[str] = []
        sn.walk(lambda i: found.append(i.name))
        assert found == ["same"]


def check_crash_after_prepare(make: Make, tmp: str) -> None:
    """kill -9 between prepare and commit leaves one active snapshot; remove + cleanup leave
    nothing behind.
    """
    root = os.path.join(tmp, "root")

    r, w = os.pipe()

    def child_and_wait() -> bytes:
        os.close(r)
        sn = make(root)
        sn.prepare("base-a")
        sn.commit("base", "base-a")
        sn.prepare("doomed", "base")
        os.write(w, b"prepared\n")
        signal.pause()  # wait for SIGKILL, never committing or closing
        return b"not killed"

    pid, fd = _fork(child_and_wait)
    os.close(w)
    got = _answer(r)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(fd)
    assert got == "prepared", got
    with opened(make, root) as sn:
        kinds: dict[str, Kind] = {}
        sn.walk(lambda i: kinds.__setitem__(i.name, i.kind))
        assert kinds == {"base": Kind.COMMITTED, "doomed": Kind.ACTIVE}, kinds
        sn.remove("doomed")
        sn.remove("base")
        sn.cleanup()
        left = os.path.join(root, "snapshots")
        if os.path.isdir(left):
            assert os.listdir(left) == [], f"leftovers: {os.listdir(left)}"


def copy_or_move(src: str, dst: str) -> None:
    """``mv``: rename, or copy and delete where overlay answers EXDEV (redirect_dir off)."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copytree(src, dst, symlinks=True)
        shutil.rmtree(src)



def check_file_semantics(make: Make, tmp: str) -> None:
    """What layered image builds do: update, delete (also a lower directory), chown, chmod of
    a directory, rename of a directory and of a file from a lower layer.
    """
    need_root()
    with opened(make, os.path.join(tmp, "root")) as sn:
        def l1(d: str) -> None:
            os.makedirs(os.path.join(d, "etc"))
            _write(os.path.join(d, "etc", "hosts"), b"one")
            os.makedirs(os.path.join(d, "lib", "sub"))
            _write(os.path.join(d, "lib", "sub", "x.so"))
            _write(os.path.join(d, "owned"))
            os.mkdir(os.path.join(d, "private"), 0o700)
            os.chmod(os.path.join(d, "private"), 0o700)
            os.mkdir(os.path.join(d, "shared"), 0o755)
            os.makedirs(os.path.join(d, "old", "deep"))
            _write(os.path.join(d, "old", "deep", "f"), b"moved")
            _write(os.path.join(d, "gone"))
            _write(os.path.join(d, "kept"))
            os.mkdir(os.path.join(d, "src"))
            _write(os.path.join(d, "src", "file"), b"file")

        def l2(d: str) -> None:
            _write(os.path.join(d, "etc", "hosts"), b"two")
            shutil.rmtree(os.path.join(d, "lib"))
            os.chown(os.path.join(d, "owned"), 1000, 1001)
            _write(os.path.join(d, "private", "inside"))
            os.chmod(os.path.join(d, "shared"), 0o750)
            copy_or_move(os.path.join(d, "old"), os.path.join(d, "new"))
            os.unlink(os.path.join(d, "gone"))
            os.mkdir(os.path.join(d, "dst"))
            os.rename(os.path.join(d, "src", "file"), os.path.join(d, "dst", "file"))

        layer(sn, tmp, "l1", "", l1)
        layer(sn, tmp, "l2", "l1", l2)
        sn.prepare("l3-active", "l2")  # the same tree through an active snapshot
        for mounts in (sn.mounts("l3-active"), sn.view("top", "l2")):
            with mounted(mounts, tmp) as d:
                def p(*parts: str, d: str = d) -> str:
                    return os.path.join(d, *parts)

                with open(p("etc", "hosts"), "rb") as f:
                    assert f.read() == b"two", "file update lost"
                assert not os.path.lexists(p("lib")), "deleted lower directory shows"
                st = os.stat(p("owned"))
                assert (st.st_uid, st.st_gid) == (1000, 1001), "chown lost"
                assert os.stat(p("private")).st_mode & 0o777 == 0o700, "dir mode changed"
                assert os.path.exists(p("private", "inside"))
                assert os.stat(p("shared")).st_mode & 0o777 == 0o750, "chmod lost"
                assert not os.path.lexists(p("old")), "renamed directory still there"
                with open(p("new", "deep", "f"), "rb") as f:
                    assert f.read() == b"moved"
                assert not os.path.lexists(p("gone")) and os.path.exists(p("kept"))
                assert os.listdir(p("src")) == [] and os.path.exists(p("dst", "file"))
        with mounted(sn.view("bottom", "l1"), tmp) as d:
            with open(os.path.join(d, "etc", "hosts"), "rb") as f:
                assert f.read() == b"one", "a child changed its parent"
            assert os.path.exists(os.path.join(d, "lib", "sub", "x.so"))
            assert os.path.exists(os.path.join(d, "gone"))


def check_128_layers(make: Make, tmp: str) -> None:
    """A chain of 128 committed layers mounts (view and active) and reads the bottom layer."""
    need_root()
    with opened(make, os.path.join(tmp, "root")) as sn:
        layer(sn, tmp, "layer-0", "", lambda d: _write(os.path.join(d, "bottom"), b"deep"))
        parent = "layer-0"
        for i in range(1, 128):
            sn.prepare(f"k{i}", parent)
            sn.commit(f"layer-{i}", f"k{i}")
            parent = f"layer-{i}"
        layer(sn, tmp, "layer-128", parent, lambda d: _write(os.path.join(d, "top"), b"up"))
        with mounted(sn.view("all", "layer-128"), tmp) as d:
            with open(os.path.join(d, "bottom"), "rb") as f:
                assert f.read() == b"deep"
            assert sorted(os.listdir(d)) == ["bottom", "top"]
        with mounted(sn.prepare("work", "layer-128"), tmp) as d:
            with open(os.path.join(d, "bottom"), "rb") as f:
                assert f.read() == b"deep"
            _write(os.path.join(d, "written"))

ALL_CHECKS: dict[str, Callable[[Make, str], None]] = {
    "lifecycle": check_lifecycle,
    "kinds": check_kinds,
    "parent_rules": check_parent_rules,
    "remove": check_remove,
    "commit_retires_key": check_commit_retires_key,
    "view_read_only": check_view_read_only,
    "usage": check_usage,
    "labels_and_update": check_labels_and_update,
    "walk_filters": check_walk_filters,
    "close_twice": check_close_twice,
    "file_semantics": check_file_semantics,
    "128_layers": check_128_layers,
    "concurrent_prepare": check_concurrent_prepare,
    "crash_after_prepare": check_crash_after_prepare,
}
