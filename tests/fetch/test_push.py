"""Push to a real registry: uploads (one PUT and PATCH chunks), cross-repository mounts,
indexes after their children; skopeo and containerd's own ctr read what we pushed.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.fetch.registry import (
    DockerRegistry,
    make_layout,
    need_registry,
    push_layout,
    push_two_platform_index,
)

pytestmark = [pytest.mark.peer, pytest.mark.slow]


@pytest.fixture(scope="module")
def regs(tmp_path_factory):
    need_registry()
    base = tmp_path_factory.mktemp("push")
    src = DockerRegistry(str(base / "src")).start()
    dst = DockerRegistry(str(base / "dst")).start()
    try:
        lay = str(base / "single")
        single = make_layout(lay, [{"etc/one": b"1" * 1000, "big": os.urandom(600_000)},
                                   {"etc/two": b"2"}])
        push_layout(lay, "1", f"{src.host}/team/app:1")
        multi = push_two_platform_index(str(base / "multi"), "2", f"{src.host}/team/multi:2")
        yield {"src": src, "dst": dst, "single": single, "multi": multi}
    finally:
        src.stop()
        dst.stop()


def inspect(ref: str, raw: bool = False) -> dict:
    argv = ["skopeo", "inspect", "--tls-verify=false", *(["--raw"] if raw else []),
            f"docker://{ref}"]
    p = subprocess.run(argv, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def test_push_uploads_then_mounts_within_the_registry(hold, regs):
    src, dst = regs["src"], regs["dst"]
    hold("images", "pull", f"{src.host}/team/app:1")
    # To another registry: everything is uploaded, in PATCH chunks for the big layer.
    res = json.loads(hold("images", "push", "--chunk-size", "256KiB", "--format", "json",
                          f"{dst.host}/copy/app:1", f"{src.host}/team/app:1").stdout)
    assert res["uploaded"] == 3 and res["mounted"] == 0 and res["manifests"] == 1
    doc = inspect(f"{dst.host}/copy/app:1")
    assert doc["Digest"] == regs["single"]["manifest"] and len(doc["Layers"]) == 2
    # Again: the registry has every blob.
    res = json.loads(hold("images", "push", "--format", "json", f"{dst.host}/copy/app:1",
                          f"{src.host}/team/app:1").stdout)
    assert res["existing"] == 3 and res["uploaded"] == 0
    # Within the source registry, to a new repository: mounted from team/app (the pull's
    # distribution.source label), nothing uploaded.
    res = json.loads(hold("images", "push", "--format", "json", f"{src.host}/team/copy:1",
                          f"{src.host}/team/app:1").stdout)
    assert res["mounted"] == 3 and res["uploaded"] == 0, res
    assert inspect(f"{src.host}/team/copy:1")["Digest"] == regs["single"]["manifest"]
    labels = json.loads(hold("content", "ls", "--format", "json").stdout)
    layer = next(i for i in labels if i["digest"] == regs["single"]["layers"][0])
    assert layer["labels"][f"containerd.io/distribution.source.{src.host}"] == \
        "team/app,team/copy"
    assert layer["labels"][f"containerd.io/distribution.source.{dst.host}"] == "copy/app"


def test_push_an_index_and_a_platform_of_it(hold, regs):
    src, dst = regs["src"], regs["dst"]
    ref = f"{src.host}/team/multi:2"
    hold("images", "pull", ref)
    p = hold("images", "push", f"{dst.host}/multi/all:2", ref, check=False)
    assert p.returncode == 1 and b"--platform" in p.stderr  # the other platform is absent
    hold("images", "pull", "--all-platforms", ref)
    res = json.loads(hold("images", "push", "--format", "json", f"{dst.host}/multi/all:2",
                          ref).stdout)
    assert res["manifests"] == 3 and res["target"]["digest"] == regs["multi"]["index"]
    raw = inspect(f"{dst.host}/multi/all:2", raw=True)
    assert [m["digest"] for m in raw["manifests"]] == regs["multi"]["manifests"]
    host = os.uname().machine.replace("x86_64", "amd64").replace("aarch64", "arm64")
    res = json.loads(hold("images", "push", "--platform", f"linux/{host}", "--format", "json",
                          f"{dst.host}/multi/one:2", ref).stdout)
    assert res["target"]["digest"] == regs["multi"]["manifests"][0]
    assert inspect(f"{dst.host}/multi/one:2")["Digest"] == regs["multi"]["manifests"][0]


def test_containerd_pulls_what_we_pushed(hold, regs):
    from tests.peers import containerd_daemon

    src, dst = regs["src"], regs["dst"]
    hold("images", "pull", f"{src.host}/team/app:1")
    hold("images", "push", f"{dst.host}/forctr/app:1", f"{src.host}/team/app:1")
    with containerd_daemon() as ctd:
        ctd.ctr("images", "pull", "--plain-http", f"{dst.host}/forctr/app:1")
        out = ctd.ctr("images", "ls", "-q").stdout.decode().split()
        assert f"{dst.host}/forctr/app:1" in out
        ctd.ctr("images", "check")
        info = ctd.ctr("images", "ls").stdout.decode()
        assert regs["single"]["manifest"] in info
