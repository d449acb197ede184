"""The pieces without a process: spec building, user lookup, logs, frames, runc argv and
messages, cgroup v2 figures (this machine has cgroup v1 controllers only, so v2 is read
from a directory laid out as the kernel lays it out).
"""

from __future__ import annotations

import os

import pytest

from cargohold.errors import InvalidArgument, NotFound
from cargohold.snapshotters.runner import Result
from cargohold.tasks import cgroups, logs, proto, spec, users
from cargohold.tasks.runc import Runc, RuncFailed, RuncNotFound, RuncRunner, runc_message

CONFIG = {"config": {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["PATH=/x", "A=1"],
                     "WorkingDir": "/srv", "User": "app"}}


def build(opts=None, **kw):
    return spec.build(CONFIG, "c1", ns="default", state="/run/cargohold",
                      opts=opts or spec.SpecOptions(), user=users.User(0, 0), **kw)


def test_spec_from_the_image_config():
    s = build(cgroup_v2=False, hard_limits={"RLIMIT_NOFILE": 1 << 20})
    p = s["process"]
    assert p["args"] == ["/bin/app", "--serve"]
    assert p["env"] == ["PATH=/x", "A=1"] and p["cwd"] == "/srv"
    assert p["capabilities"]["bounding"] == spec.DEFAULT_CAPS
    assert p["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert p["noNewPrivileges"] is True and p["terminal"] is False
    assert [m["destination"] for m in s["mounts"]] == ["/proc", "/dev", "/dev/pts", "/dev/shm",
                                                       "/dev/mqueue", "/sys"]
    assert [n["type"] for n in s["linux"]["namespaces"]] == ["pid", "ipc", "uts", "mount",
                                                            "network"]
    assert s["linux"]["cgroupsPath"] == "/cargohold/default/c1"
    assert s["hostname"] == "c1" and s["root"] == {"path": "rootfs", "readonly": False}
    assert "cgroup" in [n["type"] for n in build(cgroup_v2=True)["linux"]["namespaces"]]


def test_overrides_replace_the_whole_argv_and_merge_env():
    o = spec.SpecOptions(args=["sh", "-c", "x"], env=["A=2", "B=3", "PATH"], cwd="/tmp",
                         tty=True, read_only=True, net_host=True)
    s = build(o, cgroup_v2=False)
    p = s["process"]
    assert p["args"] == ["sh", "-c", "x"], "ctr's rule: no entrypoint kept"
    assert p["env"] == ["A=2", "B=3", "TERM=xterm"]
    assert p["cwd"] == "/tmp" and p["terminal"] is True and s["root"]["readonly"] is True
    assert "network" not in [n["type"] for n in s["linux"]["namespaces"]]
    hosts = [m for m in s["mounts"] if m["destination"] in spec.HOST_FILES]
    assert all(m["options"] == ["rbind", "ro"] for m in hosts)
    with pytest.raises(InvalidArgument, match="neither entrypoint nor cmd"):
        spec.build({}, "c1", ns="n", state="/s", opts=spec.SpecOptions(), user=users.User(0, 0))
    with pytest.raises(InvalidArgument, match="not absolute"):
        build(spec.SpecOptions(cwd="rel"))


def test_rlimits_are_clamped_to_the_hard_limit():
    s = build(hard_limits={"RLIMIT_NOFILE": 512})
    assert s["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 512}]


def test_parse_mount(tmp_path):
    m = spec.parse_mount(f"type=bind,src={tmp_path},dst=/data/,options=ro")
    assert m == {"destination": "/data", "type": "bind", "source": str(tmp_path),
                 "options": ["rbind", "ro"]}
    assert spec.parse_mount("type=tmpfs,dst=/t,options=size=1m")["source"] == "tmpfs"
    for bad, why in ((f"src={tmp_path},dst=rel", "dst must be an absolute"),
                     ("type=bind,src=/no/such,dst=/d", "does not exist"),
                     ("type=bind,dst=/d,bogus=1", "unknown key 'bogus'"),
                     ("type=bind,justtext", "is not key=value")):
        with pytest.raises(InvalidArgument, match=why):
            spec.parse_mount(bad)
    # a mount at a default's destination replaces it
    s = build(spec.SpecOptions(mounts=[spec.parse_mount("type=tmpfs,dst=/dev/shm")]))
    assert [m["type"] for m in s["mounts"] if m["destination"] == "/dev/shm"] == ["tmpfs"]
    assert s["mounts"][-1]["source"] == "tmpfs"


def test_exec_process_keeps_the_container_process():
    s = build()
    p = spec.exec_process(s, ["ls"], tty=True)
    assert p["args"] == ["ls"] and p["terminal"] is True and "TERM=xterm" in p["env"]
    assert p["cwd"] == s["process"]["cwd"] and p["user"] == s["process"]["user"]


def _rootfs(tmp_path):
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "real").mkdir()
    (r / "real" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n# comment\n"
                                       "app:x:1000:1001::/home/app:/bin/sh\n")
    os.symlink("/real/passwd", r / "etc" / "passwd")  # absolute: resolved inside the root
    (r / "etc" / "group").write_text("root:x:0:\napp:x:1001:\nextra:x:2000:other,app\n"
                                     "wheel:x:10:\n")
    return str(r)


def test_users_are_looked_up_inside_the_root(tmp_path):
    r = _rootfs(tmp_path)
    assert users.resolve("", r) == users.User(0, 0, name="root")
    assert users.resolve("app", r) == users.User(1000, 1001, [2000], "app")
    assert users.resolve("1000", r) == users.User(1000, 1001, [2000], "app")
    assert users.resolve("1000:wheel", r).gid == 10
    assert users.resolve("4242", r) == users.User(4242, 0)
    assert users.resolve("4242:7", None) == users.User(4242, 7)
    assert not users.needs_lookup("4242:7") and users.needs_lookup("app")
    with pytest.raises(NotFound, match="user ghost: not in the image's /etc/passwd"):
        users.resolve("ghost", r)
    with pytest.raises(NotFound, match="group ghost: not in the image's /etc/group"):
        users.resolve("app:ghost", r)
    with pytest.raises(InvalidArgument, match="not USER"):
        users.resolve("app:", r)


def test_a_symlink_out_of_the_root_stays_inside(tmp_path):
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    outside = tmp_path / "host-passwd"
    outside.write_text("evil:x:0:0::/:/bin/sh\n")
    os.symlink(f"../../{outside.name}", r / "etc" / "passwd")
    assert users.read_in_root(str(r), "etc/passwd") is None
    with pytest.raises(NotFound):
        users.resolve("evil", str(r))


def test_logs_round_trip_streams_partial_lines_and_rotation(tmp_path):
    path = str(tmp_path / "log")
    w = logs.LogWriter(path, 0)
    w.write("stdout", b"a\nb")
    w.write("stderr", b"e\n")
    w.write("stdout", b"c\n\n")
    w.close()
    recs = list(logs.read(path))
    assert [(r.stream, r.data) for r in recs] == [("stdout", b"a\n"), ("stdout", b"b"),
                                                  ("stderr", b"e\n"), ("stdout", b"c\n"),
                                                  ("stdout", b"\n")]
    assert b"".join(r.data for r in recs if r.stream == "stdout") == b"a\nbc\n\n"
    w = logs.LogWriter(str(tmp_path / "small"), 300)
    for i in range(100):
        w.write("stdout", b"line %d\n" % i)
    w.close()
    assert os.path.getsize(tmp_path / "small") <= 300
    assert os.path.getsize(tmp_path / "small.1") <= 300
    kept = [r.data for r in logs.read(str(tmp_path / "small"))]
    assert kept[-1] == b"line 99\n" and kept == sorted(kept, key=lambda d: int(d.split()[1]))
    # One read of the task's output can hold many lines: the cap holds for each record.
    w = logs.LogWriter(str(tmp_path / "burst"), 300)
    w.write("stdout", b"".join(b"line %d\n" % i for i in range(100)))
    w.close()
    assert os.path.getsize(tmp_path / "burst") <= 300
    assert os.path.getsize(tmp_path / "burst.1") <= 300
    kept = [r.data for r in logs.read(str(tmp_path / "burst"))]
    assert kept[-1] == b"line 99\n" and kept == sorted(kept, key=lambda d: int(d.split()[1]))


def test_follow_reads_across_rotations_until_done(tmp_path):
    path = str(tmp_path / "log")
    w = logs.LogWriter(path, 200)  # about four records a file: a rotation every few lines
    lines = iter(range(60))
    state = {"done": False}

    def step(_interval):
        # The follower reached the end and waits: the writer goes on, three lines at a time
        # (at most one rotation in between, which one old file covers).
        for _ in range(3):
            i = next(lines, None)
            if i is None:
                state["done"] = True
                return
            w.write("stdout", b"line %03d\n" % i)

    got = [rec.data for rec in logs.follow(path, lambda: state["done"], sleep=step)]
    assert got == [b"line %03d\n" % i for i in range(60)]
    assert os.path.exists(path + ".1"), "the log did rotate"


def test_frames_split_however_bytes_arrive():
    data = proto.frame(proto.STDOUT, b"hello") + proto.exited(137, 5) + proto.resize(24, 80)
    r = proto.Reader()
    out = []
    for i in range(len(data)):
        out += r.feed(data[i:i + 1])
    assert out[0] == (proto.STDOUT, b"hello")
    assert proto.unpack_exited(out[1][1]) == (137, 5)
    assert proto.unpack_resize(out[2][1]) == (24, 80)
    with pytest.raises(ValueError):
        proto.Reader().feed(b"O" + (proto.MAX_FRAME + 1).to_bytes(4, "big"))


class FakeRunc(RuncRunner):
    def __init__(self, answers):
        super().__init__()
        self.answers, self.calls = answers, []

    def run(self, argv, *, check=True):
        self.calls.append(list(argv))
        rc, out, err = self.answers.get(argv[3], (0, "", ""))
        return Result(tuple(argv), rc, out, err)


def test_runc_argv_and_errors():
    fake = FakeRunc({"kill": (1, "", 'time="x" level=error msg="container not running"\n'),
                     "state": (1, "", 'time="x" level=error msg="container \\"t\\" does not '
                                      'exist"\n'),
                     "list": (0, '[{"id":"t","pid":7,"status":"running"}]', "")})
    r = Runc("/st/runc/default", runner=fake)
    assert r.list() == {"t": {"id": "t", "pid": 7, "status": "running"}}
    assert r.state("t") is None
    with pytest.raises(RuncFailed) as ei:
        r.kill("t", 15, all=True)
    assert ei.value.message == "task t: kill: container not running"
    assert "runc --root /st/runc/default kill --all t 15" in ei.value.hint
    assert fake.calls[-1] == ["runc", "--root", "/st/runc/default", "kill", "--all", "t", "15"]
    r.delete("t", force=True)  # answered ok
    assert fake.calls[-1][3:] == ["delete", "--force", "t"]
    assert r.create_argv("t", "/b", pid_file="p", log="l", console_socket="/c") == [
        "runc", "--root", "/st/runc/default", "--log", "l", "--log-format", "json", "create",
        "--bundle", "/b", "--pid-file", "p", "--console-socket", "/c", "t"]
    assert r.exec_argv("t", "p.json", tty=True, pid_file="e.pid", log="e.log") == [
        "runc", "--root", "/st/runc/default", "--log", "e.log", "--log-format", "json", "exec",
        "--process", "p.json", "--pid-file", "e.pid", "--tty", "t"]
    fake.answers["delete"] = (1, "", 'level=error msg="container does not exist"')
    r.delete("t")  # already gone: not an error
    fake.answers["pause"] = (1, "", 'level=error msg="container does not exist"')
    with pytest.raises(RuncNotFound, match="task t: pause: container does not exist"):
        r.pause("t")


def test_runc_messages():
    assert runc_message('{"level":"info","msg":"x"}\n{"level":"error","msg":"boom"}\n') \
        == "boom"
    assert runc_message('time="t" level=error msg="a \\"q\\" b"\n') == 'a "q" b'
    assert runc_message("plain failure\n") == "plain failure"


def test_cgroup_v2_figures(tmp_path):
    d = tmp_path / "cg"
    d.mkdir()
    (d / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (d / "memory.current").write_text("4096\n")
    (d / "memory.max").write_text("max\n")
    (d / "memory.peak").write_text("8192\n")
    (d / "pids.current").write_text("3\n")
    (d / "pids.max").write_text("100\n")
    (d / "io.stat").write_text("8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n"
                               "8:16 rbytes=5 wbytes=5 rios=1 wios=1\n")
    m = cgroups.read_v2(str(d))
    assert (m.cpu_usage_usec, m.cpu_user_usec, m.cpu_system_usec) == (1500, 1000, 500)
    assert (m.memory_current, m.memory_limit, m.memory_peak) == (4096, None, 8192)
    assert (m.pids_current, m.pids_limit) == (3, 100)
    assert (m.io_read_bytes, m.io_write_bytes, m.io_read_ops, m.io_write_ops) == (15, 25, 2, 3)
    empty = cgroups.read_v2(str(tmp_path))
    assert empty.memory_current is None and empty.io_read_bytes is None
