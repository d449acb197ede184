"""Fuzzing real archives (``hold images import``) and real layers (the differ's apply).

The inputs are the real images of ``tests/images/imagekit.py`` (built with umoci and skopeo):
the OCI and docker archives, plain and gzip, and the three layers of image ``t``. Each case is
one seeded mutation (``tests/images/fuzzkit.py``: flipped bytes, truncations, duplicated,
dropped, spliced or swapped headers, hostile numeric fields, types and names, huge sizes,
bad PAX records, GNU long names, links out of the archive), run in a forked child with a time
limit (``tests/images/zygote.py``): a hang fails the case instead of stalling the run.

What every archive case must show (the import step runs the real ``hold`` entry point):

- no hang, no traceback, no "internal error" on stderr;
- exit 1 with a ``hold: archive …`` / ``image …`` / ``blob …`` message, or 0 when the
  mutation happened to be harmless (then the image is listed and ``fsck`` is clean);
- after a failure nothing is visible — ``images ls`` and ``leases ls`` are empty — and all
  that the import left behind is garbage: after ``hold gc``, ``content ls`` and
  ``snapshots ls`` are empty and ``fsck`` is clean;
- nothing outside the root changed: the case directory holds only the root, the input and
  an untouched canary directory, and ``/etc`` lists the same names.

Every layer case applies a mutated layer into a fresh directory (bind mode) or a fresh upper
over the real lower layers (overlay mode) and must end without error or with a cargohold
error of exit code 1 whose message names the layer; the lowers, the canary and ``/etc`` are
unchanged.

The roots live on a tmpfs (so several hundred cases take about half a minute) and failing
inputs are kept under the test's tmp_path, named by seed. Most archive cases import with
``--no-unpack`` (a layer that reaches unpack was verified by its digest or diffID, so only
the archive reader is under test; the layer cases fuzz the differ directly); every tenth
unpacks too, so the whole path stays covered.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import shutil

import isal.igzip as igzip
import pytest
from tests.images.fuzzkit import Zygote, mutate
from tests.images.imagekit import blob, manifest_of
from tests.peers import _unmount_under

# HOLD_FUZZ_ARCHIVES / HOLD_FUZZ_LAYERS run more (or fewer) seeds, e.g. for a soak
ARCHIVE_CASES = int(os.environ.get("HOLD_FUZZ_ARCHIVES", 400))
LAYER_CASES = int(os.environ.get("HOLD_FUZZ_LAYERS", 400))
TIMEOUT = 30  # seconds per case: a normal one takes well under one

pytestmark = [pytest.mark.slow, pytest.mark.peer]

_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A tmpfs for the cases: no fsync cost, so several hundred cases fit in a minute."""
    from cargohold.mount import mount, unmount
    from cargohold.types import Mount

    d = str(tmp_path_factory.mktemp("fuzz"))
    mount(Mount("tmpfs", "tmpfs", ("size=512m", "mode=0700")), d)
    try:
        yield d
    finally:
        _unmount_under(d)
        unmount(d, detach=True)


def _fingerprint(path: str) -> list[tuple]:
    """What changes when anything under ``path`` changes (ctime moves on every write)."""
    out = []
    for d, dirs, files in os.walk(path):
        dirs.sort()
        for n in sorted(dirs + files):
            p = os.path.join(d, n)
            st = os.lstat(p)
            out.append((os.path.relpath(p, path), st.st_mode, st.st_ino, st.st_size,
                        st.st_ctime_ns))
    return out


def _canary(case: str) -> list[tuple]:
    c = os.path.join(case, "canary")
    os.makedirs(os.path.join(c, "sub"))
    for name in ("passwd", "sub/secret"):
        with open(os.path.join(c, name), "w") as f:
            f.write("keep me\n")
    return _fingerprint(c)


def _cleanup(case: str) -> None:
    _unmount_under(case)
    shutil.rmtree(case, ignore_errors=True)


def _env(root: str) -> dict[str, str]:
    return {"HOLD_ROOT": root, "HOLD_STATE": os.path.join(root, "_state"),
            "HOLD_CONFIG": os.path.join(root, "_no_config.toml"), "HOLD_DEBUG": ""}


def _check_archive(res: dict) -> list[str]:
    if res.get("timed_out"):
        return [f"timed out after {res['seconds']:.1f}s (a hang)"]
    if "results" not in res:
        return [f"the case crashed: {res}"]
    imp, ls, leases, gc, content, snaps, fsck = res["results"]
    bad = []
    err = imp["stderr"]
    for word in ("Traceback", "internal error"):
        if word in err:
            bad.append(f"{word!r} in stderr: {err[-2000:]}")
    if imp["code"] not in (0, 1):
        bad.append(f"exit {imp['code']}: {err.strip()[-500:]}")
    if imp["code"] == 1 and not err.startswith("hold: "):
        bad.append(f"exit 1 without a message: {err[-500:]!r}")
    if leases["stdout"].strip():
        bad.append(f"a lease is left: {leases['stdout']!r}")
    if gc["code"] != 0:
        bad.append(f"gc failed: {gc['stderr'][-500:]}")
    report = json.loads(fsck["stdout"]) if fsck["stdout"].strip().startswith("{") else {}
    if not report.get("clean"):
        bad.append(f"fsck after gc is not clean: {fsck['stdout'][-1000:]}{fsck['stderr']}")
    if imp["code"] == 0:
        if not ls["stdout"].strip():
            bad.append("exit 0 but no image is listed")
    else:
        if ls["stdout"].strip():
            bad.append(f"a failed import left images: {ls['stdout']!r}")
        if content["stdout"].strip() or snaps["stdout"].strip():
            bad.append("a failed import left what gc does not collect: "
                       f"{content['stdout']!r} {snaps['stdout']!r}")
    return bad


def _archive_input(archives, rnd) -> tuple[bytes, str]:  # noqa: ANN001
    kind = rnd.choice(["oci", "oci", "docker", "docker", "oci_gzip", "docker_gzip"])
    if not kind.endswith("_gzip"):
        data, what = mutate(_read(archives[kind]), rnd)
        return data, f"{kind}: {what}"
    plain = _read(archives[kind[:-5]])
    if rnd.random() < 0.5:  # mutate the tar inside, then compress it
        data, what = mutate(plain, rnd)
        return igzip.compress(data, 1), f"{kind} (inside): {what}"
    gz = bytearray(_read(archives[kind]))
    if rnd.random() < 0.5:
        n = rnd.randrange(len(gz))
        return bytes(gz[:n]), f"{kind}: truncate compressed at {n}"
    for _ in range(rnd.randint(1, 4)):
        i = rnd.randrange(len(gz))
        gz[i] ^= 1 << rnd.randrange(8)
    return bytes(gz), f"{kind}: flip compressed bytes"


_cache: dict[str, bytes] = {}


def _read(path: str) -> bytes:
    if path not in _cache:
        with open(path, "rb") as f:
            _cache[path] = f.read()
    return _cache[path]


def test_fuzz_archive_import(archives, zygote, scratch, tmp_path):
    etc = sorted(os.listdir("/etc"))
    failures: list[str] = []
    outcome: collections.Counter[str] = collections.Counter()
    for seed in range(ARCHIVE_CASES):
        rnd = random.Random(seed)
        data, what = _archive_input(archives, rnd)
        case = os.path.join(scratch, f"a{seed}")
        root = os.path.join(case, "root")
        os.makedirs(root)
        canary = _canary(case)
        path = os.path.join(case, "in.tar")
        with open(path, "wb") as f:
            f.write(data)
        unpack = seed % 10 == 0
        imp = ["images", "import", "--progress", "none", "--base-name", "fuzz"]
        steps = [{"argv": imp + ([] if unpack else ["--no-unpack"]) + [path]},
                 {"argv": ["images", "ls", "-q"]}, {"argv": ["leases", "ls", "-q"]},
                 {"argv": ["gc"]}, {"argv": ["content", "ls", "-q"]},
                 {"argv": ["snapshots", "ls", "-q"]}, {"argv": ["fsck", "--format", "json"]}]
        res = zygote.run(steps, _env(root), TIMEOUT)
        bad = _check_archive(res)
        if sorted(os.listdir(case)) != ["canary", "in.tar", "root"]:
            bad.append(f"the case dir changed: {sorted(os.listdir(case))}")
        if _fingerprint(os.path.join(case, "canary")) != canary:
            bad.append("the canary changed")
        if sorted(os.listdir("/etc")) != etc:
            bad.append("/etc changed")
        code = res.get("results", [{}])[0].get("code")
        outcome[f"exit {code}" if code is not None else "hang"] += 1
        if bad:
            keep = str(tmp_path / f"failed-a{seed}.tar")
            shutil.copy(path, keep)
            failures.append(f"seed {seed} ({what}) [{keep}]: " + "; ".join(bad))
        _cleanup(case)
    print(f"archive fuzz: {ARCHIVE_CASES} cases: {dict(outcome)}")
    assert not failures, f"{len(failures)} of {ARCHIVE_CASES} cases failed:\n" + "\n".join(
        failures[:20])
    assert outcome["exit 1"] >= ARCHIVE_CASES // 2, outcome  # the mutations do bite


@pytest.fixture(scope="module")
def layers(archives, scratch):
    """The three layers of image ``t`` as plain tars, and their lowers applied in overlay
    form (``lower1`` = layer 1, ``lower2`` = layer 2 over it)."""
    from cargohold.differ.apply import apply
    from cargohold.types import Descriptor, Mount

    lay = archives["layout"]
    man = json.loads(blob(lay, manifest_of(lay, "t")["digest"]))
    plain = [igzip.decompress(blob(lay, d["digest"])) for d in man["layers"]]
    w = os.path.join(scratch, "lowers")
    lowers: list[str] = []
    for i, data in enumerate(plain[:2]):
        up, work = os.path.join(w, f"lower{i + 1}"), os.path.join(w, f"work{i + 1}")
        os.makedirs(up)
        os.makedirs(work)
        opts = [f"upperdir={up}", f"workdir={work}"]
        if lowers:
            opts.insert(0, "lowerdir=" + ":".join(lowers))
        src = os.path.join(w, f"l{i}.tar")
        with open(src, "wb") as f:
            f.write(data)
        with open(src, "rb") as r:
            apply(Descriptor(_OCI_LAYER_TAR, "sha256:" + hashlib.sha256(data).hexdigest(), 0),
                  [Mount("overlay", "overlay", tuple(opts))], reader=r)
        lowers.insert(0, up)
    return {"plain": plain, "lowers": lowers}


def _check_layer(res: dict, digest: str) -> list[str]:
    if res.get("timed_out"):
        return [f"timed out after {res['seconds']:.1f}s (a hang)"]
    if "results" not in res:
        return [f"the case crashed: {res}"]
    out = res["results"][0]
    if out["ok"]:
        return []
    if not out["cargohold"]:
        return [f"{out['class']}: {out['message'][-2000:]}"]
    bad = []
    if out["exit_code"] != 1:
        bad.append(f"{out['class']} exits {out['exit_code']}: {out['message']}")
    if not out["message"].startswith(f"layer {digest}"):
        bad.append(f"the message does not name the layer: {out['message']}")
    return bad


def test_fuzz_layer_apply(layers, zygote, scratch, tmp_path):
    etc = sorted(os.listdir("/etc"))
    lowers_before = [_fingerprint(p) for p in layers["lowers"]]
    failures: list[str] = []
    outcome: collections.Counter[str] = collections.Counter()
    for seed in range(LAYER_CASES):
        rnd = random.Random(10_000 + seed)
        n = rnd.randrange(3)
        data, what = mutate(layers["plain"][n], rnd)
        gzip = rnd.random() < 0.25
        if gzip:
            data = igzip.compress(data, 1)
            if rnd.random() < 0.5:
                cut = rnd.randrange(len(data))
                data, what = data[:cut], f"{what}; gzip cut at {cut}"
        mode = rnd.choice(["bind", "overlay"])
        case = os.path.join(scratch, f"l{seed}")
        root, work = os.path.join(case, "root"), os.path.join(case, "work")
        os.makedirs(root)
        os.makedirs(work)
        canary = _canary(case)
        path = os.path.join(case, "layer")
        with open(path, "wb") as f:
            f.write(data)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        spec = {"blob": path, "digest": digest, "mode": mode, "root": root, "work": work,
                "media_type": _OCI_LAYER_TAR + ("+gzip" if gzip else ""),
                "lowers": layers["lowers"][2 - n:] if mode == "overlay" else []}
        res = zygote.run([{"apply": spec}], {}, TIMEOUT)
        bad = _check_layer(res, digest)
        if sorted(os.listdir(case)) != ["canary", "layer", "root", "work"]:
            bad.append(f"the case dir changed: {sorted(os.listdir(case))}")
        if _fingerprint(os.path.join(case, "canary")) != canary:
            bad.append("the canary changed")
        if sorted(os.listdir("/etc")) != etc:
            bad.append("/etc changed")
        if [_fingerprint(p) for p in layers["lowers"]] != lowers_before:
            bad.append("a lower layer changed")
        r = res.get("results", [{}])[0]
        outcome["ok" if r.get("ok") else r.get("class", "hang")] += 1
        if bad:
            keep = str(tmp_path / f"failed-l{seed}")
            shutil.copy(path, keep)
            failures.append(f"seed {10_000 + seed} layer {n + 1} {mode} ({what}) [{keep}]: "
                            + "; ".join(bad))
        _cleanup(case)
    print(f"layer fuzz: {LAYER_CASES} cases: {dict(outcome)}")
    assert not failures, f"{len(failures)} of {LAYER_CASES} cases failed:\n" + "\n".join(
        failures[:20])
    assert sum(v for k, v in outcome.items() if k != "ok") >= LAYER_CASES // 3, outcome
