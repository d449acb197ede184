"""Owners of internal leases: which process made a lease, and whether it still runs.

Import, unpack and pack (and, later, pull) run inside a lease that their own process creates
and deletes. A ``kill -9`` (or a power cut) leaves that lease behind, and with only its expiry
it would keep a half-extracted snapshot for a day. So an internal lease records its owner, as
labels in containerd's style (``<domain>/<key>``)::

    cargohold.owner/pid      the owner's pid (decimal)
    cargohold.owner/start    its start time: field 22 of /proc/<pid>/stat (clock ticks since
                             boot), so a pid reused by another process is not the owner
    cargohold.owner/boot     /proc/sys/kernel/random/boot_id: a lease from an earlier boot is
                             dead whatever its pid
    cargohold.owner/pidns    the owner's pid namespace (readlink /proc/self/ns/pid): a pid is
                             only judged from the namespace it was recorded in
    cargohold.owner/purpose  what the owner was doing ("images import big.tar"), for messages

A lease without ``cargohold.owner/pid`` (``hold leases create``, ``--lease``, a mount's lease)
has no owner and is never judged. :func:`state` says, for a lease's labels:

- ``NONE``: no owner;
- ``ALIVE``: the owner runs;
- ``DEAD``: the owner is gone: recorded on another boot, or its pid is missing, a zombie, or a
  process that started at another time. A dead owner's lease holds nothing (GC treats it as
  expired), though what has its own expiry (a partial ingest) keeps it;
- ``UNKNOWN``: it cannot be told here (labels malformed, another pid namespace, no /proc);
  such a lease is kept until its expiry, as containerd keeps a lease with an unreadable expiry.

Nothing here writes; a check costs a read of /proc/<pid>/stat.
"""

from __future__ import annotations

import enum
import functools
import os
from collections.abc import Callable, Mapping

from cargohold._record import record

OWNER_PREFIX = "cargohold.owner/"
LABEL_OWNER_PID = OWNER_PREFIX + "pid"
LABEL_OWNER_START = OWNER_PREFIX + "start"
LABEL_OWNER_BOOT = OWNER_PREFIX + "boot"
LABEL_OWNER_PIDNS = OWNER_PREFIX + "pidns"
LABEL_OWNER_PURPOSE = OWNER_PREFIX + "purpose"

MAX_PURPOSE = 200
PROC = "/proc"


class State(enum.Enum):
    """Whether a lease's owner runs (see the module docstring)."""

    NONE = "none"
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"


@record(frozen=True)
class Owner:
    """The owner a lease's labels record."""

    pid: int
    start: int
    boot: str
    pidns: str = ""
    purpose: str = ""

    def describe(self) -> str:
        """``process 4242 (images import big.tar)``."""
        return f"process {self.pid}" + (f" ({self.purpose})" if self.purpose else "")


def dead_lease_text(lid: str, labels: Mapping[str, str]) -> str:
    """``lease L of dead process P (purpose)``: how GC and fsck name a dead owner's lease."""
    owner = parse(labels)
    return f"lease {lid} of dead " + (owner.describe() if owner else "process")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def stat_fields(pid: int, proc: str) -> tuple[str, int] | None:
    """(state, start time) of ``pid`` from /proc, or None when there is no such process."""
    text = _read(f"{proc}/{pid}/stat")
    if not text or ")" not in text:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    rest = text[text.rindex(")") + 1:].split()
    try:
        return rest[0], int(rest[19])
    except (IndexError, ValueError):
        return None


@functools.cache
def boot_id(proc: str = PROC) -> str:
    """This boot's id ('' when /proc does not say)."""
    return _read(f"{proc}/sys/kernel/random/boot_id") or ""


@functools.cache
def _pidns(proc: str = PROC) -> str:
    try:
        return os.readlink(f"{proc}/self/ns/pid")
    except OSError:
        return ""


def owner_labels(purpose: str = "", *, proc: str = PROC) -> dict[str, str]:
    """The labels that make this process the owner of a lease ({} without a usable /proc,
    so the lease is simply not judged).
    """
    me = stat_fields(os.getpid(), proc)
    boot = boot_id(proc)
    if me is None or not boot:
        return {}
    labels = {LABEL_OWNER_PID: str(os.getpid()), LABEL_OWNER_START: str(me[1]),
              LABEL_OWNER_BOOT: boot}
    ns = _pidns(proc)
    if ns:
        labels[LABEL_OWNER_PIDNS] = ns
    if purpose:
        labels[LABEL_OWNER_PURPOSE] = purpose[:MAX_PURPOSE]
    return labels


def parse(labels: Mapping[str, str]) -> Owner | None:
    """The owner ``labels`` record; None when they record none or cannot be read."""
    pid = labels.get(LABEL_OWNER_PID)
    if pid is None:
        return None
    try:
        return Owner(int(pid), int(labels.get(LABEL_OWNER_START, "")),
                     labels.get(LABEL_OWNER_BOOT, ""), labels.get(LABEL_OWNER_PIDNS, ""),
                     labels.get(LABEL_OWNER_PURPOSE, ""))
    except ValueError:
        return None


def owner_state(owner: Owner, *, proc: str = PROC) -> State:
    """Whether ``owner`` runs (see the module docstring)."""
    here = boot_id(proc)
    if not here or not owner.boot or owner.pid <= 0:
        return State.UNKNOWN
    if owner.boot != here:
        return State.DEAD  # recorded before this boot: no process of it survives
    if owner.pidns and owner.pidns != _pidns(proc):
        return State.UNKNOWN  # its pid means another process in our namespace
    got = stat_fields(owner.pid, proc)
    if got is None:
        return State.DEAD
    st, start = got
    if st in ("Z", "X") or start != owner.start:
        return State.DEAD  # exited (not yet reaped), or the pid now names someone else
    return State.ALIVE


def state(labels: Mapping[str, str], *, proc: str = PROC) -> State:
    """Whether the owner a lease's ``labels`` record runs (NONE when they record none)."""
    if LABEL_OWNER_PID not in labels:
        return State.NONE
    owner = parse(labels)
    return State.UNKNOWN if owner is None else owner_state(owner, proc=proc)


OwnerCheck = Callable[[Mapping[str, str]], State]
"""Maps a lease's labels to its owner's :class:`State` (tests swap it for a table)."""


def cached_check(proc: str = PROC) -> OwnerCheck:
    """A check that reads /proc once per owner (a GC scan asks for many leases at once)."""
    seen: dict[tuple[str, ...], State] = {}

    def check(labels: Mapping[str, str]) -> State:
        if LABEL_OWNER_PID not in labels:
            return State.NONE
        key = (labels.get(LABEL_OWNER_PID, ""), labels.get(LABEL_OWNER_START, ""),
               labels.get(LABEL_OWNER_BOOT, ""), labels.get(LABEL_OWNER_PIDNS, ""))
        if key not in seen:
            seen[key] = state(labels, proc=proc)
        return seen[key]

    return check
