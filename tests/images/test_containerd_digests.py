"""The same archive gives the same digests in hold as in containerd 1.6 (``ctr images import``).

Each archive is imported into a private containerd (its own namespace per case) and into a
fresh hold root, both with ``--index-name`` so that the index each makes is compared too. For
every image ctr names, hold has the same name on the same target, and the manifest and index
bytes are identical (``content get`` on both sides). The one deliberate difference is a zstd
layer in a docker archive: containerd 1.6 types it gzip, hold ``...tar.zstd`` (see
``images.ingest.docker_entries``); the test pins that difference exactly.
"""

from __future__ import annotations

import json

import pytest
from tests.conftest import run_hold
from tests.images import dockerkit
from tests.peers import run

from cargohold.images.ingest import containerd_platform, go_json

pytestmark = pytest.mark.peer

ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def _noplat(c: dict) -> None:
    c.pop("os", None)
    c.pop("architecture", None)


def _aarch64(c: dict) -> None:
    c["architecture"] = "aarch64"
    c["variant"] = "v8"


def _arm(c: dict) -> None:
    c.update({"architecture": "ARM", "os": "Linux", "variant": "v6", "os.version": "1.2",
              "os.features": ["f1"]})


@pytest.fixture(scope="module")
def cases(archives, tmp_path_factory):
    w = str(tmp_path_factory.mktemp("docker-saves"))
    lay = archives["layout"]
    return {
        "skopeo docker-archive": archives["docker"],
        "familiar RepoTag": archives["docker_familiar"],
        "legacy <id>/layer.tar": archives["docker_legacy"],
        "no RepoTags ([])": archives["docker_nameless"],
        "RepoTags null (save by id)": dockerkit.null_tags_save(lay, f"{w}/null.tar"),
        "two images, three tags": dockerkit.multi_save(lay, f"{w}/multi.tar"),
        "gzip layers (ggcr)": dockerkit.ggcr_save(lay, f"{w}/ggcr.tar"),
        "zstd layer": dockerkit.ggcr_save(lay, f"{w}/zstd.tar", "example.com/zst:1",
                                          zstd_last=True),
        "config without platform": dockerkit.edited_save(lay, f"{w}/noplat.tar",
                                                         "example.com/noplat:1", _noplat),
        "aarch64 v8": dockerkit.edited_save(lay, f"{w}/aarch64.tar", "example.com/a64:1",
                                            _aarch64),
        "ARM v6 os.version": dockerkit.edited_save(lay, f"{w}/arm.tar", "example.com/arm:1",
                                                   _arm),
        "moby 25 (OCI + manifest.json)": dockerkit.moby25_save(lay, f"{w}/moby25.tar"),
    }


def _ctr(d, ns: str, *args: str) -> bytes:  # noqa: ANN001 - a tests.peers.Containerd
    return run("ctr", "--address", d.sock, "-n", ns, *args).stdout


def _ctr_images(d, ns: str) -> dict[str, tuple[str, str]]:  # noqa: ANN001
    lines = _ctr(d, ns, "images", "ls").decode().splitlines()[1:]
    return {ln.split()[0]: (ln.split()[1], ln.split()[2]) for ln in lines if ln.strip()}


@pytest.mark.parametrize("case", [
    "skopeo docker-archive", "familiar RepoTag", "legacy <id>/layer.tar", "no RepoTags ([])",
    "RepoTags null (save by id)", "two images, three tags", "gzip layers (ggcr)", "zstd layer",
    "config without platform", "aarch64 v8", "ARM v6 os.version",
    "moby 25 (OCI + manifest.json)"])
def test_same_digests_and_bytes_as_containerd(ctrd, cases, case, tmp_path):
    path = cases[case]
    ns = "d" + str(sorted(cases).index(case))
    _ctr(ctrd, ns, "images", "import", "--no-unpack", "--all-platforms", "--digests",
         "--index-name", "idx:1", path)
    theirs = _ctr_images(ctrd, ns)
    root = str(tmp_path / "root")
    args = ["images", "import", "--progress", "none", "--index-name", "idx:1", "--format",
            "json"]
    if case != "zstd layer":  # that one is unpacked: hold reads its own manifest
        args.append("--no-unpack")
    res = json.loads(run_hold(root, *args, path).stdout)
    ours = {i["name"]: (i["type"], i["digest"])
            for i in json.loads(run_hold(root, "images", "ls", "--format", "json").stdout)}

    # ctr's import-<date>@<digest> names (--digests) and hold's <none>@<digest> names differ
    # by design; every other name is the same image.
    named = {n: v for n, v in theirs.items() if not n.startswith("import-")}
    assert named, theirs
    if case == "zstd layer":
        _check_zstd(ctrd, ns, root, named, ours)
        assert list(res["entries"][0]["unpacked"]) == [ours["example.com/zst:1"][1]]
        return
    for name, (mtype, digest) in named.items():
        assert ours.get(name) == (mtype, digest), (name, theirs, ours)
        assert run_hold(root, "content", "get", digest).stdout == _ctr(
            ctrd, ns, "content", "get", digest)
    # Every target digest either side made (nameless ones included) is the other's too.
    assert {d for _t, d in theirs.values()} == {d for _t, d in ours.values()}


def _check_zstd(ctrd, ns: str, root: str, named: dict, ours: dict) -> None:  # noqa: ANN001
    """Identical but for the zstd layer's media type, in the manifest and so in the index."""
    t_man = _ctr(ctrd, ns, "content", "get", named["example.com/zst:1"][1])
    o_man = run_hold(root, "content", "get", ours["example.com/zst:1"][1]).stdout
    assert o_man.count(ZSTD.encode()) == 1
    assert o_man.replace(ZSTD.encode(), GZIP.encode()) == t_man
    t_idx = _ctr(ctrd, ns, "content", "get", named["idx:1"][1])
    o_idx = run_hold(root, "content", "get", ours["idx:1"][1]).stdout
    t_dig, o_dig = named["example.com/zst:1"][1], ours["example.com/zst:1"][1]
    assert o_idx.replace(o_dig.encode(), t_dig.encode()) == t_idx


def test_go_json_escapes_as_go_does():
    # Go 1.19 encoding/json (containerd 1.6's): HTML characters, U+2028/9 and control
    # characters as \u00XX, UTF-8 kept, map order as given, no spaces.
    assert go_json({"b": "<a&b>", "a": "\u2028\u2029\x01\x08\n\t\"\\", "c": "é€"}) == (
        '{"b":"\\u003ca\\u0026b\\u003e","a":"\\u2028\\u2029\\u0001\\u0008\\n\\t\\"\\\\",'
        '"c":"é€"}').encode()
    assert go_json({"n": None, "l": [1, True], "e": []}) == b'{"n":null,"l":[1,true],"e":[]}'
    assert go_json("\ud800") == '"\ufffd"'.encode()


@pytest.mark.parametrize("cfg, want", [
    ({"os": "linux", "architecture": "amd64"}, {"architecture": "amd64", "os": "linux"}),
    ({"os": "Linux", "architecture": "x86_64", "variant": "v3"},
     {"architecture": "amd64", "os": "linux"}),
    ({"os": "linux", "architecture": "arm", "variant": "v6"},
     {"architecture": "arm", "os": "linux", "variant": "v7"}),
    ({"os": "linux", "architecture": "armel"},
     {"architecture": "arm", "os": "linux", "variant": "v6"}),
    ({"os": "macos", "architecture": "i386", "os.version": "1"},
     {"architecture": "386", "os": "darwin"}),
    ({}, {"architecture": "", "os": "linux"}),
])
def test_containerd_platform_table(cfg, want):
    assert containerd_platform(cfg) == want
