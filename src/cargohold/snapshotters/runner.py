"""The seam in front of external commands (``zfs``, ``dmsetup``, ``mkfs.*``, ``blkdiscard``).

Backends that drive a kernel feature through its command-line tool never call
:mod:`subprocess` themselves: they hold a :class:`Runner` and call ``runner.run(argv)``. Tests
swap in :class:`FakeRunner`, which records every argv and answers from a script, so the exact
command sequence of each operation can be asserted on a machine that lacks the feature.

Contract of :meth:`Runner.run`:

- ``argv`` is executed without a shell; the result carries stdout, stderr and the exit status.
- a non-zero exit raises :class:`CommandFailed` (a FailedPrecondition) whose message names the
  command, the exit status and stderr; ``check=False`` returns the result instead, for callers
  that branch on "does not exist".
- a command that is not installed fails as exit status 127 (as a shell would report it).
- a command that runs longer than ``timeout`` seconds is killed and raises Unavailable: a
  hung tool must not hold the backend's write lock forever.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence

from cargohold._record import field, record
from cargohold.errors import FailedPrecondition, Unavailable

DEFAULT_TIMEOUT = 600.0  # mkfs of a large base device with eager inode tables takes minutes


@record(frozen=True)
class Result:
    """What one command printed and how it ended."""

    argv: tuple[str, ...]
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def quote(argv: Sequence[str]) -> str:
    """``argv`` as a shell command line a user can paste."""
    return " ".join(shlex.quote(a) for a in argv)


class CommandFailed(FailedPrecondition):
    """An external command exited non-zero; ``result`` holds its argv, status and output."""

    def __init__(self, result: Result, *, hint: str | None = None) -> None:
        err = result.stderr.strip() or result.stdout.strip() or "(no output)"
        super().__init__(f"command {quote(result.argv)}: exit status {result.returncode}: {err}",
                         hint=hint)
        self.result = result


class Runner:
    """Runs commands for real with :mod:`subprocess`."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout

    def run(self, argv: Sequence[str], *, check: bool = True) -> Result:
        """Run ``argv``; see the module docstring for what fails how."""
        args = tuple(argv)
        try:
            p = subprocess.run(args, capture_output=True, text=True, timeout=self.timeout,
                               stdin=subprocess.DEVNULL)
            res = Result(args, p.returncode, p.stdout, p.stderr)
        except FileNotFoundError:
            res = Result(args, 127, "", f"{args[0]}: command not found")
        except subprocess.TimeoutExpired:
            raise Unavailable(f"command {quote(args)}: no answer after {self.timeout:g}s",
                              hint="the device or pool may be hung; check dmesg") from None
        if check and not res.ok:
            raise CommandFailed(res)
        return res


@record
class Rule:
    """One scripted answer of :class:`FakeRunner`: argv starting with ``prefix``."""

    prefix: tuple[str, ...]
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    times: int | None = None  # None: answer every time; n: answer the next n matches only


@record
class FakeRunner(Runner):
    """A runner for tests: records each argv in :attr:`calls` and answers from :attr:`rules`.

    The first rule (in the order added by :meth:`on`) whose prefix matches and that has answers
    left decides; a command no rule matches succeeds with empty output.
    """

    rules: list[Rule] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    timeout: float = DEFAULT_TIMEOUT

    def on(self, *prefix: str, stdout: str = "", stderr: str = "", returncode: int = 0,
           times: int | None = None) -> FakeRunner:
        """Script the answer to commands starting with ``prefix``; returns self for chaining."""
        self.rules.append(Rule(tuple(prefix), returncode, stdout, stderr, times))
        return self

    def fail(self, *prefix: str, stderr: str = "failed", returncode: int = 1,
             times: int | None = None) -> FakeRunner:
        """Script a failure of commands starting with ``prefix``."""
        return self.on(*prefix, stderr=stderr, returncode=returncode, times=times)

    def run(self, argv: Sequence[str], *, check: bool = True) -> Result:
        """Record ``argv`` and answer it from the script."""
        args = tuple(argv)
        self.calls.append(list(args))
        res = Result(args)
        for rule in self.rules:
            if args[:len(rule.prefix)] == rule.prefix and rule.times != 0:
                if rule.times is not None:
                    rule.times -= 1
                res = Result(args, rule.returncode, rule.stdout, rule.stderr)
                break
        if check and not res.ok:
            raise CommandFailed(res)
        return res

    def reset(self) -> None:
        """Forget the recorded calls (the rules stay)."""
        self.calls.clear()
