"""``runc``, driven through one seam: :class:`RuncRunner` (the snapshotters' ``Runner`` plus
``spawn`` for the two calls whose stdio the container inherits).

:class:`Runc` builds every argv with ``--root`` set to a directory under cargohold's state
(never the system's ``/run/runc``) and runs it through its runner: ``run`` (captured output)
for state, list, kill, pause, resume, delete, ps and version; ``spawn`` (a process with the
caller's stdio) for ``create`` (the shim's pipes become the container's stdio) and a
foreground ``exec``. Tests swap the runner to assert argv.

Errors: a missing binary raises :class:`RuncMissing` (Unsupported) with what to install; a
failing command raises :class:`RuncError` (FailedPrecondition, NotFound when runc says the
container does not exist), whose message is runc's own error text and whose ``command`` is
the argv that failed, so the CLI can show both.
"""

from __future__ import annotations

import json
import re
import subprocess

from cargohold.errors import CargoholdError, FailedPrecondition, NotFound, Unsupported
from cargohold.snapshotters.runner import Result, Runner, quote

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself is not imported: the shim starts faster without it
    from collections.abc import Sequence
    from typing import Any

_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')
RUNC_TIMEOUT = 60.0


class RuncMissing(Unsupported):
    """The runc binary is not installed."""


class RuncError(CargoholdError):
    """runc refused; ``command`` is the argv, ``stderr`` what it said."""

    def __init__(self, message: str, command: Sequence[str], *, hint: str | None = None
                 ) -> None:
        super().__init__(message, hint=hint or f"the command was: {quote(command)}")
        self.command = list(command)


class RuncNotFound(RuncError, NotFound):
    """runc does not know the container."""


class RuncFailed(RuncError, FailedPrecondition):
    """runc exited non-zero for another reason."""


def runc_message(text: str) -> str:
    """runc's error out of its stderr or JSON log: the ``msg`` of its last error line."""
    last = ""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and doc.get("level") in ("error", "fatal"):
                last = str(doc.get("msg", ""))
                continue
            if isinstance(doc, dict):
                continue
        m = _MSG.search(line)
        if m is None:
            if "level=" not in line:
                last = line  # runc's plain "fatal" line
        elif "level=error" in line or "level=fatal" in line:
            last = m.group(1).replace('\\"', '"')
    return last


def join_message(what: str, msg: str) -> str:
    """``what: msg``, without saying twice what runc's message starts with itself
    (``task t1: runc create failed`` + ``runc create failed: unable to start …``).
    """
    tail = what.rsplit(": ", 1)[-1]
    if msg.startswith(tail + ": "):
        msg = msg[len(tail) + 2:]
    return f"{what}: {msg}"


def raise_for(res: Result, what: str, stderr: str | None = None) -> None:
    """Raise the RuncError of a failed ``res`` (``what``: "task t1: kill")."""
    msg = runc_message(res.stderr if stderr is None else stderr) or res.stdout.strip() \
        or f"exit status {res.returncode}"
    if res.returncode == 127 and "command not found" in res.stderr:
        raise RuncMissing(f"runtime {res.argv[0]}: not installed",
                          hint="install runc (the Debian package runc; tools/setup installs it)")
    cls = RuncNotFound if "does not exist" in msg else RuncFailed
    raise cls(join_message(what, msg), res.argv)


class RuncRunner(Runner):
    """The real runner, with ``spawn`` for commands that take the caller's stdio."""

    def spawn(self, argv: Sequence[str], *, stdin: Any = None, stdout: Any = None,
              stderr: Any = None, cwd: str | None = None,
              pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
        """Start ``argv`` with the given stdio; a missing binary raises RuncMissing."""
        try:
            return subprocess.Popen(list(argv), stdin=stdin, stdout=stdout, stderr=stderr,
                                    cwd=cwd, pass_fds=tuple(pass_fds))
        except FileNotFoundError:
            raise RuncMissing(f"runtime {argv[0]}: not installed",
                              hint="install runc (the Debian package runc; tools/setup "
                                   "installs it)") from None


class Runc:
    """runc with its state under ``root`` (``<state>/runc/<namespace>``)."""

    def __init__(self, root: str, *, binary: str = "runc",
                 runner: RuncRunner | None = None) -> None:
        self.root = root
        self.binary = binary
        self.runner = runner or RuncRunner(timeout=RUNC_TIMEOUT)

    def argv(self, *args: str, log: str | None = None) -> list[str]:
        out = [self.binary, "--root", self.root]
        if log:
            out += ["--log", log, "--log-format", "json"]
        return out + list(args)

    def _run(self, what: str, *args: str) -> Result:
        res = self.runner.run(self.argv(*args), check=False)
        if not res.ok:
            raise_for(res, what)
        return res

    def available(self) -> str:
        """The full path of the binary; RuncMissing when it is not installed."""
        import shutil

        path = shutil.which(self.binary)
        if path is None:
            raise RuncMissing(f"runtime {self.binary}: not found on PATH",
                              hint="install runc (the Debian package runc; tools/setup "
                                   "installs it)")
        return path

    def version(self) -> str:
        res = self.runner.run([self.binary, "--version"], check=False)
        if not res.ok:
            raise_for(res, f"runtime {self.binary}: version")
        return res.stdout

    # --- create and start (the shim) ---------------------------------------------------------
    def create_argv(self, cid: str, bundle: str, *, pid_file: str, log: str,
                    console_socket: str | None = None) -> list[str]:
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        return self.argv(*args, cid, log=log)

    def start(self, cid: str, *, log: str | None = None) -> None:
        res = self.runner.run(self.argv("start", cid, log=log), check=False)
        if not res.ok:
            raise_for(res, f"task {cid}: runc start failed", _log_or(log, res.stderr))

    # --- state ---------------------------------------------------------------------------------
    def state(self, cid: str) -> dict[str, Any] | None:
        """runc's state of ``cid`` (status, pid, ...), or None when runc does not know it."""
        try:
            res = self._run(f"task {cid}: state", "state", cid)
        except RuncNotFound:
            return None
        return json.loads(res.stdout)

    def list(self) -> dict[str, dict[str, Any]]:
        """Every container under this root: id -> {status, pid, ...}."""
        res = self._run("runc list", "list", "--format", "json")
        items = json.loads(res.stdout or "null") or []
        return {c["id"]: c for c in items}

    def ps(self, cid: str) -> list[int]:
        res = self._run(f"task {cid}: ps", "ps", "--format", "json", cid)
        return [int(p) for p in json.loads(res.stdout or "null") or []]

    # --- control -------------------------------------------------------------------------------
    def kill(self, cid: str, signal: int | str, *, all: bool = False) -> None:
        args = ["kill"] + (["--all"] if all else []) + [cid, str(signal)]
        self._run(f"task {cid}: kill", *args)

    def pause(self, cid: str) -> None:
        self._run(f"task {cid}: pause", "pause", cid)

    def resume(self, cid: str) -> None:
        self._run(f"task {cid}: resume", "resume", cid)

    def delete(self, cid: str, *, force: bool = False) -> None:
        """Delete ``cid``; one that runc does not know is already deleted (no error)."""
        try:
            self._run(f"task {cid}: delete", "delete", *(["--force"] if force else []), cid)
        except RuncNotFound:
            pass

    def exec_argv(self, cid: str, process_file: str, *, tty: bool, pid_file: str,
                  log: str) -> list[str]:
        return self.argv("exec", "--process", process_file, "--pid-file", pid_file,
                         *(["--tty"] if tty else []), cid, log=log)


def read_log(path: str | None) -> str:
    """The text of runc's ``--log`` file ``path`` ("" when there is none, or no path)."""
    if not path:
        return ""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _log_or(log: str | None, stderr: str) -> str:
    text = read_log(log)
    return text if runc_message(text) else stderr


def probe(state: str, ns: str, binary: str = "runc") -> tuple[str, str]:
    """``(status, reason)`` for ``hold plugins ls``: runc answers ``--version`` and lists
    namespace ``ns``'s containers under ``state``, and a file can be created (and removed)
    in the state directory (or, before it exists, the directory it would be made in).
    """
    import os

    from cargohold._oserror import _existing
    from cargohold.tasks.api import runc_root, task_ids

    r = Runc(runc_root(state, ns), binary=binary)
    try:
        r.available()
    except RuncMissing:
        return "skip", f"{binary} not found on PATH: install runc (tools/setup installs it)"
    if os.geteuid() != 0:
        return "skip", "needs root: rootless containers are not supported"
    first = r.version().splitlines()
    version = first[0].strip() if first else "runc (no version printed)"
    spec_line = next((ln.split(":", 1)[1].strip() for ln in first if ln.startswith("spec:")),
                     "")
    running = r.list()
    # A real file, not os.access: root passes every permission check, and access() cannot
    # see a full inode table or an immutable directory.
    where = _existing(state)
    test = os.path.join(where, f".hold-probe-{os.getpid()}")
    try:
        os.close(os.open(test, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        os.unlink(test)
    except OSError as exc:
        return "error", (f"{version}, but the state directory {where} is not writable "
                         f"({exc.strerror})")
    spec_text = f" (spec {spec_line})" if spec_line else ""
    written = f"state {state}" if where == os.path.abspath(state) else \
        f"state {state} (not made yet; {where})"
    return "ok", (f"{version}{spec_text}; {written} writable; "
                  f"{len(task_ids(state, ns))} task(s), {len(running)} runc container(s) "
                  f"in namespace {ns}")
