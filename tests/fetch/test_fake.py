"""Pull against an in-process fake registry: errors, retries, auth, mirrors, ranges."""

from __future__ import annotations

import os

import pytest

from cargohold.errors import IntegrityError, NotFound
from cargohold.fetch.api import Forbidden, RegistryNotFound, Unauthorized, Unreachable
from cargohold.fetch.credentials import Credentials, Secret
from cargohold.fetch.pull import Puller, PullOptions
from cargohold.images import platforms
from tests.fetch.conftest import OCI_INDEX, OCI_MANIFEST, fake_image, registry
from tests.fetch.fake import FakeRegistry
from tests.fetch.registry import free_port

REF = "fake.test/team/app:1"


def pull(client, fake, ref=REF, opts=None, **kw):
    with registry(fake, **kw) as reg:
        return Puller(client, reg).pull(ref, opts or PullOptions())


def blob_gets(fake, digest):
    return [(m, u, h) for m, u, h in fake.log if m == "GET" and digest in u]


def test_pull_unpacks_labels_and_records(client, fake):
    img = fake_image(fake, "team/app", "1", [{"etc/a": b"a" * 5000}, {"etc/b": b"b"}])
    res = pull(client, fake)
    assert res.target.digest == img["digest"] and res.fetched == 2 and res.image == "created"
    assert res.unpacked[img["digest"]]
    with client.db.view() as tx:
        from cargohold.metadata import images as records

        rec = records.get(tx, client.namespace, REF)
    assert rec.target.digest == img["digest"] and rec.target.media_type == OCI_MANIFEST
    for d in [img["digest"], img["config"]["digest"], *[x["digest"] for x in img["layers"]]]:
        labels = client.content.info(d).labels
        assert labels["containerd.io/distribution.source.fake.test"] == "team/app"
    man = client.content.info(img["digest"]).labels
    assert man["containerd.io/gc.ref.content.config"] == img["config"]["digest"]
    assert man["containerd.io/gc.ref.content.l.1"] == img["layers"][1]["digest"]
    layer = client.content.info(img["layers"][0]["digest"]).labels
    assert layer["containerd.io/uncompressed"] == img["diff_ids"][0]
    client.snapshotter().stat(res.unpacked[img["digest"]])
    again = pull(client, fake)
    assert again.fetched == 0 and again.existing == 2 and again.image == "unchanged"


def test_a_second_repository_appends_to_the_source_label(client, fake):
    img = fake_image(fake, "team/app", "1", [{"x": b"x"}])
    fake.manifests[("other/app", "2")] = fake.manifests[("team/app", "1")]
    pull(client, fake)
    pull(client, fake, "fake.test/other/app:2")
    labels = client.content.info(img["layers"][0]["digest"]).labels
    assert labels["containerd.io/distribution.source.fake.test"] == "other/app,team/app"


def test_a_blob_with_the_wrong_content_fails_and_is_not_kept(client, fake):
    img = fake_image(fake, "team/app", "1", [{"x": b"x" * 100}])
    d = img["layers"][0]["digest"]
    good = fake.blobs[d]
    fake.blobs[d] = bytes(len(good))  # same size, other bytes
    with pytest.raises(IntegrityError) as ei:
        pull(client, fake)
    assert d in ei.value.message
    assert client.content.list_statuses() == []  # bad bytes are never resumed from
    with pytest.raises(NotFound):
        client.content.info(d)


def test_5xx_and_429_are_retried(client, fake):
    img = fake_image(fake, "team/app", "1", [{"x": b"x"}])
    d = img["layers"][0]["digest"]
    fake.queued.extend([("GET", d, 503, {}), ("GET", d, 429, {"Retry-After": "0"}),
                        ("HEAD", "manifests", 502, {})])
    res = pull(client, fake)
    assert res.fetched == 1 and not fake.queued


def test_retries_back_off_and_honour_retry_after(client, fake):
    fake_image(fake, "team/app", "1", [{"x": b"x"}])
    fake.queued.extend([("HEAD", "manifests", 503, {}), ("HEAD", "manifests", 502, {}),
                        ("HEAD", "manifests", 429, {"Retry-After": "7"})])
    slept = []
    with registry(fake) as reg:  # backoff 0.001 s
        reg.transport.sleep = slept.append
        Puller(client, reg).pull(REF)
    assert slept == [0.001, 0.002, 7.0]  # doubling; Retry-After when it is longer


def test_a_reset_before_any_answer_is_retried(client, fake):
    import requests

    fake_image(fake, "team/app", "1", [{"x": b"x"}])

    class Resetting(FakeRegistry):
        """Drops the first connection, as a registry behind a restarting proxy does."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.resets = inner, 0

        def send(self, req, **kw):  # noqa: ANN001, ANN003
            if self.resets == 0:
                self.resets += 1
                raise requests.ConnectionError(ConnectionResetError(104, "reset by peer"))
            return self.inner.send(req, **kw)

    r = Resetting(fake)
    res = pull(client, fake, mounts={"https://fake.test": r})
    assert r.resets == 1 and res.fetched == 1


def test_5xx_that_persists_names_the_endpoint(client, fake):
    fake_image(fake, "team/app", "1", [{"x": b"x"}])
    fake.queued.extend([("HEAD", "manifests", 500, {})] * 10)
    from cargohold.fetch.api import RegistryError

    with pytest.raises(RegistryError) as ei:
        pull(client, fake)
    assert "server https://fake.test/v2" in ei.value.message and "500" in ei.value.message


def test_a_dropped_connection_continues_with_range(client, fake):
    img = fake_image(fake, "team/app", "1", [{"big": os.urandom(300_000)}])
    d = img["layers"][0]["digest"]
    fake.drop[d] = 100_000
    res = pull(client, fake, opts=PullOptions(chunk_size=0))
    gets = blob_gets(fake, d)
    assert len(gets) == 2 and gets[1][2]["Range"] == "bytes=100000-"
    assert res.bytes == img["layers"][0]["size"]


def test_a_registry_that_ignores_range_still_completes(client, fake):
    img = fake_image(fake, "team/app", "1", [{"big": os.urandom(300_000)}])
    d = img["layers"][0]["digest"]
    fake.ranges = False
    fake.drop[d] = 100_000
    pull(client, fake, opts=PullOptions(chunk_size=0))
    assert client.content.info(d).size == img["layers"][0]["size"]


def test_large_layers_come_in_ranged_parts(client, fake):
    img = fake_image(fake, "team/app", "1", [{"big": os.urandom(3 << 20)}])
    d = img["layers"][0]["digest"]
    pull(client, fake, opts=PullOptions(chunk_size=512 << 10, max_concurrent_downloads=3))
    ranges = [h.get("Range") for _m, _u, h in blob_gets(fake, d)]
    size = img["layers"][0]["size"]
    assert len(ranges) == -(-size // (512 << 10))
    assert ranges[0] == f"bytes=0-{(512 << 10) - 1}"
    assert client.content.info(d).size == size


def test_ranged_parts_are_off_when_the_registry_ignores_range(client, fake):
    img = fake_image(fake, "team/app", "1", [{"big": os.urandom(3 << 20)}])
    d = img["layers"][0]["digest"]
    fake.ranges = False
    pull(client, fake, opts=PullOptions(chunk_size=512 << 10))
    assert len(blob_gets(fake, d)) == 1


def test_resolve_falls_back_to_get_without_a_digest_header(client, fake):
    img = fake_image(fake, "team/app", "1", [{"x": b"x"}])
    fake.head_digest = False
    assert pull(client, fake).target.digest == img["digest"]


def test_a_digest_reference_must_resolve_to_that_digest(client, fake):
    img = fake_image(fake, "team/app", "1", [{"x": b"x"}])
    other = fake_image(fake, "team/app", "2", [{"y": b"y"}])
    fake.manifests[("team/app", other["digest"])] = fake.manifests[("team/app", "1")]
    with pytest.raises(IntegrityError):
        pull(client, fake, f"fake.test/team/app@{other['digest']}")
    res = pull(client, fake, f"fake.test/team/app@{img['digest']}")
    assert res.target.digest == img["digest"]


def test_not_found_names_endpoint_and_hint(client, fake):
    with pytest.raises(RegistryNotFound) as ei:
        pull(client, fake, "fake.test/team/nothing:1")
    assert "server https://fake.test/v2" in ei.value.message
    assert ei.value.hint


def test_forbidden(client, fake):
    fake_image(fake, "team/app", "1", [{"x": b"x"}])
    fake.queued.append(("HEAD", "manifests", 403, {}))
    with pytest.raises(Forbidden) as ei:
        pull(client, fake)
    assert "403" in ei.value.message and "server https://fake.test/v2" in ei.value.message


def test_basic_auth(client, fake):
    fake_image(fake, "team/app", "1", [{"x": b"x"}])
    fake.auth = "basic"
    with pytest.raises(Unauthorized) as ei:
        pull(client, fake)
    assert "--user" in ei.value.hint
    with pytest.raises(Unauthorized) as ei:
        pull(client, fake, credentials=Credentials(Secret("alice", "wrong", source="--user")))
    assert "refused" in ei.value.message and "wrong" not in ei.value.message
    res = pull(client, fake, credentials=Credentials(Secret("alice", "secret")))
    assert res.fetched == 1


def test_bearer_tokens_are_cached_per_scope_and_renewed(client, fake):
    fake_image(fake, "team/app", "1", [{"x": b"x"}, {"y": b"y"}])
    fake.auth = "bearer"
    with registry(fake) as reg:
        Puller(client, reg).pull(REF)
        assert len(fake.token_log) == 1  # one token for every request of the pull
        assert fake.token_log[0]["scope"] == ["repository:team/app:pull"]
        assert fake.token_log[0]["service"] == "fake.test"
        fake.tokens.clear()  # the registry forgets them: the next request draws a 401
        Puller(client, reg).pull(REF)
        assert len(fake.token_log) == 2
        assert fake.log[-1][2]["Authorization"] == "Bearer tok-1"


def test_docker_config_auths_and_credential_helper(client, fake, tmp_path, monkeypatch):
    import base64
    import json

    fake_image(fake, "team/app", "1", [{"x": b"x"}])
    fake.auth = "basic"
    conf = tmp_path / "docker"
    conf.mkdir()
    (conf / "config.json").write_text(json.dumps(
        {"auths": {"fake.test": {"auth": base64.b64encode(b"alice:secret").decode()}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(conf))
    assert pull(client, fake).fetched == 1
    # A credential helper wins over auths, and is run as `docker-credential-<x> get`.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-fake"
    helper.write_text("#!/bin/sh\nread server\n[ \"$1\" = get ] && [ \"$server\" = fake.test ] "
                      "&& echo '{\"Username\":\"alice\",\"Secret\":\"secret\"}'\n")
    helper.chmod(0o755)
    (conf / "config.json").write_text(json.dumps(
        {"auths": {"fake.test": {"auth": base64.b64encode(b"alice:wrong").decode()}},
         "credHelpers": {"fake.test": "fake"}}))
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    assert pull(client, fake).target
    assert fake.log[-1][2]["Authorization"] == "Basic " + base64.b64encode(
        b"alice:secret").decode()


def test_docker_config_creds_store_and_identity_token(client, fake, tmp_path, monkeypatch):
    import json

    fake_image(fake, "team/app", "1", [{"x": b"x"}])
    fake.auth = "bearer"
    conf = tmp_path / "docker"
    conf.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-store"  # `docker login` with credsStore = "store"
    helper.write_text("#!/bin/sh\nread server\n[ \"$1\" = get ] && [ \"$server\" = fake.test ] "
                      "&& echo '{\"Username\":\"alice\",\"Secret\":\"secret\"}' && exit 0\n"
                      "echo 'credentials not found in native keychain'; exit 1\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_CONFIG", str(conf))
    (conf / "config.json").write_text(json.dumps({"credsStore": "store"}))
    pull(client, fake)
    assert fake.token_log[-1]["user"] == "alice"
    # A host the store has nothing for is asked anonymously (docker's behaviour).
    from cargohold.fetch.credentials import Credentials

    assert Credentials().get("elsewhere.test") is None
    # An identity token (docker login to an OAuth2 registry) is exchanged with a POST.
    (conf / "config.json").write_text(json.dumps(
        {"auths": {"fake.test": {"identitytoken": "refresh-me"}}}))
    with registry(fake) as reg:
        Puller(client, reg).pull(REF)
    tok = fake.token_log[-1]
    assert tok["method"] == "POST" and tok["refresh_token"] == "refresh-me"
    assert tok["scope"] == ["repository:team/app:pull"]
    # A helper named in the file but missing is an error that names it.
    (conf / "config.json").write_text(json.dumps({"credHelpers": {"fake.test": "gone"}}))
    from cargohold.errors import InvalidArgument

    with pytest.raises(InvalidArgument) as ei:
        pull(client, fake)
    assert "docker-credential-gone" in ei.value.message


def test_a_mirror_that_is_down_falls_back_and_mirrors_get_ns(client, fake, tmp_path):
    img = fake_image(fake, "team/app", "1", [{"x": b"x"}])
    mirror = FakeRegistry()
    mirror.blobs = fake.blobs  # the mirror has the blobs but no manifests
    hosts = tmp_path / "hosts" / "fake.test"
    hosts.mkdir(parents=True)
    dead = free_port()
    (hosts / "hosts.toml").write_text(
        f'server = "https://fake.test"\n'
        f'[host."http://127.0.0.1:{dead}"]\n  capabilities = ["pull", "resolve"]\n'
        f'[host."https://mirror.fake.test"]\n  capabilities = ["pull"]\n')
    res = pull(client, fake, hosts_dir=str(tmp_path / "hosts"),
               mounts={"https://mirror.fake.test": mirror})
    assert res.endpoint == "https://fake.test/v2"
    layer = img["layers"][0]["digest"]
    got = [u for m, u, _h in mirror.log if layer in u]
    assert got and all(u.endswith("?ns=fake.test") for u in got)
    assert not any(layer in u for m, u, _h in fake.log if m == "GET")


def test_every_endpoint_failing_lists_each_answer(client, fake, tmp_path):
    hosts = tmp_path / "hosts" / "fake.test"
    hosts.mkdir(parents=True)
    dead = free_port()
    (hosts / "hosts.toml").write_text(f'[host."http://127.0.0.1:{dead}"]\n')
    with pytest.raises(RegistryNotFound) as ei:
        pull(client, fake, "fake.test/team/none:1", hosts_dir=str(tmp_path / "hosts"))
    msg = ei.value.message
    assert f"mirror http://127.0.0.1:{dead}/v2: connection refused" in msg
    assert "server https://fake.test/v2" in msg


def test_unknown_host_is_clear_and_not_retried(client, fake, monkeypatch):
    import socket

    real = socket.getaddrinfo
    asked = []

    def getaddrinfo(host, *a, **kw):  # noqa: ANN002, ANN003 - DNS without the network
        if host == "registry.invalid":
            asked.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(Unreachable) as ei:
        pull(client, fake, "registry.invalid/team/app:1")
    assert ei.value.message == "server https://registry.invalid/v2: unknown host"
    assert "hosts explain" in ei.value.hint
    assert asked == ["registry.invalid"]  # no retries: the next endpoint, or the error


def test_hosts_toml_headers_and_dial_timeout_are_used(client, fake, tmp_path):
    fake_image(fake, "team/app", "1", [{"x": b"x"}])
    mirror = FakeRegistry()
    mirror.blobs = fake.blobs
    hosts = tmp_path / "hosts" / "fake.test"
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(
        'server = "https://fake.test"\ndial_timeout = "250ms"\n'
        '[header]\n  x-team = "blue"\n'
        '[host."https://mirror.fake.test"]\n  capabilities = ["pull"]\n'
        '  dial_timeout = "1500ms"\n'
        '  [host."https://mirror.fake.test".header]\n    x-mirror = ["a", "b"]\n')
    pull(client, fake, hosts_dir=str(tmp_path / "hosts"),
         mounts={"https://mirror.fake.test": mirror})
    assert fake.log and all(h.get("x-team") == "blue" for _m, _u, h in fake.log)
    assert {t[0] for t in fake.timeouts} == {0.25}  # (connect, read)
    assert mirror.log and all(h.get("x-mirror") == "a, b" and "x-team" not in h
                              for _m, _u, h in mirror.log)
    assert {t[0] for t in mirror.timeouts} == {1.5}


def test_refused_connection_is_clear(client, fake):
    port = free_port()
    with pytest.raises(Unreachable) as ei:
        pull(client, fake, f"127.0.0.1:{port}/team/app:1")
    assert f"server http://127.0.0.1:{port}/v2: connection refused" in ei.value.message
    assert "registry running" in ei.value.hint


def _index(fake, repo, tag, entries):
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    return fake.add_manifest(repo, tag, OCI_INDEX, doc)


def test_index_platform_selection(client, fake):
    host = platforms.default()
    other = "arm64" if host.architecture != "arm64" else "amd64"
    mine = fake_image(fake, "team/multi", "x", [{"m": b"mine"}], add=False)
    theirs = fake_image(fake, "team/multi", "y", [{"t": b"theirs"}], arch=other, add=False)
    att = fake_image(fake, "team/multi", "z", [{"a": b"att"}], add=False)
    idx, _n = _index(fake, "team/multi", "1", [
        {"mediaType": OCI_MANIFEST, "digest": mine["digest"], "size": mine["size"],
         "platform": {"os": "linux", "architecture": host.architecture}},
        {"mediaType": OCI_MANIFEST, "digest": theirs["digest"], "size": theirs["size"],
         "platform": {"os": "linux", "architecture": other}},
        {"mediaType": OCI_MANIFEST, "digest": att["digest"], "size": att["size"],
         "platform": {"os": "unknown", "architecture": "unknown"}}])
    ref = "fake.test/team/multi:1"
    res = pull(client, fake, ref)
    assert [d for _p, d in res.manifests] == [mine["digest"]]
    assert res.unpacked == {mine["digest"]: mine["diff_ids"][0]}
    with pytest.raises(NotFound):
        client.content.info(theirs["digest"])
    labels = client.content.info(idx).labels
    assert labels["containerd.io/gc.ref.content.m.0"] == mine["digest"]
    assert "containerd.io/gc.ref.content.m.1" not in labels
    res = pull(client, fake, ref, PullOptions(platforms=[platforms.parse(f"linux/{other}")],
                                              unpack=False))
    assert [d for _p, d in res.manifests] == [theirs["digest"]]
    with pytest.raises(NotFound) as ei:
        pull(client, fake, ref, PullOptions(platforms=[platforms.parse("linux/s390x")]))
    assert "s390x" in ei.value.message and "--platform" in ei.value.hint
    res = pull(client, fake, ref, PullOptions(all_platforms=True, unpack=False))
    assert {d for _p, d in res.manifests} == {mine["digest"], theirs["digest"]}


def test_another_namespace_shares_blobs_without_fetching(root, fake):
    from tests.peers import open_client

    img = fake_image(fake, "team/app", "1", [{"x": os.urandom(10_000)}])
    a, b = open_client(root, namespace="a"), open_client(root, namespace="b")
    try:
        pull(a, fake)
        n = len(fake.log)
        res = pull(b, fake)
        assert res.existing == 1 and res.bytes == 0
        assert not [u for m, u, _h in fake.log[n:] if m == "GET" and "/blobs/" in u]
        assert b.content.info(img["layers"][0]["digest"]).labels[
            "containerd.io/distribution.source.fake.test"] == "team/app"
    finally:
        a.close()
        b.close()


class _Recorder:
    """A Progress that records (event, key) in order, from any thread."""

    def __init__(self):
        import threading

        self.events = []
        self._mu = threading.Lock()

    def start(self, key, label, total=0):
        with self._mu:
            self.events.append(("start", key))

    def advance(self, key, n):
        with self._mu:
            self.events.append(("advance", key))

    def done(self, key, status="done"):
        with self._mu:
            self.events.append(("done", key))

    def note(self, text):
        pass


def test_layers_are_unpacked_while_they_download(client, fake):
    import io
    import time as _time

    img = fake_image(fake, "team/app", "1", [{"a.bin": os.urandom(2 << 20)}])
    d = img["layers"][0]["digest"]

    class Slow(io.BytesIO):
        def read(self, n=-1):
            _time.sleep(0.002)
            return super().read(min(64 << 10, n if n >= 0 else 64 << 10))

    orig = fake._blob

    def slow_blob(req, digest):
        r = orig(req, digest)
        if digest == d and req.method == "GET":
            from urllib3.response import HTTPResponse

            r.raw = HTTPResponse(body=Slow(fake.blobs[d]), headers=dict(r.headers),
                                 status=r.status_code, preload_content=False,
                                 decode_content=False)
        return r

    fake._blob = slow_blob
    rec = _Recorder()
    with registry(fake) as reg:
        Puller(client, reg, progress=rec).pull(REF, PullOptions(chunk_size=0))
    ev = rec.events
    download_done = ev.index(("done", d))
    unpack_progress = ev.index(("advance", f"unpack:{d}"))
    assert unpack_progress < download_done  # unpack read the layer before it was complete
    assert ev.index(("done", f"unpack:{d}")) > download_done  # ... and committed after


def test_progress_json_events(client, fake):
    import io
    import json

    from cargohold.cli.progress import open_progress

    fake_image(fake, "team/app", "1", [{"a": b"a" * 1000}])
    out = io.StringIO()
    with registry(fake) as reg:
        Puller(client, reg, progress=open_progress("json", out)).pull(REF)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    keys = {(e["event"], e["key"]) for e in events if "key" in e}
    assert ("start", "total") in keys and ("done", "total") in keys
    assert any(k.startswith("unpack:") for _e, k in keys)
