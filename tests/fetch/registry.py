"""Real registry helpers: docker-registry on 127.0.0.1, a byte-counting proxy, OCI layouts.

- ``DockerRegistry(workdir, ...)``: Debian's ``docker-registry`` (distribution 2.8) with its
  own config.yml, storage under ``workdir``, bound to 127.0.0.1 on a free port; optionally
  TLS, htpasswd (bcrypt) basic auth, or token auth against a token server.
- ``CountingProxy(port)``: a TCP proxy in front of a registry that counts the bytes it sent
  to clients (and can throttle them), so tests can measure what a pull fetched.
- ``TokenServer``: an in-process token endpoint that signs distribution-style JWTs (RS256,
  ``x5c`` chain) for the registry's ``auth: token`` mode, and counts requests.
- ``make_layout(dir, layers)``: an OCI image layout (one manifest, gzip layers from
  in-memory files) that ``skopeo copy`` pushes with ``push_layout``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request

import pytest

from cargohold.images import platforms


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_registry() -> None:
    for b in ("docker-registry", "skopeo"):
        if shutil.which(b) is None:
            pytest.skip(f"missing {b}: tools/setup installs docker-registry and skopeo")


class DockerRegistry:
    """A private docker-registry process (see the module docstring)."""

    def __init__(self, workdir: str, *, tls: tuple[str, str] | None = None,
                 client_ca: str = "", htpasswd: str = "", token: dict | None = None) -> None:
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.client_ca = client_ca  # with tls: clients must show a certificate it signed
        self.htpasswd = htpasswd
        self.token = token
        self.proc: subprocess.Popen | None = None
        self.log = os.path.join(workdir, "registry.log")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def _config(self) -> str:
        lines = ["version: 0.1", "log:", "  level: warn", "  accesslog:", "    disabled: true",
                 "storage:", "  filesystem:", f"    rootdirectory: {self.dir}/data",
                 "  delete:", "    enabled: true", "  maintenance:", "    uploadpurging:",
                 "      enabled: false", "http:", f"  addr: {self.host}",
                 "  secret: cargohold-test-secret"]
        if self.tls:
            lines += ["  tls:", f"    certificate: {self.tls[0]}", f"    key: {self.tls[1]}"]
            if self.client_ca:
                lines += ["    clientcas:", f"      - {self.client_ca}"]
        if self.htpasswd:
            lines += ["auth:", "  htpasswd:", "    realm: cargohold-test",
                      f"    path: {self.htpasswd}"]
        if self.token:
            lines += ["auth:", "  token:", f"    realm: {self.token['realm']}",
                      f"    service: {self.token['service']}",
                      f"    issuer: {self.token['issuer']}",
                      f"    rootcertbundle: {self.token['rootcertbundle']}"]
        path = os.path.join(self.dir, "config.yml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 20) -> DockerRegistry:
        cfg = self._config()
        logf = open(self.log, "wb")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg], stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + timeout
        import ssl

        ctx = ssl._create_unverified_context()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log_tail()}")
            try:
                if self.client_ca:  # no certificate to show here: a listening port will do
                    socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
                    return self
                urllib.request.urlopen(f"{self.url}/v2/", timeout=2, context=ctx)
                return self
            except urllib.error.HTTPError:
                return self  # 401: up, and asking for auth
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer: {self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError), open(self.log, errors="replace") as f:
            return "".join(f.readlines()[-20:])
        return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


class CountingProxy:
    """TCP proxy 127.0.0.1:<port> → 127.0.0.1:<upstream>, counting bytes sent to clients.

    ``rate`` (bytes/s, 0 = unlimited) throttles what clients receive, so a test can stop a
    pull part-way. ``sent`` is the running total; ``reset()`` starts again from zero.
    """

    def __init__(self, upstream: int, *, rate: int = 0) -> None:
        self.upstream = upstream
        self.rate = rate
        self.port = free_port()
        self.sent = 0
        self.pause = threading.Event()  # set: nothing more reaches clients (a silent server)
        self._mu = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._sock.settimeout(0.2)
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self._mu:
            self.sent = 0

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                c.close()
                continue
            self._conns += [c, u]
            for a, b, count in ((c, u, False), (u, c, True)):
                t = threading.Thread(target=self._pump, args=(a, b, count), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            src.settimeout(None)
            while not self._stop.is_set():
                data = src.recv(1 << 16)
                if not data:
                    break
                if count and self.rate:
                    time.sleep(len(data) / self.rate)
                while count and self.pause.is_set() and not self._stop.is_set():
                    time.sleep(0.01)
                dst.sendall(data)
                if count:
                    with self._mu:
                        self.sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()
        for t in self._threads:
            t.join(5)


# --- images ------------------------------------------------------------------------------

def tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = set()
        for name in sorted(files):
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_600_000_000
                    t.addfile(ti)
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(files[name]), 0o644, 1_600_000_000
            t.addfile(ti, io.BytesIO(files[name]))
    return buf.getvalue()


def _put(layout: str, data: bytes) -> dict:
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{d}", "size": len(data)}


def make_layout(layout: str, layers: list[dict[str, bytes]], *, tag: str = "1",
                level: int = 1) -> dict:
    """An OCI layout with one manifest for this host's platform; returns digests."""
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    ldescs, ids = [], []
    for files in layers:
        plain = tar_bytes(files)
        ids.append("sha256:" + hashlib.sha256(plain).hexdigest())
        gz = gzip.compress(plain, compresslevel=level, mtime=0)
        ldescs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       **_put(layout, gz)})
    host = platforms.default()
    cfg = json.dumps({"architecture": host.architecture, "os": host.os,
                      "config": {"Cmd": ["/bin/sh"]},
                      "rootfs": {"type": "layers", "diff_ids": ids}}).encode()
    man = json.dumps({"schemaVersion": 2,
                      "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                 **_put(layout, cfg)},
                      "layers": ldescs}).encode()
    mdesc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **_put(layout, man),
             "annotations": {"org.opencontainers.image.ref.name": tag}}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [mdesc]}, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    return {"manifest": mdesc["digest"], "layers": [d["digest"] for d in ldescs],
            "sizes": [d["size"] for d in ldescs], "diff_ids": ids}


def push_layout(layout: str, tag: str, dest: str, *, creds: str = "",
                tls_verify: bool = False, cert_dir: str = "", fmt: str = "",
                all_platforms: bool = False) -> None:
    """``skopeo copy oci:LAYOUT:TAG docker://DEST`` (``--all``: every image of an index)."""
    argv = ["skopeo", "copy", "-q", f"--dest-tls-verify={'true' if tls_verify else 'false'}"]
    if all_platforms:
        argv.append("--all")
    if creds:
        argv.append(f"--dest-creds={creds}")
    if cert_dir:
        argv.append(f"--dest-cert-dir={cert_dir}")
    if fmt:
        argv += ["--format", fmt]
    argv += [f"oci:{layout}:{tag}", f"docker://{dest}"]
    p = subprocess.run(argv, capture_output=True, timeout=300)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {p.stderr.decode(errors='replace')}")


# --- TLS ---------------------------------------------------------------------------------

def make_ca(d: str, names: tuple[str, ...] = ("127.0.0.1", "localhost")) -> dict:
    """A self-signed CA, a server certificate for ``names`` and a client certificate, both
    signed by it (PEM files: ``ca``, ``cert``/``key``, ``client_cert``/``client_key``).
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.makedirs(d, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cargohold test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=7))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ckey = ec.generate_private_key(ec.SECP256R1())
    ccert = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")]))
             .issuer_name(ca_name).public_key(ckey.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=7))
             .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                            critical=False)
             .sign(ca_key, hashes.SHA256()))
    out = {"ca": os.path.join(d, "ca.pem"), "cert": os.path.join(d, "server.pem"),
           "key": os.path.join(d, "server.key"), "client_cert": os.path.join(d, "client.cert"),
           "client_key": os.path.join(d, "client.key")}
    with open(out["ca"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    for c, k, cpath, kpath in ((cert, key, "cert", "key"),
                               (ccert, ckey, "client_cert", "client_key")):
        with open(out[cpath], "wb") as f:
            f.write(c.public_bytes(serialization.Encoding.PEM))
        with open(out[kpath], "wb") as f:
            f.write(k.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return out


def htpasswd(path: str, user: str, password: str) -> str:
    import bcrypt

    h = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    with open(path, "w") as f:
        f.write(f"{user}:{h}\n")
    return path


# --- token server --------------------------------------------------------------------------

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues registry tokens (JWT, RS256, ``x5c``) at ``http://127.0.0.1:<port>/token``.

    ``users`` maps user → password; anonymous requests get pull-only tokens unless
    ``anonymous`` is False. ``requests`` lists the (user, scopes) of every request.
    """

    def __init__(self, d: str, *, users: dict[str, str] | None = None,
                 anonymous: bool = True, lifetime: int = 300,
                 tls: tuple[str, str] | None = None) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        os.makedirs(d, exist_ok=True)
        self.users = users or {}
        self.anonymous = anonymous
        self.lifetime = lifetime
        self.issuer = "cargohold-test-issuer"
        self.service = "cargohold-test-registry"
        self.requests: list[tuple[str, list[str]]] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=7))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._key, hashes.SHA256()))
        self._der = cert.public_bytes(serialization.Encoding.DER)
        self.bundle = os.path.join(d, "token-ca.pem")
        with open(self.bundle, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # noqa: ANN002
                pass

            def do_GET(self) -> None:  # noqa: N802
                server._handle(self)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls:  # (cert, key): the realm is https://, as a private registry's usually is
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def realm(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/token"

    def registry_config(self) -> dict:
        return {"realm": self.realm, "service": self.service, "issuer": self.issuer,
                "rootcertbundle": self.bundle}

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        from urllib.parse import parse_qs, urlsplit

        q = parse_qs(urlsplit(h.path).query)
        scopes = [s for v in q.get("scope", []) for s in v.split(" ")]
        user = ""
        auth = h.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
            if self.users.get(u) != p:
                h.send_response(401)
                h.end_headers()
                return
            user = u
        elif not self.anonymous:
            h.send_response(401)
            h.end_headers()
            return
        self.requests.append((user, scopes))
        access = []
        for s in scopes:
            kind, _, rest = s.partition(":")
            name, _, actions = rest.rpartition(":")
            acts = actions.split(",") if user else [a for a in actions.split(",") if a == "pull"]
            access.append({"type": kind, "name": name, "actions": acts})
        body = json.dumps({"token": self.sign(user, access), "expires_in": self.lifetime,
                           "issued_at": datetime.datetime.now(datetime.UTC)
                           .isoformat()}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def sign(self, user: str, access: list[dict]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self._der).decode()]}
        claims = {"iss": self.issuer, "sub": user, "aud": self.service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing = (_b64url(json.dumps(header).encode()) + "." +
                   _b64url(json.dumps(claims).encode()))
        sig = self._key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing + "." + _b64url(sig)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def make_index_layout(layout: str, tag: str, images: list[tuple[str, list[dict[str, bytes]]]]
                      ) -> dict:
    """An OCI layout whose ``tag`` is an index of one manifest per (arch, layers)."""
    import tempfile

    entries = []
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    for arch, layers in images:
        with tempfile.TemporaryDirectory() as t:
            info = make_layout(t, layers)
            idx = json.load(open(os.path.join(t, "index.json")))["manifests"][0]
            for name in os.listdir(os.path.join(t, "blobs", "sha256")):
                src = os.path.join(t, "blobs", "sha256", name)
                data = open(src, "rb").read()
                if f"sha256:{name}" == info["manifest"]:
                    continue
                if b'"rootfs"' in data and b'"architecture"' in data:
                    doc = json.loads(data)
                    doc["architecture"] = arch
                    cfg = json.dumps(doc).encode()
                    man = json.loads(open(os.path.join(t, "blobs", "sha256",
                                                       info["manifest"][7:]), "rb").read())
                    man["config"].update(_put(layout, cfg))
                    mdesc = _put(layout, json.dumps(man).encode())
                    continue
                _put(layout, data)
            entries.append({"mediaType": idx["mediaType"], **mdesc,
                            "platform": {"os": "linux", "architecture": arch}})
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": entries}
    idesc = {"mediaType": index["mediaType"], **_put(layout, json.dumps(index).encode()),
             "annotations": {"org.opencontainers.image.ref.name": tag}}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [idesc]}, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    return {"index": idesc["digest"], "manifests": [e["digest"] for e in entries]}


def push_two_platform_index(layout: str, tag: str, dest: str) -> dict:
    """An index of two one-layer images, this machine's platform first (file ``m``) and the
    other of amd64/arm64 (file ``t``), made as an OCI layout and pushed whole to ``dest``;
    returns make_index_layout's info.
    """
    host = "arm64" if os.uname().machine == "aarch64" else "amd64"
    other = "amd64" if host == "arm64" else "arm64"
    info = make_index_layout(layout, tag, [(host, [{"m": b"mine"}]), (other, [{"t": b"theirs"}])])
    push_layout(layout, tag, dest, all_platforms=True)
    return info
