"""Hostile layers, as one table: each proves nothing outside the root changed.

Every case applies a layer into ``sandbox/root`` (a bind target with real whiteouts, and an
overlay upper dir with overlay whiteouts) next to ``sandbox/outside``, a sentinel tree. The
outside tree, the sandbox's top level and ``/etc`` are snapshotted before and after; the
layer must either fail with a clear :class:`LayerError` naming the layer and the entry, or be
confined inside the root (checked per case).
"""

from __future__ import annotations

import io
import os
import stat

import pytest
from tests.differ.rawtar import block, end, member, pax, record
from treeutil import desc, diff_snapshots, gz, snapshot, tar_bytes

from cargohold.differ.api import LayerError
from cargohold.differ.apply import apply
from cargohold.types import Mount

OUT = "{outside}"  # replaced by the absolute path of the sentinel dir


def _exists(rel):
    return lambda root: os.path.lexists(os.path.join(root, rel.format(outside=_o[0])[1:]
                                                     if rel.startswith("{") else rel))


def _regular(rel):
    return lambda root: stat.S_ISREG(os.lstat(os.path.join(root, rel)).st_mode)


_o = [""]

# (id, entries, expected): expected is ("error", regex) or ("confined", check(root) -> bool)
CASES = [
    ("dotdot", [("../outside/evil", "file")], ("error", "climbs out of the root")),
    ("dotdot-nested", [("a/../../outside/evil", "file")], ("error", "climbs out")),
    ("dotdot-dir", [("..", "dir")], ("error", "climbs out")),
    ("absolute-path", [(OUT + "/evil", "file")], ("confined", _exists(OUT + "/evil"))),
    ("absolute-symlink-then-write", [("lnk", "sym", {"target": OUT}),
                                     ("lnk/evil", "file")],
     ("confined", _exists(OUT + "/evil"))),
    ("relative-symlink-escape-then-write", [("lnk", "sym", {"target": "../outside"}),
                                            ("lnk/evil", "file")],
     ("confined", _exists("outside/evil"))),
    ("deep-relative-symlink-escape", [("a/b", "dir"),
                                      ("a/b/lnk", "sym", {"target": "../../../../../outside"}),
                                      ("a/b/lnk/evil", "file")],
     ("confined", _exists("outside/evil"))),
    ("symlink-to-etc-then-write", [("x", "sym", {"target": "/etc"}),
                                   ("x/cargohold-pwned", "file")],
     ("confined", _exists("etc/cargohold-pwned"))),
    # /etc inside the root is the symlink itself: a loop, as openat2(RESOLVE_IN_ROOT) says
    ("self-referencing-absolute-symlink", [("etc", "sym", {"target": "/etc"}),
                                           ("etc/cargohold-pwned", "file")],
     ("error", "too many levels of symlinks")),
    ("hardlink-to-etc-passwd", [("pw", "link", {"target": "/etc/passwd"})],
     ("error", "hardlink target '/etc/passwd' is not in the root")),
    ("hardlink-dotdot", [("pw", "link", {"target": "../outside/secret"})],
     ("error", "climbs out")),
    ("hardlink-through-symlinked-dir", [("o", "sym", {"target": "../outside"}),
                                        ("h", "link", {"target": "o/secret"})],
     ("error", "hardlink target 'o/secret' is not in the root")),
    ("hardlink-through-absolute-symlink", [("e", "sym", {"target": "/etc"}),
                                           ("h", "link", {"target": "e/passwd"})],
     ("error", "is not in the root")),
    ("hardlink-to-dir", [("d", "dir"), ("h", "link", {"target": "d"})],
     ("error", "is a directory")),
    ("symlink-then-file-over-it", [("f", "sym", {"target": OUT + "/secret"}),
                                   ("f", "file", {"data": b"pwned"})],
     ("confined", _regular("f"))),
    ("dir-replaced-by-symlink-then-write", [("d", "dir"), ("d/a", "file"),
                                            ("d", "sym", {"target": OUT}),
                                            ("d/evil", "file", {"data": b"pwned"})],
     ("confined", _exists(OUT + "/evil"))),
    ("whiteout-dotdot-name", [(".wh...", "file")], ("error", "invalid whiteout name")),
    ("whiteout-dot-name", [("d/.wh..", "file")], ("error", "invalid whiteout name")),
    ("whiteout-in-parent", [("../.wh.outside", "file")], ("error", "climbs out")),
    ("whiteout-through-symlink", [("lnk", "sym", {"target": "../"}),
                                  ("lnk/.wh.outside", "file")], ("confined", None)),
    ("whiteout-through-absolute-symlink", [("lnk", "sym", {"target": OUT}),
                                           ("lnk/.wh.secret", "file")], ("confined", None)),
    ("opaque-through-symlink", [("lnk", "sym", {"target": OUT}),
                                ("lnk/.wh..wh..opq", "file")], ("confined", None)),
    ("overwrite-root-with-file", [(".", "file", {"data": b"x"})],
     ("error", "replace the root itself")),
    ("overwrite-root-with-symlink", [("/", "sym", {"target": OUT})],
     ("error", "replace the root itself")),
    ("root-dir-entry-is-ignored", [("./", "dir", {"mode": 0o777})], ("confined", None)),
    ("symlink-loop-parent", [("a", "sym", {"target": "b"}), ("b", "sym", {"target": "a"}),
                             ("a/x", "file")], ("error", "too many levels of symlinks")),
    ("parent-is-a-file", [("f", "file"), ("f/x", "file")], ("error", "is not a directory")),
    ("device-node-when-not-allowed", [("dev/sda", "blk", {"dev": (8, 0)})],
     ("confined", lambda root: not os.path.lexists(os.path.join(root, "dev/sda")))),
    ("trusted-overlay-xattr", [("d", "dir", {"xattrs": {"trusted.overlay.opaque": b"y"}})],
     ("confined", lambda root: "trusted.overlay.opaque" not in os.listxattr(
         os.path.join(root, "d")))),
    ("huge-pax-header", "huge-pax", ("error", "larger than the 1048576-byte limit")),
    ("not-a-tar", "garbage", ("error", "bad tar header")),
    # raw headers: each once reached a system call that overflowed ("internal error")
    ("pax-uid-2^40", pax(record("uid", str(1 << 40))) + member("f") + end(),
     ("error", r"entry 'f': bad PAX header: PAX uid 1099511627776 is out of range")),
    ("mtime-beyond-64-bit-nanoseconds", member("f", mtime=b"\x80" + b"\x7f" * 11) + end(),
     ("error", r"entry 'f': bad tar header at byte 0 \(after 0 entries\): mtime \d+ is out")),
    ("device-number-beyond-32-bits",
     block("dev/x", b"3", devmajor=b"\x80" + (1 << 40).to_bytes(7, "big")) + end(),
     ("error", "devmajor 1099511627776 is out of range")),
    ("zero-length-pax-record", pax(b"0 path=x\n") + member("f") + end(),
     ("error", "record 1: length 0 is too short")),
    ("hardlink-size-is-not-data", block("h", b"1", size=4096, linkname="f") + end(),
     ("error", "hardlink target 'f' is not in the root")),
]


def _blob(entries, outside):
    if isinstance(entries, bytes):
        return gz(entries)
    if entries == "huge-pax":
        import tarfile

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            ti = tarfile.TarInfo("f")
            ti.pax_headers = {"comment": "x" * (2 << 20)}
            t.addfile(ti, io.BytesIO(b""))
        return gz(buf.getvalue())
    if entries == "garbage":
        return gz(os.urandom(4096))
    fixed = []
    for ent in entries:
        name = ent[0].replace(OUT, outside)
        kw = dict(ent[2]) if len(ent) > 2 else {}
        if "target" in kw:
            kw["target"] = kw["target"].replace(OUT, outside)
        fixed.append((name, ent[1], kw))
    return gz(tar_bytes(fixed))


def _world(sandbox):
    return (sorted(os.listdir(sandbox)), snapshot(os.path.join(sandbox, "outside")),
            sorted(os.listdir("/etc")))


@pytest.mark.parametrize("mode", ["bind", "overlay"])
@pytest.mark.parametrize("case_id, entries, expected", CASES, ids=[c[0] for c in CASES])
def test_hostile_layer(tmp_path, mode, case_id, entries, expected):
    if mode == "overlay" and os.geteuid() != 0:
        pytest.skip("needs root (overlay whiteouts are 0/0 character devices)")
    sandbox = tmp_path / "sandbox"
    root, outside, lower, work = (sandbox / n for n in ("root", "outside", "lower", "work"))
    for p in (root, outside / "sub", lower, work):
        p.mkdir(parents=True)
    (outside / "secret").write_text("keep me")
    (outside / "sub" / "file").write_text("keep me too")
    _o[0] = str(outside)
    before = _world(sandbox)
    blob = _blob(entries, str(outside))
    d = desc(blob)
    if mode == "bind":
        mounts = [Mount("bind", str(root), ("rbind",))]
    else:
        mounts = [Mount("overlay", "overlay", (f"lowerdir={lower}", f"upperdir={root}",
                                               f"workdir={work}"))]
    kind, check = expected
    if kind == "error":
        with pytest.raises(LayerError) as ei:
            apply(d, mounts, reader=io.BytesIO(blob), devices=False)
        msg = str(ei.value)
        assert msg.startswith(f"layer {d.digest}: "), msg
        import re

        assert re.search(check, msg), msg
    else:
        warnings: list[str] = []
        apply(d, mounts, reader=io.BytesIO(blob), devices=False, warnings=warnings)
        if check is not None:
            assert check(str(root)), f"{case_id}: not confined as expected"
    assert _world(sandbox) == before, f"{case_id}: something outside the root changed"
    assert (outside / "secret").read_text() == "keep me"
    assert not os.path.exists("/etc/cargohold-pwned")


# --- symlinks in a LOWER layer ------------------------------------------------------------------
# Each case applies ``lower`` in overlay form into sandbox/lower, then ``upper`` straight into
# an overlay upper dir over it. The result must be what applying both layers onto one real
# directory gives (the bind-mode reference in sandbox/ref, which is containerd's semantics:
# symlinks are followed inside the root), nothing outside the root may change — the lower
# layer included — and an expected error must be raised by both.
# (id, lower entries, upper entries, expected): expected as in CASES; a check gets the merged
# view's path.
LOWER_CASES = [
    ("lower-etc-to-root-then-write", [("etc", "sym", {"target": "/"})],
     [("etc/passwd", "file", {"data": b"pw"})],
     ("confined", lambda m: os.path.isfile(f"{m}/passwd") and os.path.islink(f"{m}/etc"))),
    ("lower-etc-dotdot-then-write", [("etc", "sym", {"target": "../../.."})],
     [("etc/passwd", "file", {"data": b"pw"})],
     ("confined", lambda m: os.path.isfile(f"{m}/passwd"))),
    ("lower-absolute-outside-then-write", [("s", "sym", {"target": OUT})],
     [("s/evil", "file")], ("confined", lambda m: os.path.isfile(m + _o[0] + "/evil"))),
    ("lower-symlink-then-dirs-under-it", [("etc", "sym", {"target": "/"})],
     [("etc/d", "dir"), ("etc/d/f", "file")],
     ("confined", lambda m: os.path.isfile(f"{m}/d/f"))),
    ("lower-symlink-then-whiteout-under-it", [("x", "file"), ("etc", "sym", {"target": "/"})],
     [("etc/.wh.x", "file")], ("confined", lambda m: not os.path.lexists(f"{m}/x"))),
    ("lower-symlink-then-opaque-under-it",
     [("d/a", "file"), ("etc", "sym", {"target": "/d"})],
     [("etc/.wh..wh..opq", "file"), ("etc/b", "file")],
     ("confined", lambda m: sorted(os.listdir(f"{m}/d")) == ["b"])),
    ("lower-symlink-then-hardlink-under-it",
     [("x", "file", {"data": b"lower data"}), ("etc", "sym", {"target": "/"})],
     [("h", "link", {"target": "etc/x"})],
     ("confined", lambda m: os.path.samefile(f"{m}/h", f"{m}/x"))),
    ("lower-symlink-outside-then-hardlink", [("e", "sym", {"target": OUT})],
     [("h", "link", {"target": "e/secret"})], ("error", "hardlink target 'e/secret' is not")),
    ("lower-symlink-to-host-etc-then-hardlink", [("e", "sym", {"target": "/etc"})],
     [("h", "link", {"target": "e/passwd"})], ("error", "is not in the root")),
    # a lower symlink shadowed by an upper dir: nothing is read through it (once, the copy-up
    # of 'a/sub' took its owner, mode and xattrs from the host's outside/sub)
    ("lower-symlink-shadowed-by-an-upper-dir", [("a", "sym", {"target": OUT})],
     [("a", "dir"), ("a/sub/f", "file")],
     ("confined", lambda m: stat.S_IMODE(os.stat(f"{m}/a/sub").st_mode) == 0o755
      and "user.secret" not in os.listxattr(f"{m}/a/sub"))),
    ("lower-self-referencing-symlink", [("etc", "sym", {"target": "/etc"})],
     [("etc/x", "file")], ("error", "too many levels of symlinks")),
    ("lower-file-as-a-parent", [("f", "file")], [("f/x", "file")],
     ("error", "is not a directory")),
    ("lower-dir-whited-out-then-made-again", [("d/old", "file")],
     [(".wh.d", "file"), ("d/new", "file")],
     ("confined", lambda m: sorted(os.listdir(f"{m}/d")) == ["new"])),
    ("lower-dir-replaced-by-a-file-then-a-dir", [("d/old", "file")],
     [("d", "file"), ("d", "dir"), ("d/new", "file")],
     ("confined", lambda m: sorted(os.listdir(f"{m}/d")) == ["new"])),
    ("hardlink-to-a-lower-file", [("bin/tool", "file", {"data": b"tool", "mode": 0o4755})],
     [("bin/tool2", "link", {"target": "bin/tool"})],
     ("confined", lambda m: os.path.samefile(f"{m}/bin/tool", f"{m}/bin/tool2")
      and stat.S_IMODE(os.stat(f"{m}/bin/tool2").st_mode) == 0o4755)),
    ("hardlink-to-a-lower-symlink", [("l", "sym", {"target": "x"})],
     [("h", "link", {"target": "l"})], ("confined", lambda m: os.readlink(f"{m}/h") == "x")),
    ("hardlink-through-a-lower-symlinked-dir",
     [("real/x", "file", {"data": b"x"}), ("d", "sym", {"target": "real"})],
     [("h", "link", {"target": "d/x"})],
     ("confined", lambda m: os.path.samefile(f"{m}/h", f"{m}/real/x"))),
    # an upper entry shadowing a lower symlink or dir changes how later names resolve
    ("lower-symlink-then-an-upper-dir-of-that-name",
     [("etc", "sym", {"target": "/"})],
     [("etc/passwd", "file"), ("etc", "dir"), ("etc/group", "file")],
     ("confined", lambda m: os.path.isfile(f"{m}/etc/group") and os.path.isfile(f"{m}/passwd"))),
    ("lower-dir-then-an-upper-file-of-that-name",
     [("d/x", "file", {"data": b"x"})],
     [("d", "file"), ("h", "link", {"target": "d/x"})],
     ("error", "entry 'h': parent 'd' is not a directory")),
    ("hardlink-to-a-whited-out-lower-file", [(".wh.x", "file")],
     [("h", "link", {"target": "x"})], ("error", "hardlink target 'x' is not in the root")),
]


def _apply_entries(entries, outside, mounts):
    blob = _blob(entries, outside)
    d = desc(blob)
    apply(d, mounts, reader=io.BytesIO(blob), devices=False, warnings=[])
    return d


def _overlay(upper, work, lowers=()):
    opts = [f"upperdir={upper}", f"workdir={work}"]
    if lowers:
        opts.insert(0, "lowerdir=" + ":".join(map(str, lowers)))
    return [Mount("overlay", "overlay", tuple(opts))]


@pytest.mark.parametrize("case_id, lower, upper, expected", LOWER_CASES,
                         ids=[c[0] for c in LOWER_CASES])
def test_hostile_layer_over_a_lower(tmp_path, as_root, case_id, lower, upper, expected):
    from cargohold.mount import temp_mount

    sandbox = tmp_path / "sandbox"
    root, outside, low, ref = (sandbox / n for n in ("root", "outside", "lower", "ref"))
    work0, work = sandbox / "w0", sandbox / "w"
    for p in (root, outside / "sub", low, ref, work0, work):
        p.mkdir(parents=True)
    (outside / "secret").write_text("keep me")
    (outside / "sub" / "file").write_text("keep me too")
    os.chmod(outside / "sub", 0o750)
    os.setxattr(outside / "sub", "user.secret", b"host metadata")
    _o[0] = str(outside)
    _apply_entries(lower, str(outside), _overlay(low, work0))
    _apply_entries(lower, str(outside), [Mount("bind", str(ref), ("rbind",))])
    before = (_world(sandbox), snapshot(low))
    kind, check = expected
    if kind == "error":
        import re

        for target in (_overlay(root, work, [low]), [Mount("bind", str(ref), ("rbind",))]):
            with pytest.raises(LayerError) as ei:
                _apply_entries(upper, str(outside), target)
            assert re.search(check, str(ei.value)), str(ei.value)
    else:
        _apply_entries(upper, str(outside), _overlay(root, work, [low]))
        _apply_entries(upper, str(outside), [Mount("bind", str(ref), ("rbind",))])
        merged_of = [Mount("overlay", "overlay", (f"lowerdir={root}:{low}",))]
        with temp_mount(merged_of, readonly=True) as merged:
            got = snapshot(merged, dir_mtimes=False)
            assert check(merged), f"{case_id}: not confined as expected"
        want = snapshot(ref, dir_mtimes=False)
        assert got == want, "\n".join(diff_snapshots(got, want))
    assert (_world(sandbox), snapshot(low)) == before, f"{case_id}: outside or lower changed"
    assert (outside / "secret").read_text() == "keep me"
    assert not os.path.exists("/etc/cargohold-pwned")
