"""``hold containers``: records, the snapshot GC keeps for them, the spec the process gets,
and the errors a user meets — on real runc where a process runs.
"""

from __future__ import annotations

import json
import os
import socket

import pytest

from tests.tasks.conftest import IMAGE, need_runc, state_of, tasks_json

pytestmark = pytest.mark.peer


@pytest.fixture(autouse=True)
def _runc():
    need_runc()


def snapshot_keys(hold) -> list[str]:
    return [s["name"] for s in json.loads(hold("snapshots", "ls", "--format", "json").stdout)]


def test_create_ls_info_label_rm(hold, image):
    out = hold("containers", "create", "--label", "team=a", "--env", "A=1", IMAGE, "c1",
               "sh", "-c", "echo $A")
    assert out.stdout == b"c1\n"
    table = hold("containers", "ls").stdout.decode().splitlines()
    assert table[0].split() == ["CONTAINER", "IMAGE", "RUNTIME", "LABELS"]
    assert table[1].split() == ["c1", IMAGE, "runc", "team=a"]
    info = json.loads(hold("containers", "info", "c1").stdout)
    assert info["ID"] == "c1" and info["Image"] == IMAGE and info["SnapshotKey"] == "c1"
    assert info["Snapshotter"] == "overlayfs" and info["Runtime"]["Name"] == "runc"
    spec = info["Spec"]
    assert spec["process"]["args"] == ["sh", "-c", "echo $A"]
    assert "A=1" in spec["process"]["env"] and spec["hostname"] == "c1"
    assert hold("containers", "label", "c1", "team=", "tier=web").stdout == b"tier=web\n"
    assert hold("containers", "ls", "-q", "labels.tier==web").stdout == b"c1\n"
    assert hold("containers", "ls", "-q", "labels.team==a").stdout == b""
    again = hold("containers", "create", IMAGE, "c1", "true", check=False)
    assert again.returncode == 1
    assert b"container c1: already exists" in again.stderr
    assert b"hold containers rm c1" in again.stderr
    hold("containers", "rm", "c1")
    assert hold("containers", "ls", "-q").stdout == b""
    assert "c1" not in snapshot_keys(hold)
    gone = hold("containers", "info", "c1", check=False)
    assert gone.returncode == 1 and b"container c1: not found" in gone.stderr
    assert b"hold containers ls" in gone.stderr


def test_gc_keeps_the_container_snapshot_and_what_it_builds_on(hold, image):
    hold("containers", "create", IMAGE, "c1", "true")
    hold("images", "rm", IMAGE)
    hold("gc")
    assert "c1" in snapshot_keys(hold)
    why = hold("gc", "--why", "snapshot/overlayfs/c1", check=False).stdout.decode()
    assert "container" in why
    # The container still runs although its image is gone: its layers are held through it.
    assert hold("tasks", "start", "c1").returncode == 0
    hold("tasks", "rm", "c1")
    hold("containers", "rm", "--keep-snapshot", "c1")
    hold("gc")
    assert "c1" in snapshot_keys(hold), "--keep-snapshot makes it a GC root"
    hold("snapshots", "rm", "c1")
    hold("gc")
    assert snapshot_keys(hold) == []


def test_user_names_and_groups_come_from_the_image(hold, image):
    p = hold("run", "--rm", "--user", "app", IMAGE, "t1", "id")
    assert p.stdout.startswith(b"uid=1000(app) gid=1000(app) groups=")
    assert b"2000(extra)" in p.stdout, "additional gids from /etc/group"
    p = hold("run", "--rm", "--user", "1000:extra", IMAGE, "t1", "id")
    assert p.stdout.startswith(b"uid=1000(app) gid=2000(extra)")
    p = hold("run", "--rm", "--user", "nobody", IMAGE, "t1", "id", check=False)
    assert p.returncode == 1 and b"user nobody: not in the image's /etc/passwd" in p.stderr
    assert b"t1" not in hold("containers", "ls", "-q").stdout
    # A process user can write to its own stdio, as with ctr (the pipes are its own).
    p = hold("run", "--rm", "--user", "app", IMAGE, "t1", "sh", "-c",
             "echo via-dev-stdout > /dev/stdout")
    assert p.stdout == b"via-dev-stdout\n"


def test_mounts_read_only_net_host_and_hostname(hold, image, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from the host\n")
    script = ("cat /data/in.txt; echo out > /data/out.txt; hostname; "
              "touch /newfile 2>/dev/null && echo rw || echo ro; ip link 2>/dev/null | "
              "grep -c '^[0-9]'")
    p = hold("run", "--rm", "--mount", f"type=bind,src={shared},dst=/data,options=rbind:rw",
             "--read-only", IMAGE, "t1", "sh", "-c", script)
    lines = p.stdout.decode().splitlines()
    assert lines[:3] == ["from the host", "t1", "ro"]
    assert lines[3] == "1", "a new network namespace has only lo"
    assert (shared / "out.txt").read_text() == "out\n"
    p = hold("run", "--rm", "--net-host", IMAGE, "t2", "sh", "-c",
             "hostname; ip link | grep -c '^[0-9]'; cat /etc/hosts | head -1")
    host_links = len([n for n in os.listdir("/sys/class/net")])
    lines = p.stdout.decode().splitlines()
    assert lines[0] == socket.gethostname()
    assert int(lines[1]) == host_links
    with open("/etc/hosts") as f:
        assert lines[2] == f.readline().rstrip("\n")
    ro = hold("run", "--rm", "--mount", f"type=bind,src={shared},dst=/data,options=rbind:ro",
              IMAGE, "t3", "sh", "-c", "echo x > /data/x || echo refused", check=False)
    assert b"refused" in ro.stdout


def test_rlimits_never_above_the_callers_hard_limit(hold, hold_bg, image):
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    p = hold("run", "--rm", IMAGE, "t1", "sh", "-c", "ulimit -n; ulimit -Hn")
    soft_in, hard_in = (int(x) for x in p.stdout.split())
    assert hard_in <= hard and soft_in <= hard_in
    assert hard_in == min(1024, hard)

    # A caller whose hard limit is below the default 1024: without CAP_SYS_RESOURCE runc
    # could not raise it (it would refuse the spec), so the spec asks for no more.
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))

    p = hold_bg("run", "--rm", IMAGE, "t2", "sh", "-c", "ulimit -n; ulimit -Hn",
                preexec_fn=lower)
    out, err = p.communicate(timeout=120)
    assert (p.returncode, out.split()) == (0, [b"512", b"512"]), err


def test_errors_a_user_understands(hold, image, root):
    # runc missing
    cfg = os.path.join(root, "_no_config.toml")
    with open(cfg, "w") as f:
        f.write('[tasks]\nruntime_binary = "no-such-runc"\n')
    p = hold("run", "--rm", IMAGE, "t1", "true", check=False)
    assert p.returncode == 1 and b"runtime no-such-runc: not found on PATH" in p.stderr
    assert b"install runc" in p.stderr
    assert b"t1" not in hold("containers", "ls", "-q").stdout
    os.unlink(cfg)
    # runc's own error, with the command that failed
    p = hold("run", "--rm", IMAGE, "t1", "/no/such/program", check=False)
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "task t1: runc create failed:" in err and "/no/such/program" in err
    assert "failed: runc create failed" not in err, "runc's words are not said twice"
    assert "runc --root" in err and " create " in err
    # The command can be run again as shown: its files are named by full paths.
    cmd = err.split("the command was: ", 1)[1].split()
    for flag in ("--log", "--pid-file", "--bundle"):
        assert cmd[cmd.index(flag) + 1].startswith(state_of(root) + "/"), (flag, cmd)
    assert tasks_json(hold) == {} and hold("containers", "ls", "-q").stdout == b""
    from cargohold.tasks import cgroups
    from cargohold.tasks.api import cgroup_parent

    # no cgroup left behind either, not even the namespace's parent
    assert cgroups.exists_anywhere(cgroup_parent(os.path.join(root, "_state"))) == []
    # task not running / not found
    p = hold("tasks", "kill", "t1", check=False)
    assert p.returncode == 1 and b"task t1: not found" in p.stderr
    hold("run", "-d", IMAGE, "t2", "true")
    from tests.tasks.conftest import wait_for

    wait_for(lambda: tasks_json(hold)["t2"]["status"] == "STOPPED", what="exit")
    for verb in ("pause", "stop", "ps", "metrics"):
        p = hold("tasks", verb, "t2", check=False)
        assert p.returncode == 1 and b"task t2: not running (STOPPED, exit status 0)" \
            in p.stderr, (verb, p.stderr)
    p = hold("tasks", "exec", "t2", "true", check=False)
    assert p.returncode == 1 and b"not RUNNING" in p.stderr
    # image missing, and not a pullable reference
    p = hold("run", "--rm", "Not A Ref", "t3", "true", check=False)
    assert p.returncode == 1 and b"image Not A Ref: not in the store" in p.stderr
    # image missing, and its registry does not answer: the pull's error, and why it ran
    from tests.fetch.registry import free_port

    ref = f"127.0.0.1:{free_port()}/x/y:1"
    p = hold("run", "--rm", ref, "t3", "true", check=False)
    assert p.returncode == 1
    assert f"image {ref}: not in namespace default, and pulling {ref} failed".encode() \
        in p.stderr and b"connection refused" in p.stderr


def test_image_not_unpacked_and_layers_missing(hold, client, busybox_rootfs):
    from cargohold.images.pack import PackOptions, pack

    res = pack(client, busybox_rootfs, "test/bare:1", PackOptions(unpack=False))
    hold("content", "rm", res.layer.digest)
    p = hold("containers", "create", "test/bare:1", "c1", "true", check=False)
    assert p.returncode == 1
    assert b"image test/bare:1: not unpacked for snapshotter overlayfs" in p.stderr
    assert b"hold images pull test/bare:1" in p.stderr


def test_an_image_not_unpacked_yet_is_unpacked_on_create(hold, client, busybox_rootfs):
    from cargohold.images.pack import PackOptions, pack

    pack(client, busybox_rootfs, "test/later:1", PackOptions(unpack=False))
    assert snapshot_keys(hold) == []
    assert hold("run", "--rm", "test/later:1", "t1", "echo", "ok").stdout == b"ok\n"


def test_plugins_ls_probes_runc_for_real(hold, image, root):
    row = {(r["type"], r["id"]): r for r in json.loads(
        hold("plugins", "ls", "--format", "json").stdout)}[("runtime", "runc")]
    assert row["status"] == "ok" and row["reason"].startswith("runc version ")
    hold("run", "-d", IMAGE, "t1", "sleep", "100")
    row = {(r["type"], r["id"]): r for r in json.loads(
        hold("plugins", "ls", "--format", "json").stdout)}[("runtime", "runc")]
    assert "1 task(s), 1 runc container(s)" in row["reason"]
    hold("tasks", "rm", "--force", "t1")
    cfg = os.path.join(root, "_no_config.toml")
    with open(cfg, "w") as f:
        f.write('[tasks]\nruntime_binary = "no-such-runc"\n')
    row = {(r["type"], r["id"]): r for r in json.loads(
        hold("plugins", "ls", "--format", "json").stdout)}[("runtime", "runc")]
    assert row["status"] == "skip" and "no-such-runc not found" in row["reason"]
