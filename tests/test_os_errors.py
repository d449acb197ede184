"""No OSError and no LMDB error reaches the user as "internal error".

A table drives each errno through the real code path: the real ``hold`` child process where
the condition can be made real (a full tmpfs, a read-only mount, a root owned by another user
with the DAC capabilities dropped, a blob nobody may read, a lowered RLIMIT_NOFILE); an
injected fault where the machine cannot produce it (EIO: ``os.fsync`` replaced in the child by
one that fails, the fault-injection wrapper of STYLE.md §11). LMDB's own errors are produced
for real on a live environment (map full, readers full, map resized by another process), and
every other ``lmdb.Error`` class is checked against the translation table.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap

import lmdb
import pytest

from cargohold import _lmdb
from cargohold._oserror import NoSpace, PermissionDenied, ReadOnly
from cargohold.errors import CargoholdError, FailedPrecondition, InvalidArgument, Unavailable
from tests.conftest import run_hold
from tests.diskkit import fill, make_archive, need_root, ro_bind, tmpfs

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(str(tmp_path_factory.mktemp("errno") / "a.tar"), 1, "example.com/e:1")


@pytest.fixture
def populated(tmp_path, archive):
    root = str(tmp_path / "root")
    run_hold(root, "images", "import", archive)
    return root


def _layer(root: str) -> str:
    out = run_hold(root, "content", "ls", "-q").stdout.decode().split()
    sizes = {d: os.path.getsize(os.path.join(root, "content", "blobs", "sha256", d[7:]))
             for d in out}
    return max(sizes, key=sizes.get)


def _child(root: str, setup: str, argv: list[str], *, input: bytes | None = None,
           prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``hold ARGV`` in a child after ``setup`` (Python) ran in it: the fault injection."""
    code = textwrap.dedent(setup) + "\nfrom cargohold.cli.main import main\nmain(ARGV)\n"
    env = dict(os.environ, PYTHONPATH=SRC, HOLD_ROOT=root,
               HOLD_STATE=os.path.join(root, "_state"),
               HOLD_CONFIG=os.path.join(root, "_no_config.toml"))
    return subprocess.run([*(prefix or []), sys.executable, "-c", f"ARGV = {argv!r}\n{code}"],
                          input=input, capture_output=True, env=env, timeout=120)


def _one_error(p: subprocess.CompletedProcess) -> list[str]:
    err = p.stderr.decode()
    assert "internal error" not in err and "Traceback" not in err, err
    assert p.returncode == 1, (p.returncode, err)
    lines = err.splitlines()
    assert lines and lines[0].startswith("hold: "), err
    return lines


_NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def _need_setpriv() -> None:
    need_root()
    if shutil.which("setpriv") is None:
        pytest.skip("missing setpriv (util-linux): needed to drop CAP_DAC_OVERRIDE")


# --- the table: errno -> a real situation ----------------------------------------------------
def case_enospc(tmp_path, archive, populated):
    with tmpfs(str(tmp_path / "fs"), "32m") as fs:
        root = os.path.join(fs, "root")
        run_hold(root, "images", "ls")
        fill(fs)
        p = run_hold(root, "content", "ingest", "r1", input=os.urandom(1 << 20), check=False)
        lines = _one_error(p)
        assert f"no space left on filesystem {fs} " in lines[0], lines
        assert lines[1].startswith("hint: free space with 'hold images rm' and 'hold gc'")
    return lines


def case_erofs(tmp_path, archive, populated):
    ro = str(tmp_path / "ro")
    with ro_bind(populated, ro):
        p = run_hold(ro, "images", "import", archive, check=False)
        lines = _one_error(p)
        assert lines[0] == f"hold: root {ro} is read-only"
        # Below the CLI, without the read-only mark: the store meets EROFS itself.
        from cargohold.store.local import LocalStore

        with pytest.raises(ReadOnly, match=f"root .*{ro}.* is read-only"):
            LocalStore(os.path.join(ro, "content")).writer("x")
    return lines


def case_eacces_root(tmp_path, archive, populated):
    _need_setpriv()
    shutil.chown(populated, 65534, 65534)
    os.chmod(populated, 0o700)
    p = _child(populated, "", ["images", "ls"], prefix=_NO_DAC)
    lines = _one_error(p)
    assert "permission denied" in lines[0], lines
    assert "belongs to nobody (uid 65534)" in lines[1], lines
    return lines


def case_eacces_blob(tmp_path, archive, populated):
    _need_setpriv()
    layer = _layer(populated)
    path = os.path.join(populated, "content", "blobs", "sha256", layer[7:])
    os.chmod(path, 0)
    p = _child(populated, "", ["content", "get", layer], prefix=_NO_DAC)
    lines = _one_error(p)
    assert lines[0] == f"hold: content digest {layer}: permission denied", lines
    return lines


def case_emfile(tmp_path, archive, populated):
    # Everything imported first, then the limit lowered to one more descriptor than are open:
    # LMDB's open (data.mdb and lock.mdb) is what runs out.
    setup = """
        import os, resource
        import cargohold.cli.images_manage, cargohold.client, cargohold.metadata.db
        import cargohold.images.manage, cargohold.store.local
        n = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1, n + 1))
    """
    p = _child(populated, setup, ["images", "ls"])
    lines = _one_error(p)
    assert "too many open files (this process)" in lines[0], lines
    assert lines[1] == "hint: raise the open-file limit ('ulimit -n') or run fewer commands at once"
    return lines


def case_eio(tmp_path, archive, populated):
    # Fault injection: fsync of a regular file fails with EIO, as a dying disk's would.
    setup = """
        import errno, os, stat
        real = os.fsync
        def fsync(fd):
            if stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real(fd)
        os.fsync = fsync
    """
    p = _child(populated, setup, ["content", "ingest", "r1"], input=b"some bytes")
    lines = _one_error(p)
    assert "cannot write: I/O error on filesystem" in lines[0], lines
    assert lines[1].startswith("hint: the disk or filesystem reported an error: check 'dmesg'")
    return lines


CASES = {"ENOSPC": case_enospc, "EROFS": case_erofs, "EACCES (root of another user)":
         case_eacces_root, "EACCES (blob file)": case_eacces_blob, "EMFILE": case_emfile,
         "EIO": case_eio}


@pytest.mark.parametrize("errno_case", list(CASES))
def test_os_error_is_translated(tmp_path, archive, populated, errno_case):
    lines = CASES[errno_case](tmp_path, archive, populated)
    print(f"\n[{errno_case}] " + " | ".join(lines))


# --- LMDB's own errors, for real ---------------------------------------------------------------
def test_map_full_is_no_space(tmp_path, monkeypatch):
    monkeypatch.setattr(_lmdb, "MAP_SIZE", 256 << 10)
    env = _lmdb.Env(str(tmp_path / "db"))
    try:
        with pytest.raises(NoSpace, match="the database reached its map size"):
            with env.update() as tx:
                for i in range(2000):
                    tx.put(b"k%06d" % i, os.urandom(512))
        with env.view() as tx:  # nothing of the failed transaction is visible
            assert tx.get(b"k000000") is None
    finally:
        env.close()


def test_readers_full_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(_lmdb, "MAX_READERS", 1)
    env = _lmdb.Env(str(tmp_path / "db"))
    try:
        with env.view():
            with pytest.raises(Unavailable, match="1 readers have it open") as ei:
                with env.view():
                    pass
        assert "wait for other hold processes" in ei.value.hint
    finally:
        env.close()


def test_map_resized_by_another_process_is_unavailable(tmp_path, monkeypatch):
    path = str(tmp_path / "db")
    monkeypatch.setattr(_lmdb, "MAP_SIZE", 1 << 20)
    env = _lmdb.Env(path)
    try:
        grow = textwrap.dedent(f"""
            import lmdb, os
            env = lmdb.open({path!r}, map_size=64 << 20)
            with env.begin(write=True) as txn:
                for i in range(4000):
                    txn.put(b"g%06d" % i, os.urandom(1024))
        """)
        subprocess.run([sys.executable, "-c", grow], check=True, timeout=60)
        with pytest.raises(Unavailable, match="another process grew the database") as ei:
            with env.update() as tx:
                tx.put(b"x", b"y")
        assert ei.value.hint == "run the command again"
    finally:
        env.close()


@pytest.mark.parametrize("cls", sorted(
    (c for c in vars(lmdb).values()
     if isinstance(c, type) and issubclass(c, lmdb.Error)), key=lambda c: c.__name__),
    ids=lambda c: c.__name__)
def test_every_lmdb_error_class_is_translated(cls):
    err = _lmdb.lmdb_error(cls("mdb_something"), "/r/metadata")
    assert isinstance(err, CargoholdError)
    assert "/r/metadata" in err.message
    if cls is lmdb.BadValsizeError:
        assert isinstance(err, InvalidArgument)
    else:
        assert isinstance(err, (FailedPrecondition, Unavailable)), (cls, err)
    expected = {lmdb.MapFullError: NoSpace, lmdb.DiskError: NoSpace,
                lmdb.ReadersFullError: Unavailable, lmdb.MapResizedError: Unavailable,
                lmdb.LockError: Unavailable, lmdb.ReadonlyError: PermissionDenied}
    if cls in expected:
        assert isinstance(err, expected[cls]), (cls, err)


# --- output the user asked for, and a root that is not a directory ---------------------------
def _image(root: str) -> str:
    return run_hold(root, "images", "ls", "-q").stdout.decode().split()[0]


def _hold_to(root: str, argv: list[str], out_path: str) -> subprocess.CompletedProcess:
    """``hold ARGV > out_path``, standard output opened as a shell redirect would."""
    env = dict(os.environ, PYTHONPATH=SRC, HOLD_ROOT=root,
               HOLD_STATE=os.path.join(root, "_state"),
               HOLD_CONFIG=os.path.join(root, "_no_config.toml"))
    with open(out_path, "wb") as out:
        return subprocess.run([sys.executable, "-m", "cargohold", *argv], stdout=out,
                              stderr=subprocess.PIPE, env=env, timeout=120)


def test_output_to_a_full_filesystem_names_it_and_the_way_out(tmp_path, populated):
    """An archive or a blob written where there is no room (a file on a full filesystem,
    standard output redirected there or to /dev/full) is one clear error, exit 1."""
    image, layer = _image(populated), _layer(populated)
    with tmpfs(str(tmp_path / "fs"), "1m") as fs:
        p = run_hold(populated, "images", "export", os.path.join(fs, "x.tar"), image,
                     check=False)
        lines = _one_error(p)
        assert lines[0].startswith(f"hold: export {fs}/x.tar: no space left on filesystem "
                                   f"{fs} "), lines
        assert lines[1] == (f"hint: free space on {fs} (with 'hold gc' when the root shares "
                            "it), or write the output to another filesystem")
        assert os.listdir(fs) == []  # no partial archive, no temporary file
        for argv in (["images", "export", "-", image], ["content", "get", layer]):
            p = _hold_to(populated, argv, os.path.join(fs, "out"))
            lines = _one_error(p)
            assert f"to standard output ({fs}/out): no space left on filesystem {fs} " \
                   in lines[0], lines
            os.unlink(os.path.join(fs, "out"))
    for argv in (["images", "export", "-", image], ["content", "get", layer]):
        lines = _one_error(_hold_to(populated, argv, "/dev/full"))
        assert lines[0].endswith("to standard output (/dev/full): No space left on device")
        assert lines[1].startswith("hint: send the output somewhere that takes it")
    # A closed pipe is not an error worth a message (`hold content get D | head -c1`).
    p = subprocess.run(f"{sys.executable} -m cargohold content get {layer} | head -c 1",
                       shell=True, capture_output=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=SRC, HOLD_ROOT=populated,
                                HOLD_STATE=os.path.join(populated, "_state"),
                                HOLD_CONFIG=os.path.join(populated, "_no_config.toml")))
    assert len(p.stdout) == 1 and p.stderr == b""


def test_a_listing_standard_output_will_not_take_is_one_clear_error(tmp_path, populated):
    """Tables and JSON (the fast hot commands and click's alike) to a full filesystem or to
    /dev/full: one error naming standard output, exit 1, not an internal error."""
    lines_of = ["images", "ls"], ["content", "ls", "--format", "json"], ["leases", "ls"], \
        ["namespaces", "ls"], ["version"]
    for argv in lines_of:
        lines = _one_error(_hold_to(populated, list(argv), "/dev/full"))
        assert lines == ["hold: standard output (/dev/full): No space left on device",
                         "hint: send the output somewhere that takes it (a file on a "
                         "filesystem with room, a pipe)"], (argv, lines)
    with tmpfs(str(tmp_path / "fs"), "64k") as fs:
        with open(os.path.join(fs, "filler"), "wb") as f:
            with contextlib.suppress(OSError):
                f.write(b"\0" * (1 << 20))
        lines = _one_error(_hold_to(populated, ["images", "ls"], os.path.join(fs, "out")))
        assert lines[0].startswith(f"hold: standard output ({fs}/out): no space left on "
                                   f"filesystem {fs} "), lines


def test_export_to_a_read_only_filesystem(tmp_path, populated):
    out = tmp_path / "out"
    out.mkdir()
    ro = str(tmp_path / "ro")
    with ro_bind(str(out), ro):
        lines = _one_error(run_hold(populated, "images", "export", f"{ro}/x.tar",
                                    _image(populated), check=False))
    assert lines == [f"hold: export {ro}/x.tar: filesystem {ro} is read-only",
                     "hint: write the output to a writable directory"]


def test_a_root_or_state_that_is_a_file(tmp_path, populated, archive):
    f = tmp_path / "afile"
    f.write_text("not a directory")
    for root in (str(f), str(f / "sub")):
        lines = _one_error(run_hold(root, "images", "ls", check=False))
        assert lines == [f"hold: directory {root}: {f} exists and is not a directory",
                         f"hint: move {f} out of the way, or choose another directory "
                         "(--root, --state)"]
    # A state directory that is a file: GC and the mount list read no records from it, a
    # mount that must write one says why it cannot.
    p = run_hold(populated, "gc", check=False, env={"HOLD_STATE": str(f)})
    assert p.returncode == 0, p.stderr.decode()
    p = run_hold(populated, "images", "mount", _image(populated), str(tmp_path / "t"),
                 check=False, env={"HOLD_STATE": str(f)})
    lines = _one_error(p)
    assert lines[0] == f"hold: directory {f}/mounts: {f} exists and is not a directory"
    from cargohold.mount import is_mountpoint

    assert not is_mountpoint(str(tmp_path / "t"))
    assert run_hold(populated, "leases", "ls", "-q").stdout == b""
