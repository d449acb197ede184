"""The OCI runtime spec of a container, built from its image's config as ``ctr run`` does.

:func:`build` starts from containerd's default Linux spec and applies the image config, then
the caller's overrides:

- **process**: ``args`` are the image's entrypoint + cmd, or, when the caller gives any, the
  caller's argv *instead of both* (ctr's rule: everything after the id is the argv); ``env``
  is ``PATH=…`` then the image's ``Env`` then ``--env`` (a later ``K=V`` replaces an earlier
  ``K``; a bare ``K`` removes it; a terminal adds ``TERM=xterm``); ``cwd`` is the image's
  ``WorkingDir`` or ``/``; ``user`` is resolved by :mod:`.users` (the caller resolves it,
  because that reads the image's files); the default capabilities in the bounding, effective
  and permitted sets; ``noNewPrivileges``; rlimits (RLIMIT_NOFILE 1024), each **clamped to the
  caller's hard limit**, because runc refuses a spec that asks for more than it may raise to;
- **mounts**: ``/proc``, ``/dev``, ``/dev/pts``, ``/dev/shm``, ``/dev/mqueue``, ``/sys``
  (read-only), then each ``--mount`` (one at a default's destination replaces it); with
  ``--net-host`` also the host's ``/etc/hosts`` and ``/etc/resolv.conf``, read-only;
- **linux**: new pid, ipc, uts, mount and network namespaces (no network namespace with
  ``--net-host``; a cgroup namespace on a cgroup v2 host), the cgroup path of
  :func:`cargohold.tasks.api.cgroups_path`, all devices denied but runc's defaults, and
  containerd's masked and read-only paths;
- **hostname**: the container id (the host's name with ``--net-host``); **root**:
  ``rootfs`` in the bundle, read-only with ``--read-only``.

Everything is pure: no file is read here (``host_hard_limits`` and ``cgroup_v2`` can be given
for tests).
"""

from __future__ import annotations

import copy
import os
import socket
from typing import Any

from cargohold._record import field, record
from cargohold.errors import InvalidArgument
from cargohold.tasks.api import cgroups_path
from cargohold.tasks.users import User

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
#: (type, soft, hard) before clamping to the caller's hard limits
DEFAULT_RLIMITS = [("RLIMIT_NOFILE", 1024, 1024)]
DEFAULT_MOUNTS: list[dict[str, Any]] = [
    {"destination": "/proc", "type": "proc", "source": "proc",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs",
     "options": ["nosuid", "noexec", "nodev", "ro"]},
]
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
HOST_FILES = ("/etc/hosts", "/etc/resolv.conf")


@record
class SpecOptions:
    """The caller's overrides (``hold containers create`` / ``hold run`` flags)."""

    args: list[str] = field(default_factory=list)  # replaces entrypoint + cmd when not empty
    env: list[str] = field(default_factory=list)
    cwd: str = ""
    user: str = ""  # USER[:GROUP]; empty: the image's
    mounts: list[dict[str, Any]] = field(default_factory=list)  # from parse_mount
    net_host: bool = False
    read_only: bool = False
    tty: bool = False
    hostname: str = ""


def image_process(image_config: dict[str, Any]) -> dict[str, Any]:
    """The ``config`` object of an OCI image config (``{}`` when absent)."""
    c = image_config.get("config") or {}
    return c if isinstance(c, dict) else {}


def user_text(image_config: dict[str, Any], opts: SpecOptions) -> str:
    """The ``USER[:GROUP]`` the process runs as: ``--user``, else the image's ``User``."""
    return opts.user or str(image_process(image_config).get("User") or "")


def merge_env(base: list[str], over: list[str]) -> list[str]:
    """``base`` with each ``K=V`` of ``over`` replacing or appending ``K``; a bare ``K``
    removes it (containerd's rule).
    """
    out = list(base)
    for kv in over:
        key = kv.split("=", 1)[0]
        out = [e for e in out if e.split("=", 1)[0] != key]
        if "=" in kv:
            out.append(kv)
    return out


def process_args(image_config: dict[str, Any], args: list[str], what: str) -> list[str]:
    """The argv: ``args`` when given, else the image's entrypoint + cmd."""
    if args:
        return list(args)
    c = image_process(image_config)
    out = [str(a) for a in (c.get("Entrypoint") or [])] + [str(a) for a in (c.get("Cmd") or [])]
    if not out:
        raise InvalidArgument(f"{what}: no command: the image has neither entrypoint nor cmd",
                              hint="give the command after the container id")
    return out


def rlimits(hard_limits: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """The default rlimits, none above the caller's hard limit (``hard_limits``: name ->
    hard, for tests; read with :mod:`resource` when None).
    """
    import resource

    out = []
    for name, soft, hard in DEFAULT_RLIMITS:
        if hard_limits is not None and name in hard_limits:
            cap = hard_limits[name]
        else:
            cap = resource.getrlimit(getattr(resource, name))[1]
        if cap != resource.RLIM_INFINITY and cap >= 0:
            hard = min(hard, cap)
            soft = min(soft, hard)
        out.append({"type": name, "hard": hard, "soft": soft})
    return out


def parse_mount(text: str) -> dict[str, Any]:
    """``type=bind,src=/a,dst=/b,options=rbind:ro`` (ctr's syntax) → a spec mount.

    ``source``/``destination``/``target`` are accepted for ``src``/``dst``; the type defaults
    to ``bind``; a bind mount gets ``rbind`` unless its options say ``bind`` or ``rbind``.
    """
    fields: dict[str, str] = {}
    for part in text.split(","):
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not sep:
            raise InvalidArgument(f"mount {text!r}: {part!r} is not key=value",
                                  hint="write it as type=bind,src=DIR,dst=DIR,options=rbind:ro")
        k = {"source": "src", "destination": "dst", "target": "dst"}.get(k, k)
        if k not in ("type", "src", "dst", "options"):
            raise InvalidArgument(f"mount {text!r}: unknown key {k!r}",
                                  hint="keys are type, src, dst and options")
        fields[k] = v
    dst = fields.get("dst", "")
    if not dst.startswith("/"):
        raise InvalidArgument(f"mount {text!r}: dst must be an absolute path in the container")
    mtype = fields.get("type") or "bind"
    options = [o for o in fields.get("options", "").split(":") if o]
    src = fields.get("src", "")
    if mtype == "bind":
        if not src.startswith("/"):
            raise InvalidArgument(f"mount {text!r}: src must be an absolute host path")
        if not os.path.exists(src):
            raise InvalidArgument(f"mount {text!r}: src {src} does not exist")
        if "bind" not in options and "rbind" not in options:
            options.insert(0, "rbind")
    return {"destination": os.path.normpath(dst), "type": mtype, "source": src or mtype,
            "options": options}


def build(image_config: dict[str, Any], cid: str, *, ns: str, state: str, opts: SpecOptions,
          user: User, cgroup_v2: bool | None = None,
          hard_limits: dict[str, int] | None = None) -> dict[str, Any]:
    """The runtime spec of container ``cid`` (see the module docstring)."""
    c = image_process(image_config)
    env = merge_env([DEFAULT_PATH], [str(e) for e in (c.get("Env") or [])])
    env = merge_env(env, opts.env)
    if opts.tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    caps = list(DEFAULT_CAPS)
    process = {
        "terminal": opts.tty,
        "user": user.to_spec(),
        "args": process_args(image_config, opts.args, f"container {cid}"),
        "env": env,
        "cwd": opts.cwd or str(c.get("WorkingDir") or "") or "/",
        "capabilities": {"bounding": caps, "effective": list(caps), "permitted": list(caps)},
        "rlimits": rlimits(hard_limits),
        "noNewPrivileges": True,
    }
    if not process["cwd"].startswith("/"):
        raise InvalidArgument(f"container {cid}: working directory {process['cwd']!r} is not "
                              "absolute", hint="give an absolute path with --cwd")
    mounts = copy.deepcopy(DEFAULT_MOUNTS)
    extra = list(opts.mounts)
    if opts.net_host:
        extra = [{"destination": f, "type": "bind", "source": f,
                  "options": ["rbind", "ro"]} for f in HOST_FILES if os.path.exists(f)] + extra
    for m in extra:
        mounts = [d for d in mounts if d["destination"] != m["destination"]]
        mounts.append(dict(m))
    namespaces = ["pid", "ipc", "uts", "mount"] + ([] if opts.net_host else ["network"])
    if cgroup_v2 is None:
        cgroup_v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    if cgroup_v2:
        namespaces.append("cgroup")
    hostname = opts.hostname or (socket.gethostname() if opts.net_host else cid[:63])
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": "rootfs", "readonly": opts.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": n} for n in namespaces],
            "cgroupsPath": cgroups_path(state, ns, cid),
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def exec_process(spec: dict[str, Any], args: list[str], *, tty: bool) -> dict[str, Any]:
    """The ``process`` of ``runc exec --process``: the container's, with ``args`` and a
    terminal when ``tty`` (and ``TERM`` then).
    """
    if not args:
        raise InvalidArgument("exec: no command", hint="give the command after the task id")
    p = copy.deepcopy(spec.get("process") or {})
    p["args"] = list(args)
    p["terminal"] = tty
    env = list(p.get("env") or [])
    if tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    p["env"] = env
    return p
