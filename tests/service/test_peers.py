"""Real clients of `hold serve`'s registry: containerd 1.6 through a hosts.toml mirror,
skopeo, and 20 concurrent pulls with every byte verified."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading

import pytest
import requests

from tests.peers import containerd_daemon, need, need_root
from tests.service.servekit import Serve, hold, import_image

ACCEPT = ("application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json,"
          " application/vnd.docker.distribution.manifest.v2+json")


@pytest.mark.peer
def test_containerd_pulls_and_mounts_through_a_mirror(root, tmp_path):
    """The image exists only in the service's store; containerd's upstream is unreachable."""
    need_root()
    need("containerd", "ctr")
    import_image(root, str(tmp_path), "example.com/test/app:v1",
                 [{"etc/hello.txt": b"hello through the mirror\n"},
                  {"usr/share/data.bin": os.urandom(200000)}])
    hosts = str(tmp_path / "certs.d")
    with Serve(root) as s:
        hold(root, "airgap", "mirror-config", "--hosts-dir", hosts, "--plain-http", s.host)
        with containerd_daemon() as ctd:
            ctd.ctr("images", "pull", "--hosts-dir", hosts, "example.com/test/app:v1")
            target = str(tmp_path / "mnt")
            os.makedirs(target)
            ctd.ctr("images", "mount", "example.com/test/app:v1", target)
            try:
                with open(os.path.join(target, "etc", "hello.txt")) as f:
                    assert f.read() == "hello through the mirror\n"
                assert os.path.getsize(os.path.join(target, "usr/share/data.bin")) == 200000
            finally:
                ctd.ctr("images", "unmount", target)
        st = s.status()["apis"]["registry"]
        assert st["requests"].get("200", 0) >= 4 and st["bytes_served"] > 200000


@pytest.mark.peer
def test_skopeo_copies_from_it(root, tmp_path):
    need("skopeo")
    info = import_image(root, str(tmp_path), "example.com/test/app:v1",
                        [{"a": os.urandom(50000)}, {"b": b"b" * 1000}])
    out = str(tmp_path / "copy")
    with Serve(root) as s:
        p = subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                            f"docker://{s.host}/test/app:v1", f"oci:{out}:v1"],
                           capture_output=True, timeout=300)
        assert p.returncode == 0, p.stderr.decode()
    for d in info["layers"]:
        with open(os.path.join(out, "blobs", "sha256", d.split(":")[1]), "rb") as f:
            assert "sha256:" + hashlib.sha256(f.read()).hexdigest() == d


def pull(url: str, repo: str, tag: str) -> int:
    """A whole image over HTTP, every blob hashed against its digest; returns bytes read."""
    with requests.Session() as sess:
        r = sess.get(f"{url}/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT}, timeout=60)
        r.raise_for_status()
        man = r.json()
        total = len(r.content)
        for d in [man["config"], *man["layers"]]:
            h = hashlib.sha256()
            n = 0
            with sess.get(f"{url}/v2/{repo}/blobs/{d['digest']}", stream=True,
                          timeout=60) as b:
                b.raise_for_status()
                for chunk in b.iter_content(1 << 20):
                    h.update(chunk)
                    n += len(chunk)
            if "sha256:" + h.hexdigest() != d["digest"] or n != d["size"]:
                raise AssertionError(f"blob {d['digest']}: got {n} bytes hashing to "
                                     f"{h.hexdigest()}")
            total += n
    return total


def test_twenty_concurrent_pulls_verify_every_byte(root, tmp_path):
    layers = [{f"l{i}.bin": os.urandom(2 << 20)} for i in range(4)]
    import_image(root, str(tmp_path), "example.com/test/big:1", layers)
    with Serve(root) as s:
        results: list[int | BaseException] = []
        mu = threading.Lock()

        def one() -> None:
            try:
                n = pull(s.url, "test/big", "1")
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                n = exc
            with mu:
                results.append(n)

        threads = [threading.Thread(target=one) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors[:3]
        assert len(results) == 20 and len(set(results)) == 1
        st = s.status()["apis"]["registry"]
        assert st["bytes_served"] >= 20 * (8 << 20)
        assert set(st["requests"]) == {"200"}, json.dumps(st)
