"""``hold tasks metrics``: CPU, memory, pids and I/O of a task's cgroup, read from the kernel.

The cgroup is the one the task's init is in (``/proc/<pid>/cgroup``), found under the mount
points ``/proc/self/mountinfo`` shows, so it is right wherever runc put it. On a cgroup v2
host the figures come from ``cpu.stat`` (usage/user/system µs), ``memory.current``,
``memory.max``, ``memory.peak``, ``pids.current``, ``pids.max`` and ``io.stat`` (bytes and
operations, summed over devices); on a v1 (or hybrid) host from the same figures' v1 files:
``cpuacct.usage`` / ``cpuacct.stat``, ``memory.usage_in_bytes`` / ``limit_in_bytes`` /
``max_usage_in_bytes``, ``pids.*`` and ``blkio.throttle.io_service_bytes`` / ``io_serviced``.
A figure the kernel does not offer is None ("-" in the table), never a made-up zero.
"""

from __future__ import annotations

import os
from typing import Any

from cargohold._record import asdict, record
from cargohold.errors import NotFound

_UNLIMITED_V1 = 1 << 62  # v1 reports "no limit" as a page-rounded huge number


@record
class Metrics:
    """One reading of a task's cgroup."""

    cgroup_version: int
    cgroup: str
    cpu_usage_usec: int | None = None
    cpu_user_usec: int | None = None
    cpu_system_usec: int | None = None
    memory_current: int | None = None
    memory_limit: int | None = None  # None: no limit
    memory_peak: int | None = None
    pids_current: int | None = None
    pids_limit: int | None = None  # None: no limit
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    io_read_ops: int | None = None
    io_write_ops: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _int(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _keyed(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def read_v2(directory: str) -> Metrics:
    """The figures of the cgroup v2 directory ``directory``."""
    m = Metrics(2, directory)
    cpu = _keyed(_read(os.path.join(directory, "cpu.stat")))
    m.cpu_usage_usec = cpu.get("usage_usec")
    m.cpu_user_usec = cpu.get("user_usec")
    m.cpu_system_usec = cpu.get("system_usec")
    m.memory_current = _int(os.path.join(directory, "memory.current"))
    m.memory_limit = _int(os.path.join(directory, "memory.max"))
    m.memory_peak = _int(os.path.join(directory, "memory.peak"))
    m.pids_current = _int(os.path.join(directory, "pids.current"))
    m.pids_limit = _int(os.path.join(directory, "pids.max"))
    io = _read(os.path.join(directory, "io.stat"))
    if io is not None:
        sums = {"rbytes": 0, "wbytes": 0, "rios": 0, "wios": 0}
        for line in io.splitlines():
            for field in line.split()[1:]:
                k, _, v = field.partition("=")
                if k in sums and v.isdigit():
                    sums[k] += int(v)
        m.io_read_bytes, m.io_write_bytes = sums["rbytes"], sums["wbytes"]
        m.io_read_ops, m.io_write_ops = sums["rios"], sums["wios"]
    return m


def _blkio(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    r = w = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            if parts[1] == "Read":
                r += int(parts[2])
            elif parts[1] == "Write":
                w += int(parts[2])
    return r, w


def read_v1(dirs: dict[str, str]) -> Metrics:
    """The figures of the v1 cgroups ``dirs`` (controller -> directory)."""
    m = Metrics(1, dirs.get("memory") or dirs.get("cpuacct") or next(iter(dirs.values()), ""))
    acct = dirs.get("cpuacct")
    if acct:
        usage = _int(os.path.join(acct, "cpuacct.usage"))
        m.cpu_usage_usec = usage // 1000 if usage is not None else None
        stat = _keyed(_read(os.path.join(acct, "cpuacct.stat")))
        hz = os.sysconf("SC_CLK_TCK")
        if "user" in stat:
            m.cpu_user_usec = stat["user"] * 1_000_000 // hz
        if "system" in stat:
            m.cpu_system_usec = stat["system"] * 1_000_000 // hz
    mem = dirs.get("memory")
    if mem:
        m.memory_current = _int(os.path.join(mem, "memory.usage_in_bytes"))
        limit = _int(os.path.join(mem, "memory.limit_in_bytes"))
        m.memory_limit = None if limit is None or limit >= _UNLIMITED_V1 else limit
        m.memory_peak = _int(os.path.join(mem, "memory.max_usage_in_bytes"))
    pids = dirs.get("pids")
    if pids:
        m.pids_current = _int(os.path.join(pids, "pids.current"))
        m.pids_limit = _int(os.path.join(pids, "pids.max"))
    blk = dirs.get("blkio")
    if blk:
        m.io_read_bytes, m.io_write_bytes = _blkio(
            _read(os.path.join(blk, "blkio.throttle.io_service_bytes")))
        m.io_read_ops, m.io_write_ops = _blkio(
            _read(os.path.join(blk, "blkio.throttle.io_serviced")))
    return m


def _mounts() -> tuple[str | None, dict[str, str]]:
    """(cgroup2 mount point, v1 controller or option -> its hierarchy's mount point)."""
    from cargohold.mount import mountinfo

    v2 = None
    v1: dict[str, str] = {}
    for e in mountinfo():
        if e.fstype == "cgroup2" and e.root == "/" and v2 is None:
            v2 = e.target
        elif e.fstype == "cgroup" and e.root == "/":
            # Super options name the controllers (and name=systemd); every hierarchy
            # counts for cleanup, so none is filtered out.
            for opt in e.options:
                v1.setdefault(opt, e.target)
    return v2, v1


def cgroup_dirs(pid: int) -> tuple[str | None, dict[str, str]]:
    """Where ``pid``'s cgroups are: (its v2 directory, v1 controller -> directory)."""
    text = _read(f"/proc/{pid}/cgroup")
    if text is None:
        raise NotFound(f"process {pid}: gone", hint="the task may have exited; see "
                                                    "'hold tasks ls'")
    v2_mount, v1_mounts = _mounts()
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        num, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        if num == "0" and not ctrls:
            if v2_mount:
                v2 = os.path.join(v2_mount, path.lstrip("/"))
            continue
        for c in ctrls.split(","):
            if c in v1_mounts:
                v1[c] = os.path.join(v1_mounts[c], path.lstrip("/"))
    return v2, v1


def read(pid: int) -> Metrics:
    """The metrics of the cgroup(s) of ``pid``: v1 controllers when the host has them (a
    hybrid host keeps its figures there), else the v2 directory.
    """
    v2, v1 = cgroup_dirs(pid)
    if any(c in v1 for c in ("cpuacct", "memory", "pids", "blkio")):
        return read_v1(v1)
    if v2 is None:
        raise NotFound(f"process {pid}: no cgroup mounted that holds it",
                       hint="mount the cgroup filesystem on /sys/fs/cgroup")
    return read_v2(v2)


def remove_empty_parents(path: str) -> None:
    """Remove the parent cgroups cargohold made (``/cargohold…/<ns>``) once they are empty,
    on every hierarchy; busy or missing ones are left alone.
    """
    v2_mount, v1_mounts = _mounts()
    bases = set(v1_mounts.values()) | ({v2_mount} if v2_mount else set())
    parts = path.strip("/").split("/")
    for depth in range(len(parts) - 1, 0, -1):
        rel = "/".join(parts[:depth])
        for base in bases:
            try:
                os.rmdir(os.path.join(base, rel))
            except OSError:
                pass


def exists_anywhere(path: str) -> list[str]:
    """Every hierarchy's directory for cgroup ``path`` that exists (for tests and checks)."""
    v2_mount, v1_mounts = _mounts()
    bases = set(v1_mounts.values()) | ({v2_mount} if v2_mount else set())
    return sorted(d for d in (os.path.join(b, path.lstrip("/")) for b in bases)
                  if os.path.isdir(d))
