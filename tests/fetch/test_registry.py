"""Pull from a real registry (Debian's docker-registry on 127.0.0.1): plain HTTP, TLS with a
CA from hosts.toml, htpasswd basic auth, the bearer-token flow, a mirror that is down.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.fetch.registry import (
    DockerRegistry,
    TokenServer,
    free_port,
    htpasswd,
    make_ca,
    make_layout,
    need_registry,
    push_layout,
)

pytestmark = [pytest.mark.peer, pytest.mark.slow]

FILES = [{"etc/app.conf": b"answer = 42\n", "usr/bin/tool": os.urandom(200_000)},
         {"etc/app.conf": b"answer = 43\n", "srv/data.bin": os.urandom(1 << 20)}]


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    need_registry()
    d = str(tmp_path_factory.mktemp("layout"))
    return {"dir": d, **make_layout(d, FILES)}


@pytest.fixture(scope="module")
def plain(tmp_path_factory, layout):
    reg = DockerRegistry(str(tmp_path_factory.mktemp("plain"))).start()
    try:
        push_layout(layout["dir"], "1", f"{reg.host}/team/app:1")
        yield reg
    finally:
        reg.stop()


def files_of(root: str, chain: str) -> dict[str, bytes]:
    from tests.images.imagekit import merged_tree
    from tests.peers import open_client

    c = open_client(root)
    try:
        tree = merged_tree(c, chain)
        sn = c.snapshotter()
        key = "read-files"
        mounts = sn.view(key, chain)
        try:
            from cargohold.mount import temp_mount

            with temp_mount(mounts, readonly=True) as path:
                return {p: open(os.path.join(path, p), "rb").read() for p in tree
                        if os.path.isfile(os.path.join(path, p))
                        and not os.path.islink(os.path.join(path, p))}
        finally:
            sn.remove(key)
    finally:
        c.close()


def test_pull_plain_http_unpacks_the_image(hold, root, plain, layout):
    ref = f"{plain.host}/team/app:1"
    p = hold("images", "pull", "--format", "json", ref)
    assert p.stderr == b""  # progress is quiet in a pipe
    res = json.loads(p.stdout)
    assert res["target"]["digest"] == layout["manifest"]
    assert res["endpoint"] == f"http://{plain.host}/v2" and res["fetched"] == 2
    chain = res["unpacked"][layout["manifest"]]
    got = files_of(root, chain)
    assert got["etc/app.conf"] == b"answer = 43\n"
    assert got["usr/bin/tool"] == FILES[0]["usr/bin/tool"]
    assert got["srv/data.bin"] == FILES[1]["srv/data.bin"]
    ls = hold("images", "ls", "-q").stdout.decode().split()
    assert ls == [ref]
    labels = json.loads(hold("content", "ls", "--format", "json").stdout)
    assert all(i["labels"][f"containerd.io/distribution.source.{plain.host}"] == "team/app"
               for i in labels)
    assert "clean" in hold("fsck").stdout.decode()


def test_content_fetch_does_not_unpack(hold, root, plain, layout):
    ref = f"{plain.host}/team/app:1"
    p = hold("content", "fetch", "--progress", "json", ref)
    out = p.stdout.decode()
    assert out.startswith(f"{ref}  {layout['manifest']}")
    events = [json.loads(line) for line in p.stderr.decode().splitlines()]
    done = {e["key"]: e for e in events if e["event"] == "done"}
    assert done["total"]["status"] == "done" and done["total"]["total"] == sum(layout["sizes"])
    assert {done[d]["status"] for d in layout["layers"]} == {"done"}
    assert hold("snapshots", "ls", "-q").stdout.decode().strip() == ""
    assert hold("images", "ls", "-q").stdout.decode().split() == [ref]
    check = json.loads(hold("images", "check", "--format", "json").stdout)
    assert check[0]["platforms"][0]["complete"]


def test_errors_from_a_real_registry(hold, plain):
    p = hold("images", "pull", f"{plain.host}/team/missing:1", check=False)
    err = p.stderr.decode()
    assert p.returncode == 1
    assert f"server http://{plain.host}/v2: manifest team/missing:1: not found" in err
    assert "hint:" in err
    port = free_port()
    p = hold("images", "pull", f"127.0.0.1:{port}/team/app:1", check=False)
    assert f"server http://127.0.0.1:{port}/v2: connection refused" in p.stderr.decode()


def test_tls_with_a_ca_from_hosts_toml(hold, tmp_path, layout):
    certs = make_ca(str(tmp_path / "pki"))
    reg = DockerRegistry(str(tmp_path / "reg"), tls=(certs["cert"], certs["key"])).start()
    try:
        cert_dir = tmp_path / "skopeo-certs"
        cert_dir.mkdir()
        (cert_dir / "ca.crt").write_bytes(open(certs["ca"], "rb").read())
        push_layout(layout["dir"], "1", f"{reg.host}/team/app:1", tls_verify=True,
                    cert_dir=str(cert_dir))
        ref = f"{reg.host}/team/app:1"
        # No hosts.toml: a loopback registry is asked over plain HTTP (as containerd 1.6);
        # the answer says to ask it over HTTPS, and where.
        p = hold("images", "pull", ref, check=False)
        err = p.stderr.decode()
        assert p.returncode == 1
        assert f"server http://{reg.host}/v2: manifest team/app:1: the endpoint speaks " \
               "HTTPS, not plain HTTP" in err
        assert f'server = "https://{reg.host}" in {reg.host}/hosts.toml' in err
        hosts = tmp_path / "hosts" / reg.host
        hosts.mkdir(parents=True)
        # skip_verify: pulled, and nothing on stderr (no urllib3 warning per request).
        (hosts / "hosts.toml").write_text(f'server = "https://{reg.host}"\n'
                                          "skip_verify = true\n")
        p = hold("images", "pull", "--hosts-dir", str(tmp_path / "hosts"), "--no-unpack",
                 "--format", "json", ref)
        assert json.loads(p.stdout)["target"]["digest"] == layout["manifest"]
        assert p.stderr == b""
        hold("images", "rm", ref)
        # Without the CA: a clear TLS error that says where to put it.
        (hosts / "hosts.toml").write_text(f'server = "https://{reg.host}"\n')
        p = hold("images", "pull", "--hosts-dir", str(tmp_path / "hosts"), ref, check=False)
        err = p.stderr.decode()
        assert p.returncode == 1
        assert f"server https://{reg.host}/v2: TLS handshake failed: certificate verify " \
               "failed" in err
        assert "ca = " in err and "hosts.toml" in err
        (hosts / "ca.pem").write_bytes(open(certs["ca"], "rb").read())
        (hosts / "hosts.toml").write_text(f'server = "https://{reg.host}"\nca = "ca.pem"\n')
        res = json.loads(hold("images", "pull", "--hosts-dir", str(tmp_path / "hosts"),
                              "--format", "json", ref).stdout)
        assert res["endpoint"] == f"https://{reg.host}/v2"
        assert res["target"]["digest"] == layout["manifest"]
    finally:
        reg.stop()


def test_htpasswd_basic_auth(hold, tmp_path, layout):
    pw = htpasswd(str(tmp_path / "htpasswd"), "alice", "s3cret")
    reg = DockerRegistry(str(tmp_path / "reg"), htpasswd=pw).start()
    try:
        push_layout(layout["dir"], "1", f"{reg.host}/team/app:1", creds="alice:s3cret")
        ref = f"{reg.host}/team/app:1"
        p = hold("images", "pull", ref, check=False)
        assert p.returncode == 1 and b"--user" in p.stderr
        p = hold("images", "pull", "--user", "alice:wrong", ref, check=False)
        assert p.returncode == 1 and b"refused" in p.stderr and b"wrong" not in p.stderr
        p = hold("images", "pull", "--user", "alice", ref, check=False)  # no terminal
        assert p.returncode == 2 and b"--user USER:PASSWORD" in p.stderr
        res = json.loads(hold("images", "pull", "--user", "alice:s3cret", "--format", "json",
                              ref).stdout)
        assert res["fetched"] == 2
        # On a terminal the missing password is asked for (and not echoed).
        import fcntl
        import pty
        import subprocess
        import sys
        import termios
        import time

        master, slave = pty.openpty()
        env = dict(os.environ, HOLD_ROOT=str(tmp_path / "r2"),
                   HOLD_STATE=str(tmp_path / "r2" / "_state"),
                   HOLD_CONFIG=str(tmp_path / "none.toml"),
                   PYTHONPATH=os.path.join(os.path.dirname(__file__), "..", "..", "src"))

        def own_terminal() -> None:  # the pty becomes the child's controlling terminal
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        p = subprocess.Popen([sys.executable, "-m", "cargohold", "images", "pull", "--user",
                              "alice", "--progress", "none", ref], stdin=slave,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             preexec_fn=own_terminal)
        os.close(slave)
        import select

        seen = b""
        deadline = time.monotonic() + 60
        while b"Password for alice" not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                seen += os.read(master, 1024)
        time.sleep(0.3)  # getpass flushes pending input when it switches echo off
        os.write(master, b"s3cret\n")
        out, err = p.communicate(timeout=120)
        while select.select([master], [], [], 0.1)[0]:
            try:
                seen += os.read(master, 1024)
            except OSError:
                break
        os.close(master)
        assert p.returncode == 0, err.decode()
        assert b"Password for alice" in seen and b"s3cret" not in seen + err + out
    finally:
        reg.stop()


def test_bearer_token_flow(client, tmp_path, layout):
    from cargohold.fetch.pull import Puller
    from cargohold.fetch.registry import Registry

    tokens = TokenServer(str(tmp_path / "tok"), users={"bob": "pw"})
    reg = DockerRegistry(str(tmp_path / "reg"), token=tokens.registry_config()).start()
    try:
        push_layout(layout["dir"], "1", f"{reg.host}/team/app:1", creds="bob:pw")
        tokens.requests.clear()
        with Registry() as r:
            res = Puller(client, r).pull(f"{reg.host}/team/app:1")
            assert res.fetched == 2
            # Anonymous, one token for the whole pull (resolve, manifest, config, layers).
            assert tokens.requests == [("", ["repository:team/app:pull"])]
            assert r.transport.authorizer.token_requests == 1
        # Push needs pull,push (and pull on the repository it mounts from): anonymous is
        # refused, bob may.
        from cargohold.fetch.api import Forbidden, Unauthorized
        from cargohold.fetch.credentials import Credentials, Secret
        from cargohold.fetch.push import Pusher

        with Registry() as r, pytest.raises((Unauthorized, Forbidden)):
            Pusher(client, r).push(f"{reg.host}/team/app:1", f"{reg.host}/team/copy:1")
        # A wrong password: the token server refuses it, and the hint names the host.
        with Registry(credentials=Credentials(Secret("bob", "nope", source="--user"))) as r, \
                pytest.raises(Unauthorized) as ei:
            Puller(client, r).pull(f"{reg.host}/team/app:1")
        assert f"token server {tokens.realm} (for server http://{reg.host}/v2): 401: user " \
               "'bob' (--user) refused" in ei.value.message and "nope" not in ei.value.message
        assert f"credentials for {reg.host} with --user" in ei.value.hint
        tokens.requests.clear()
        with Registry(credentials=Credentials(Secret("bob", "pw"))) as r:
            res = Pusher(client, r).push(f"{reg.host}/team/app:1", f"{reg.host}/team/copy:1")
        assert res.mounted == 3 and res.uploaded == 0
        assert tokens.requests[0] == ("bob", ["repository:team/app:pull",
                                              "repository:team/copy:pull,push"])
    finally:
        reg.stop()
        tokens.close()


def test_a_mirror_that_is_down_falls_back_to_the_next(hold, tmp_path, plain, layout):
    dead = free_port()
    hosts = tmp_path / "hosts" / plain.host
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(
        f'[host."http://127.0.0.1:{dead}"]\n  capabilities = ["pull", "resolve"]\n'
        f'  dial_timeout = "500ms"\n'
        f'[host."http://{plain.host}"]\n  capabilities = ["pull", "resolve"]\n')
    res = json.loads(hold("images", "pull", "--hosts-dir", str(tmp_path / "hosts"),
                          "--format", "json", f"{plain.host}/team/app:1").stdout)
    assert res["endpoint"] == f"http://{plain.host}/v2"
    assert res["target"]["digest"] == layout["manifest"]


def test_client_certificate_from_hosts_toml(hold, tmp_path, layout):
    certs = make_ca(str(tmp_path / "pki"))
    reg = DockerRegistry(str(tmp_path / "reg"), tls=(certs["cert"], certs["key"]),
                         client_ca=certs["ca"]).start()
    try:
        cert_dir = tmp_path / "skopeo-certs"
        cert_dir.mkdir()
        for src, name in (("ca", "ca.crt"), ("client_cert", "client.cert"),
                          ("client_key", "client.key")):
            (cert_dir / name).write_bytes(open(certs[src], "rb").read())
        push_layout(layout["dir"], "1", f"{reg.host}/team/app:1", tls_verify=True,
                    cert_dir=str(cert_dir))
        ref = f"{reg.host}/team/app:1"
        hosts = tmp_path / "hosts" / reg.host
        hosts.mkdir(parents=True)
        (hosts / "ca.pem").write_bytes(open(certs["ca"], "rb").read())
        (hosts / "hosts.toml").write_text(f'server = "https://{reg.host}"\nca = "ca.pem"\n')
        p = hold("images", "pull", "--hosts-dir", str(tmp_path / "hosts"), ref, check=False)
        assert p.returncode == 1
        assert f"server https://{reg.host}/v2: TLS handshake failed: the registry wants a " \
               "client certificate it trusts" in p.stderr.decode()
        assert b'client = [["CERT", "KEY"]]' in p.stderr
        (hosts / "hosts.toml").write_text(
            f'server = "https://{reg.host}"\nca = "ca.pem"\n'
            f'client = [["{certs["client_cert"]}", "{certs["client_key"]}"]]\n')
        res = json.loads(hold("images", "pull", "--hosts-dir", str(tmp_path / "hosts"),
                              "--format", "json", ref).stdout)
        assert res["endpoint"] == f"https://{reg.host}/v2" and res["fetched"] == 2
    finally:
        reg.stop()


def test_token_realm_over_https_uses_the_hosts_toml_ca(hold, tmp_path, layout):
    """A private registry's token realm sits behind the same private CA: the token request
    goes out with the endpoint's TLS settings, not only the system's CAs.
    """
    certs = make_ca(str(tmp_path / "pki"))
    tokens = TokenServer(str(tmp_path / "tok"), users={"bob": "pw"},
                         tls=(certs["cert"], certs["key"]))
    reg = DockerRegistry(str(tmp_path / "reg"), tls=(certs["cert"], certs["key"]),
                         token=tokens.registry_config()).start()
    try:
        push_layout(layout["dir"], "1", f"{reg.host}/team/app:1", creds="bob:pw")
        assert tokens.realm.startswith("https://")
        tokens.requests.clear()
        hosts = tmp_path / "hosts" / reg.host
        hosts.mkdir(parents=True)
        (hosts / "ca.pem").write_bytes(open(certs["ca"], "rb").read())
        (hosts / "hosts.toml").write_text(f'server = "https://{reg.host}"\nca = "ca.pem"\n')
        res = json.loads(hold("images", "pull", "--hosts-dir", str(tmp_path / "hosts"),
                              "--user", "bob:pw", "--format", "json",
                              f"{reg.host}/team/app:1").stdout)
        assert res["fetched"] == 2 and res["target"]["digest"] == layout["manifest"]
        assert tokens.requests == [("bob", ["repository:team/app:pull"])]
    finally:
        reg.stop()
        tokens.close()
