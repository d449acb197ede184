"""`hold serve` as a process: reload, the GC scheduler, expiry, kill -9, seeding into it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from tests.fetch.registry import htpasswd
from tests.service.servekit import Serve, hold, image_archive, import_image

FAST_GC = "[gc]\nstartup_delay = \"10ms\"\npause_threshold = 0.5\n"


def test_sighup_good_and_bad_config_and_reload_flag(root, tmp_path):
    with Serve(root, FAST_GC) as s:
        first = s.status()
        assert first["reload"]["state"] == "ok" and first["config"]["generation"] == 0
        assert first["gc"]["settings"]["mutation_threshold"] == 100
        s.write_config(FAST_GC + "mutation_threshold = 7\n")
        s.signal(signal.SIGHUP)
        st = s.wait_for(lambda st: st["config"]["generation"] == 1, "the reload")
        assert st["reload"]["state"] == "ok" and st["reload"]["source"] == "SIGHUP"
        assert st["gc"]["settings"]["mutation_threshold"] == 7
        # a bad config: refused, the running one stays, the error is shown
        s.write_config(FAST_GC + "mutation_threshold = -1\n")
        s.signal(signal.SIGHUP)
        st = s.wait_for(lambda st: st["reload"]["state"] == "refused", "the refusal")
        assert "mutation_threshold" in st["reload"]["error"]
        assert st["gc"]["settings"]["mutation_threshold"] == 7 and st["config"]["generation"] == 1
        out = hold(root, "status").stdout.decode()
        assert "refused" in out and "mutation_threshold" in out
        assert "refused, the running configuration stays" in s.log_text(), "and logged"
        # a broken hosts.toml is refused as well (the hosts directory is read again)
        hosts = tmp_path / "certs.d"
        (hosts / "example.com").mkdir(parents=True)
        (hosts / "example.com" / "hosts.toml").write_text('[host."http://m"]\nbogus = 1\n')
        s.write_config(FAST_GC + f'[registry]\nconfig_path = "{hosts}"\n')
        p = hold(root, "serve", "--reload", check=False)
        assert p.returncode == 1 and b"bogus" in p.stderr
        (hosts / "example.com" / "hosts.toml").write_text(
            '[host."http://127.0.0.1:1"]\ncapabilities = ["pull"]\n')
        p = hold(root, "serve", "--reload")
        st = s.status()
        assert st["reload"]["state"] == "ok" and st["config"]["generation"] == 2
        assert st["config"]["hosts"]["example.com"][0] == "http://127.0.0.1:1/v2"
        # an unknown key in config.toml: `hold serve --reload` still reaches the service
        s.write_config(FAST_GC + "bogus_key = 1\n")
        p = hold(root, "serve", "--reload", check=False)
        assert p.returncode == 1 and b"bogus_key" in p.stderr
        assert s.status()["reload"]["state"] == "refused"
        assert requests.get(s.url + "/v2/", timeout=10).status_code == 200, "still serving"
        assert s.stop() == 0


def test_gc_scheduler_fires_after_deletions(root, tmp_path):
    info = import_image(root, str(tmp_path), "example.com/gc/app:1", [{"x": os.urandom(50000)}])
    with Serve(root, FAST_GC) as s:
        st = s.wait_for(lambda st: st["gc"]["runs"] >= 1, "the start-up collection")
        runs = st["gc"]["runs"]
        hold(root, "images", "rm", "example.com/gc/app:1")
        st = s.wait_for(lambda st: st["gc"]["runs"] > runs and st["gc"]["bytes_freed_total"] > 0,
                        "a collection after the removal")
        assert st["gc"]["last"]["removed"].get("blob-file", 0) >= 3
        blobs = os.path.join(root, "content", "blobs", "sha256")
        assert info["layers"][0].split(":")[1] not in os.listdir(blobs)
        assert s.status()["gc"]["pending_deletions"] == 0
        requests.get(s.url + "/v2/", timeout=10)
        # hold status: version, uptime, root, last GC (when, how long, freed), reload state,
        # the registry's endpoint and counters
        from cargohold import __version__

        out = hold(root, "status").stdout.decode()
        last = st["gc"]["last"]
        for want in (f"hold serve {__version__}, pid {s.proc.pid}, up ", f"root:     {root}",
                     f"last at {last['at']}: {last['seconds']:.3f}s, removed ",
                     "freed", "generation 0", f"registry: {s.url} namespace default, read-only",
                     "requests 200="):
            assert want in out, (want, out)
        js = json.loads(hold(root, "status", "--format", "json").stdout)
        assert js["reload"]["state"] == "ok" and js["uptime_seconds"] > 0
        assert js["gc"]["last"]["bytes_freed"] > 0 and js["gc"]["last"]["at"]


def test_lease_expiry_triggers_a_collection(root, tmp_path):
    cfg = FAST_GC + "mutation_threshold = 0\n"
    with Serve(root, cfg) as s:
        s.wait_for(lambda st: st["gc"]["runs"] >= 1, "the start-up collection")
        hold(root, "leases", "create", "--expires", "2s", "--id", "short")
        st = s.wait_for(lambda st: st["gc"].get("next_expiry"), "the expiry to be seen")
        s.wait_for(lambda st: st["gc"]["expired_seen"] >= 1, "the lease to expire")
        s.wait_for(lambda st: "short" not in hold(root, "leases", "ls", "-q").stdout.decode(),
                   "the collection of the expired lease")
        assert st["gc"]["enabled"]


def test_sigterm_finishes_and_kill9_loses_nothing(root, tmp_path):
    pw = htpasswd(str(tmp_path / "htpasswd"), "bob", "pw")
    import_image(root, str(tmp_path), "example.com/k/app:1", [{"a": os.urandom(300000)}])
    cfg = FAST_GC + f'[serve]\nregistry_push = true\nhtpasswd = "{pw}"\n'
    s = Serve(root, cfg).start()
    try:
        # uploads in flight when the service is killed
        stop = threading.Event()

        def push_forever() -> None:
            auth = ("bob", "pw")
            while not stop.is_set():
                try:
                    r = requests.post(s.url + "/v2/k/app/blobs/uploads/", auth=auth, timeout=5)
                    data = os.urandom(200000)
                    requests.put(s.url + r.headers["Location"] + "?digest=sha256:"
                                 + hashlib.sha256(data).hexdigest(), data=data, auth=auth,
                                 timeout=5)
                except Exception:  # noqa: BLE001 - the service is killed under it
                    return

        t = threading.Thread(target=push_forever)
        t.start()
        s.wait_for(lambda st: st["apis"]["registry"]["bytes_received"] > 1_000_000, "uploads")
        s.signal(signal.SIGKILL)
        s.proc.wait(10)
        stop.set()
        t.join(10)
    finally:
        s.stop()
    p = hold(root, "fsck", check=False)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    # the killed service's pid file stays; its pid may name another process by now, which
    # `hold serve --reload` must not send SIGHUP
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        with open(os.path.join(root, "_state", "serve.pid"), "w") as f:
            f.write(f"{sleeper.pid}\n")
        p = hold(root, "serve", "--reload", check=False)
        assert p.returncode == 1 and b"no hold serve runs" in p.stderr, p.stderr.decode()
        assert sleeper.poll() is None, "the process that took the pid is left alone"
    finally:
        sleeper.kill()
        sleeper.wait()
    # the next service starts on the same state (stale socket and pid file) and stops cleanly
    with Serve(root, cfg) as s2:
        assert s2.status()["pid"] != 0
        hold(root, "images", "rm", "example.com/k/app:1")
        s2.wait_for(lambda st: st["gc"]["bytes_freed_total"] > 0, "a collection")
    assert hold(root, "fsck", check=False).returncode == 0


def test_one_service_per_state_dir(root):
    with Serve(root) as s:
        p = hold(root, "serve", check=False, timeout=30)
        assert p.returncode == 1 and b"locked by" in p.stderr
        assert s.status()["pid"] == s.proc.pid


@pytest.mark.peer
def test_airgap_seed_push_with_credentials_and_refused_without(root, tmp_path):
    from tests.fetch.registry import need_registry

    need_registry()
    pw = htpasswd(str(tmp_path / "htpasswd"), "alice", "s3cret")
    serve_root = str(tmp_path / "served")
    os.makedirs(serve_root)
    archive, info = image_archive(str(tmp_path), "example.com/seed/app:1",
                                  [{"bin/tool": os.urandom(100000)}, {"etc/x": b"x"}])
    with Serve(serve_root, f'[serve]\nregistry_push = true\nhtpasswd = "{pw}"\n') as s:
        p = hold(root, "airgap", "seed", "--push", s.host, archive, check=False)
        assert p.returncode != 0
        assert b"authentication required" in p.stderr, p.stderr.decode()
        hold(root, "airgap", "seed", "--push", s.host, "--user", "alice:s3cret", archive)
        # a mirror request (as containerd sends it) finds the pushed image
        r = requests.get(s.url + "/v2/seed/app/manifests/1?ns=example.com", timeout=30,
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == info["manifest"]
        import subprocess

        out = subprocess.run(["skopeo", "inspect", "--tls-verify=false",
                              f"docker://{s.host}/seed/app:1"], capture_output=True, timeout=120)
        assert out.returncode == 0, out.stderr.decode()
        assert info["manifest"] in out.stdout.decode()
    assert hold(serve_root, "fsck", check=False).returncode == 0


def test_stale_mount_records_are_swept(root, tmp_path):
    from tests.peers import need_root

    need_root()
    import_image(root, str(tmp_path), "example.com/m/app:1", [{"etc/m": b"m\n"}], unpack=True)
    target = str(tmp_path / "target")
    records = os.path.join(root, "_state", "mounts")
    with Serve(root, FAST_GC + '[serve]\nmount_sweep_interval = "200ms"\n') as s:
        hold(root, "images", "mount", "example.com/m/app:1", target)
        assert os.listdir(records)
        st = s.status()
        assert st["mounts"]["swept_total"] == 0, "a mounted target is left alone"
        subprocess.run(["umount", target], check=True)  # not through hold: the record stays
        s.wait_for(lambda st: st["mounts"]["swept_total"] >= 1, "the sweep")
        assert os.listdir(records) == []
        leases = hold(root, "leases", "ls", "-q").stdout.decode()
        assert "mount-" not in leases


def test_unreadable_config_is_refused_and_the_service_stays(root):
    """A file that is not UTF-8, or not a file: refused like an invalid one, never fatal."""
    with Serve(root, FAST_GC) as s:
        with open(s.config_path, "wb") as f:
            f.write(b"\xff\xfe[serve]\n")
        s.signal(signal.SIGHUP)
        st = s.wait_for(lambda st: st["reload"]["state"] == "refused", "the refusal")
        assert "config.toml" in st["reload"]["error"] and "decode" in st["reload"]["error"]
        os.unlink(s.config_path)
        os.mkdir(s.config_path)
        p = hold(root, "serve", "--reload", check=False)
        assert p.returncode == 1 and b"cannot read" in p.stderr, p.stderr.decode()
        assert requests.get(s.url + "/v2/", timeout=10).status_code == 200, "still serving"
        os.rmdir(s.config_path)
        s.write_config(FAST_GC)
        hold(root, "serve", "--reload")
        st = s.status()
        assert st["reload"]["state"] == "ok" and st["config"]["generation"] == 1
        assert s.stop() == 0


def test_ingest_expiry_triggers_a_collection(root):
    """A partial ingest is kept until its expireat, then the service collects it, with no
    write to wake the scheduler: only the expiry watch can.
    """
    with Serve(root, FAST_GC + 'ingest_expiry = "8s"\n') as s:
        s.wait_for(lambda st: st["gc"]["runs"] >= 1, "the start-up collection")
        p = hold(root, "content", "ingest", "--expected-size", "1000", "partial",
                 input=b"x" * 100, check=False)
        assert p.returncode != 0 and b"resume" in p.stderr, p.stderr.decode()

        def active() -> list[str]:
            out = hold(root, "content", "active", "--format", "json").stdout
            return [i["ref"] for i in json.loads(out)]

        assert active() == ["partial"], "kept for a resume until it expires"
        s.wait_for(lambda st: st["gc"]["expired_seen"] >= 1, "the ingest to expire")
        s.wait_for(lambda st: not active(), "the collection of the expired ingest")


def test_sigterm_lets_a_pull_in_flight_finish(root, tmp_path):
    """SIGTERM: the listener closes, the status socket goes, and the service waits (up to
    --grace) for a blob still being sent; the client gets every byte; exit 0.
    """
    data = os.urandom(16 << 20)  # more than the socket buffers hold: it stays in flight
    info = import_image(root, str(tmp_path), "example.com/t/app:1", [{"big": data}])
    big = info["layers"][0]
    with Serve(root, args=("--grace", "300")) as s:
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.settimeout(60)
        c.connect(("127.0.0.1", s.port))
        try:
            c.sendall(f"GET /v2/t/app/blobs/{big} HTTP/1.1\r\nHost: {s.host}\r\n\r\n"
                      .encode())
            got = c.recv(65536)
            s.signal(signal.SIGTERM)
            sock = os.path.join(root, "_state", "hold.sock")
            for _ in range(600):  # bounded: 60 s
                if not os.path.exists(sock):
                    break
                time.sleep(0.1)
            assert not os.path.exists(sock), "the status socket goes at once"
            assert s.proc.poll() is None, "the service waits for the pull in flight"
            while chunk := c.recv(1 << 20):
                got += chunk
        finally:
            c.close()
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert "sha256:" + hashlib.sha256(body).hexdigest() == big
        assert s.proc.wait(60) == 0
        assert "stopping" in s.log_text()


def test_reload_moves_the_registry_or_refuses_a_taken_address(root):
    from tests.fetch.registry import free_port

    with Serve(root) as s:
        old = s.url
        new = free_port()
        s.write_config(f'[serve]\nregistry_address = "127.0.0.1:{new}"\n')
        hold(root, "serve", "--reload")
        assert requests.get(f"http://127.0.0.1:{new}/v2/", timeout=10).status_code == 200
        assert s.status()["apis"]["registry"]["endpoint"] == f"http://127.0.0.1:{new}"
        for _ in range(100):  # the old listener closes in the background (bounded)
            try:
                requests.get(old + "/v2/", timeout=10)
            except requests.ConnectionError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the old address still answers")
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            s.write_config(f'[serve]\nregistry_address = "127.0.0.1:{port}"\n')
            p = hold(root, "serve", "--reload", check=False)
            assert p.returncode == 1 and b"cannot listen" in p.stderr, p.stderr.decode()
        assert requests.get(f"http://127.0.0.1:{new}/v2/", timeout=10).status_code == 200
        assert s.status()["reload"]["state"] == "refused"
