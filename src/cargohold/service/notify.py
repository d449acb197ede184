"""systemd's notify protocol (``Type=notify``), spoken directly: no library needed.

:func:`notify` sends ``KEY=VALUE`` lines as one datagram to the unix socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Without the variable it
does nothing, so ``hold serve`` runs the same in a terminal. The service sends:

- ``READY=1`` once its APIs listen (and again after each reload);
- ``RELOADING=1`` with ``MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>`` when a reload starts (what
  systemd 253+ expects for ``Type=notify-reload``, harmless for ``notify``);
- ``STOPPING=1`` when it begins to shut down;
- ``STATUS=...``, a line ``systemctl status`` shows.

A socket that cannot be reached is not an error: the service keeps running.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*lines: str) -> bool:
    """Send ``lines`` to ``$NOTIFY_SOCKET``; return whether a datagram went out."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    addr = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall("\n".join(lines).encode() + b"\n")
    except OSError:
        return False
    return True


def ready(status: str = "") -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")
