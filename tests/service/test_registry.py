"""The registry of `hold serve` over a real store: reads, ?ns=, Range, safety, push and auth."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import select
import socket

import pytest
import requests

from tests.fetch.registry import htpasswd
from tests.service.servekit import Serve, import_image

ACCEPT = ("application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json,"
          " application/vnd.docker.distribution.manifest.v2+json")
LAYERS = [{"etc/hello.txt": b"hello from the store\n"}, {"data.bin": bytes(range(256)) * 800}]


@pytest.fixture
def served(root, tmp_path):
    info = import_image(root, str(tmp_path), "example.com/test/app:v1", LAYERS)
    with Serve(root) as s:
        yield s, info


def _get(s: Serve, path: str, **kw) -> requests.Response:
    kw.setdefault("headers", {"Accept": ACCEPT})
    return requests.get(s.url + path, timeout=30, **kw)


def test_manifests_blobs_tags_catalog_and_ns(served):
    s, info = served
    assert _get(s, "/v2/").status_code == 200
    r = _get(s, "/v2/test/app/manifests/v1")
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == info["manifest"]
    assert "sha256:" + hashlib.sha256(r.content).hexdigest() == info["manifest"]
    assert r.headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    man = r.json()
    # by digest, with the ns containerd's mirrors send, and HEAD
    r2 = _get(s, f"/v2/test/app/manifests/{info['manifest']}?ns=example.com")
    assert r2.content == r.content
    h = requests.head(s.url + "/v2/test/app/manifests/v1?ns=example.com", timeout=30,
                      headers={"Accept": ACCEPT})
    assert h.status_code == 200 and h.headers["Content-Length"] == str(len(r.content))
    assert h.content == b""
    # ns names another registry: not this image
    assert _get(s, "/v2/test/app/manifests/v1?ns=other.example").status_code == 404
    for layer in man["layers"] + [man["config"]]:
        b = _get(s, f"/v2/test/app/blobs/{layer['digest']}?ns=example.com")
        assert b.status_code == 200
        assert "sha256:" + hashlib.sha256(b.content).hexdigest() == layer["digest"]
        assert len(b.content) == layer["size"]
    big = man["layers"][1]
    full = _get(s, f"/v2/test/app/blobs/{big['digest']}").content
    for rng, want, code in (("bytes=10-19", full[10:20], 206), ("bytes=100-", full[100:], 206),
                            ("bytes=-7", full[-7:], 206), ("items=0-9", full, 200),
                            ("bytes=0-1,5-6", full, 200)):
        b = _get(s, f"/v2/test/app/blobs/{big['digest']}", headers={"Range": rng})
        assert (b.status_code, b.content) == (code, want), rng
    b = _get(s, f"/v2/test/app/blobs/{big['digest']}", headers={"Range": f"bytes={len(full)}-"})
    assert b.status_code == 416 and b.headers["Content-Range"] == f"bytes */{len(full)}"
    hb = requests.head(s.url + f"/v2/test/app/blobs/{big['digest']}", timeout=30)
    assert hb.status_code == 200 and hb.headers["Content-Length"] == str(big["size"])
    assert _get(s, "/v2/test/app/tags/list").json() == {"name": "test/app", "tags": ["v1"]}
    assert _get(s, "/v2/_catalog").json() == {"repositories": ["test/app"]}
    # a blob of the store that no image of this repository reaches is not served under it
    other = _get(s, f"/v2/test/other/blobs/{big['digest']}")
    assert other.status_code == 404 and other.json()["errors"][0]["code"] in (
        "BLOB_UNKNOWN", "NAME_UNKNOWN")
    st = s.status()["apis"]["registry"]
    assert st["requests"]["200"] >= 8 and st["bytes_served"] >= len(full)
    metrics = _get(s, "/metrics").text
    assert 'cargohold_registry_requests_total{code="200"}' in metrics
    assert "cargohold_registry_bytes_served_total" in metrics
    assert "cargohold_gc_runs_total" in metrics and "cargohold_gc_pause_seconds_total" in metrics
    assert "cargohold_gc_bytes_freed_total" in metrics
    # the text exposition format: HELP and TYPE for each metric, then its samples
    typed = set()
    for line in metrics.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:]
            assert kind in ("counter", "gauge")
            typed.add(name)
        elif not line.startswith("# HELP "):
            sample = r'cargohold_[a-z_]+(\{[a-z]+="[^"]*"\})? -?[0-9.e+-]+'
            assert re.fullmatch(sample, line), line
            assert re.match(r"[a-z_]+", line).group() in typed, line


def test_ambiguous_path_names_the_candidates(root, tmp_path):
    import_image(root, str(tmp_path), "a.example/team/app:1", [{"a": b"a"}])
    import_image(root, str(tmp_path), "b.example/team/app:1", [{"b": b"b"}])
    with Serve(root) as s:
        r = _get(s, "/v2/team/app/manifests/1")
        assert r.status_code == 404
        msg = r.json()["errors"][0]["message"]
        assert "a.example/team/app:1" in msg and "b.example/team/app:1" in msg and "ns" in msg
        assert _get(s, "/v2/team/app/manifests/1?ns=a.example").status_code == 200
        assert _get(s, "/v2/team/app/manifests/1?ns=b.example").status_code == 200


# Each must be refused before any path is built, and nothing outside the store comes back.
HOSTILE = [
    "/v2/../../../../etc/passwd",
    "/v2/test/app/blobs/../../../../etc/passwd",
    "/v2/test/app/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd",
    "/v2/test/app/blobs/sha256:" + "../" * 20 + "etc/passwd",
    "/v2/%2e%2e/%2e%2e/etc/passwd/manifests/latest",
    "/v2/test/../../app/manifests/v1",
    "/v2/Test/App/manifests/v1",
    "/v2/test/app/manifests/..%2f..%2fpasswd",
    "/v2/test/app/manifests/sha256:abc",
    "/v2/test/app/blobs/sha256:" + "g" * 64,
    "/v2/test/app/blobs/md5:" + "a" * 32,
    "/v2/test/app/manifests/v1?ns=../../etc",
    "/v2/test/app/manifests/v1?ns=a/b",
    "/v2//etc/passwd/tags/list",
    "/v2/test/app/blobs/uploads/../../../etc/passwd",
    "/etc/passwd",
    "/v2/test/app/blobs/sha256:" + "a" * 64 + "/../../../../etc/passwd",
]


def _raw(s: Serve, path: str, method: str = "GET") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as c:
        c.sendall(f"{method} {path} HTTP/1.1\r\nHost: {s.host}\r\nConnection: close\r\n\r\n"
                  .encode())
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("path", HOSTILE)
def test_traversal_and_bad_names_are_refused(served, path):
    s, _info = served
    code, body = _raw(s, path)
    assert code in (400, 404, 405), (code, body[:200])
    assert b"root:" not in body and b"/bin/" not in body
    assert json.loads(body)["errors"]


def test_read_only_by_default(served):
    s, _info = served
    r = requests.post(s.url + "/v2/test/app/blobs/uploads/", timeout=30)
    assert r.status_code == 405 and "registry_push" in r.json()["errors"][0]["message"]
    r = requests.put(s.url + "/v2/test/app/manifests/v2", data=b"{}", timeout=30)
    assert r.status_code == 405


def test_push_needs_credentials_and_limits(root, tmp_path):
    pw = htpasswd(str(tmp_path / "htpasswd"), "alice", "s3cret")
    cfg = f'[serve]\nregistry_push = true\nhtpasswd = "{pw}"\nmax_manifest_size = "1KiB"\n' \
          'max_upload_size = "1MiB"\n'
    with Serve(root, cfg) as s:
        # /v2/ asks for Basic, so clients that ping first (skopeo) send credentials
        r = requests.get(s.url + "/v2/", timeout=30)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        assert requests.post(s.url + "/v2/x/blobs/uploads/", timeout=30).status_code == 401
        bad = requests.post(s.url + "/v2/x/blobs/uploads/", auth=("alice", "wrong"), timeout=30)
        assert bad.status_code == 401
        auth = ("alice", "s3cret")
        assert requests.get(s.url + "/v2/", auth=auth, timeout=30).status_code == 200
        # a chunked upload: POST, PATCH, PATCH, PUT ?digest=
        data = b"layer bytes " * 1000
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        r = requests.post(s.url + "/v2/x/blobs/uploads/", auth=auth, timeout=30)
        assert r.status_code == 202, r.text
        loc = s.url + r.headers["Location"]
        r = requests.patch(loc, data=data[:5000], auth=auth, timeout=30,
                           headers={"Content-Range": "0-4999"})
        assert r.status_code == 202 and r.headers["Range"] == "0-4999"
        r = requests.patch(loc, data=data[100:200], auth=auth, timeout=30,
                           headers={"Content-Range": "100-199"})
        assert r.status_code == 416, "a range that does not continue the upload"
        r = requests.patch(loc, data=iter([data[5000:]]), auth=auth, timeout=30)  # chunked
        assert r.status_code == 202, r.text
        r = requests.put(loc + f"?digest={'sha256:' + '0' * 64}", auth=auth, timeout=30)
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "DIGEST_INVALID"
        r = requests.post(s.url + "/v2/x/blobs/uploads/", auth=auth, timeout=30)
        loc = s.url + r.headers["Location"]
        r = requests.put(loc + f"?digest={d}", data=data, auth=auth, timeout=30)
        assert r.status_code == 201 and r.headers["Docker-Content-Digest"] == d
        # too big an upload, too big a manifest, a manifest whose blobs are missing
        r = requests.post(s.url + "/v2/x/blobs/uploads/", auth=auth, timeout=30)
        loc = s.url + r.headers["Location"]
        r = requests.patch(loc, data=b"0" * (2 << 20), auth=auth, timeout=30)
        assert r.status_code == 413
        r = requests.put(s.url + "/v2/x/manifests/v1", data=b" " * 2048, auth=auth, timeout=30,
                         headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert r.status_code == 413
        man = json.dumps({"schemaVersion": 2,
                          "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                     "digest": "sha256:" + "1" * 64, "size": 2},
                          "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                      "digest": d, "size": len(data)}]}).encode()
        r = requests.put(s.url + "/v2/x/manifests/v1", data=man, auth=auth, timeout=30,
                         headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
        st = s.status()["apis"]["registry"]
        assert st["push"] is True and st["requests"]["401"] >= 3


def test_bad_basic_header_is_just_unauthenticated(root, tmp_path):
    pw = htpasswd(str(tmp_path / "htpasswd"), "alice", "s3cret")
    with Serve(root, f'[serve]\nregistry_push = true\nhtpasswd = "{pw}"\n') as s:
        for value in ("Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(), "Bearer x"):
            r = requests.post(s.url + "/v2/x/blobs/uploads/", headers={"Authorization": value},
                              timeout=30)
            assert r.status_code == 401


def _closed_by_server(c: socket.socket, dribble: bytes = b"", rounds: int = 150) -> bool:
    """Whether the server closes ``c`` while we send ``dribble`` every 0.2 s (bounded)."""
    for _ in range(rounds):
        try:
            if dribble:
                c.sendall(dribble)
            r, _, _ = select.select([c], [], [], 0.2)
            if r:
                while chunk := c.recv(1 << 20):
                    del chunk
                return True
        except OSError:
            return True
    return False


def test_slow_clients_are_dropped(root, tmp_path):
    """client_timeout: a slowloris client (headers a byte at a time), a stalled reader of a
    blob and an idle keep-alive connection are all closed; a client that keeps reading is not.
    """
    info = import_image(root, str(tmp_path), "example.com/slow/app:1",
                        [{"big": os.urandom(16 << 20)}])  # more than socket buffers hold
    big, size = info["layers"][0], info["sizes"][0]
    with Serve(root, '[serve]\nclient_timeout = "1s"\n') as s:
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as c:
            c.sendall(f"GET /v2/ HTTP/1.1\r\nHost: {s.host}\r\n".encode())
            assert _closed_by_server(c, b"X"), "a byte every 0.2 s does not keep it open"
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as c:
            c.sendall(f"GET /v2/ HTTP/1.1\r\nHost: {s.host}\r\n\r\n".encode())
            assert _closed_by_server(c), "idle after its answer"
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.settimeout(30)
        with c:
            c.connect(("127.0.0.1", s.port))
            c.sendall(f"GET /v2/slow/app/blobs/{big} HTTP/1.1\r\nHost: {s.host}\r\n\r\n"
                      .encode())
            s.wait_for(lambda st: st["apis"]["registry"]["connections"] == 0,
                       "the stalled reader to be dropped")
        assert len(pull_blob(s, "slow/app", big)) == size, "a steady reader gets it all"


def pull_blob(s: Serve, repo: str, digest: str) -> bytes:
    b = requests.get(f"{s.url}/v2/{repo}/blobs/{digest}", timeout=60)
    assert b.status_code == 200
    assert "sha256:" + hashlib.sha256(b.content).hexdigest() == digest
    return b.content
