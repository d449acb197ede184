"""hosts.toml: lookup, order, every key, strict errors, defaults, and `hold hosts explain`."""

from __future__ import annotations

import json

import pytest

from cargohold.errors import InvalidArgument
from cargohold.fetch.hosts import load


def write(tmp_path, host, text, files=()):
    d = tmp_path / host
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text(text)
    for f in files:
        (d / f).write_text("x")
    return str(tmp_path)


def test_defaults_without_configuration():
    hub = load("", "docker.io").endpoints
    assert [e.url for e in hub] == ["https://registry-1.docker.io/v2"]
    assert not hub[0].mirror and hub[0].capabilities == ("pull", "resolve", "push")
    assert load("", "127.0.0.1:5000").endpoints[0].url == "http://127.0.0.1:5000/v2"
    assert load("", "localhost:443").endpoints[0].url == "https://localhost:443/v2"
    assert load("", "example.com").endpoints[0].url == "https://example.com/v2"
    assert load("", "example.com", plain_http=True).endpoints[0].url == "http://example.com/v2"
    assert load("/nonexistent", "example.com").searched[-1] == "/nonexistent/_default"


def test_order_capabilities_and_every_key(tmp_path):
    root = write(tmp_path, "example.com:5000", '''
server = "https://up.example.com"
capabilities = ["pull", "resolve", "push"]
[host."https://m1.example.com:8443"]
  capabilities = ["pull", "resolve"]
  ca = "ca.pem"
  client = [["c.cert", "c.key"], ["both.pem", ""]]
  skip_verify = false
  dial_timeout = "200ms"
  [host."https://m1.example.com:8443".header]
    x-one = "1"
    x-many = ["a", "b"]
[host."http://m2.example.com/custom/api"]
  override_path = true
  capabilities = ["pull"]
''', files=("ca.pem", "c.cert", "c.key", "both.pem"))
    cfg = load(root, "example.com:5000")
    urls = [e.url for e in cfg.endpoints]
    assert urls == ["https://m1.example.com:8443/v2", "http://m2.example.com/custom/api",
                    "https://up.example.com/v2"]
    m1, m2, up = cfg.endpoints
    assert m1.mirror and m2.mirror and up.mirror  # none of them is example.com:5000 itself
    assert m1.capabilities == ("pull", "resolve") and m2.capabilities == ("pull",)
    assert m1.ca == (f"{root}/example.com:5000/ca.pem",)
    assert m1.client == ((f"{root}/example.com:5000/c.cert", f"{root}/example.com:5000/c.key"),
                         (f"{root}/example.com:5000/both.pem", ""))
    assert m1.headers == (("x-one", "1"), ("x-many", "a"), ("x-many", "b"))
    assert m1.dial_timeout == pytest.approx(0.2)
    assert 'host."https://m1.example.com:8443"' in m1.source
    assert up.source.endswith("server")
    assert [e.url for e in cfg.with_capability("resolve")] == [urls[0], urls[2]]


def test_port_directory_forms_and_default_fallback(tmp_path):
    write(tmp_path, "_default", 'server = "https://central.example"\n')
    assert load(str(tmp_path), "a.example").endpoints[0].url == "https://central.example/v2"
    write(tmp_path, "a.example_5000_", '[host."https://m.example"]\n')
    cfg = load(str(tmp_path), "a.example:5000")
    assert cfg.file.endswith("a.example_5000_/hosts.toml")
    # No server: the registry itself is tried last, after the mirror.
    assert [e.url for e in cfg.endpoints] == ["https://m.example/v2",
                                              "https://a.example:5000/v2"]
    assert not cfg.endpoints[-1].mirror


def test_docker_hub_server_is_not_a_mirror(tmp_path):
    root = write(tmp_path, "docker.io", '[host."https://mirror.gcr.io"]\n'
                 'capabilities = ["pull", "resolve"]\n')
    eps = load(root, "docker.io").endpoints
    assert [(e.url, e.mirror) for e in eps] == [("https://mirror.gcr.io/v2", True),
                                                ("https://registry-1.docker.io/v2", False)]


def test_certificate_files_without_hosts_toml(tmp_path):
    d = tmp_path / "reg.example"
    d.mkdir()
    for n in ("ca.crt", "client.cert", "client.key"):
        (d / n).write_text("x")
    ep = load(str(tmp_path), "reg.example").endpoints[0]
    assert ep.ca == (str(d / "ca.crt"),)
    assert ep.client == ((str(d / "client.cert"), str(d / "client.key")),)


@pytest.mark.parametrize("text, key", [
    ('server = "https://x"\ncapabilites = ["pull"]\n', "key capabilites: unknown key"),
    ('[host."https://m"]\ncapabilities = ["pul"]\n',
     'key host."https://m".capabilities: unknown capability \'pul\''),
    ('[host."https://m"]\nca = "missing.pem"\n', 'key host."https://m".ca: file'),
    ('[host."https://m"]\nskip_verify = "yes"\n', 'key host."https://m".skip_verify'),
    ('[host."https://m"]\ndial_timeout = "soon"\n', 'key host."https://m".dial_timeout'),
    ('[host."https://m"]\nclient = [["a"]]\n', 'key host."https://m".client'),
    ('[host."ftp://m"]\n', 'key host."ftp://m": \'ftp://m\' is not an http(s) URL'),
    ('[host."https://m"]\nheader = "x"\n', 'key host."https://m".header'),
    ('server = [1]\n', "key server"),
    ('server = "https://x"\n[host\n', "not valid TOML"),
])
def test_malformed_files_name_the_file_and_key(tmp_path, text, key):
    root = write(tmp_path, "reg.example", text)
    with pytest.raises(InvalidArgument) as ei:
        load(root, "reg.example")
    assert f"hosts file {root}/reg.example/hosts.toml: " in ei.value.message
    assert key in ei.value.message
    assert ei.value.hint


def test_hosts_explain(hold, tmp_path):
    root = write(tmp_path / "h", "docker.io", '''
[host."https://mirror.example"]
  capabilities = ["pull", "resolve"]
  ca = "ca.pem"
  [host."https://mirror.example".header]
    x-team = "blue"
    x-many = ["a", "b"]
''', files=("ca.pem",))
    out = hold("hosts", "explain", "--hosts-dir", root, "alpine").stdout.decode()
    lines = out.splitlines()
    assert lines[0] == "docker.io/library/alpine:latest: registry docker.io"
    assert "1. https://mirror.example/v2  mirror  pull,resolve" in out
    assert "2. https://registry-1.docker.io/v2  server  pull,resolve,push" in out
    assert ("resolve: HEAD https://mirror.example/v2/library/alpine/manifests/latest"
            "?ns=docker.io") in out
    assert f"tls: ca {root}/docker.io/ca.pem" in out and "header: x-team: blue" in out
    assert "header: x-many: a, b" in out  # every value, as they are sent
    assert f'from: {root}/docker.io/hosts.toml host."https://mirror.example"' in out
    doc = json.loads(hold("hosts", "explain", "--hosts-dir", root, "--format", "json",
                          "alpine:3").stdout)
    assert [e["kind"] for e in doc["endpoints"]] == ["mirror", "server"]
    bad = write(tmp_path / "b", "docker.io", '[host."https://m"]\ncapabilities = ["pul"]\n')
    p = hold("hosts", "explain", "--hosts-dir", bad, "alpine", check=False)
    assert p.returncode == 2 and b"unknown capability 'pul'" in p.stderr
