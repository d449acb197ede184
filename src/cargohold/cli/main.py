"""The ``hold`` command: the entry point, and errors mapped to exit codes.

A hot command (:mod:`cargohold.cli.hot`) given plainly runs through the fast parser
(:mod:`cargohold.cli.fast`) without importing click; every other command line goes to the click
group in :mod:`cargohold.cli.root`, whose subcommand modules are imported only when used. An
error prints ``hold: <message>`` and its hint; ``--debug`` adds the traceback (an internal
error asks for it).
"""

from __future__ import annotations

import io
import os
import sys

from cargohold.errors import CargoholdError

_debug = False  # --debug: tracebacks for errors (set while parsing, read by main())


def set_debug(value: bool) -> None:
    global _debug
    _debug = _debug or value


def __getattr__(name: str) -> object:
    if name == "cli":  # the click group, for tests and tools that drive click directly
        from cargohold.cli.root import cli

        return cli
    raise AttributeError(name)


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _run(argv: list[str] | None) -> None:
    from cargohold.cli import fast

    parsed = fast.parse(sys.argv[1:] if argv is None else argv)
    if parsed is not None:
        set_debug(bool(parsed.globals["debug"]))
        fast.run(parsed)
        return
    import click

    from cargohold.cli.root import cli

    try:
        cli.main(args=argv, prog_name="hold", standalone_mode=False)
    except click.exceptions.Abort:
        _say("hold: aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code or 1)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``hold`` console script."""
    global _debug
    _debug = False
    from cargohold import notices
    from cargohold.cli import signals

    # What the library wants a user to know while it works (a long lock wait, say).
    notices.set_notice(lambda msg: _say(f"hold: {msg}"))
    signals.install()
    _own_stdout()
    try:
        _run(argv)
    except CargoholdError as exc:
        _fail(exc, exc.exit_code)
    except BrokenPipeError:
        # `hold content get X | head` closes the pipe early: not an error worth a trace.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        _say("hold: interrupted")
        sys.exit(130)
    except signals.Terminated:
        _say("hold: terminated")
        sys.exit(signals.EXIT_CODE)
    except OutputError as exc:
        # What standard output would not take (a full disk, /dev/full): said as such, once.
        from cargohold._oserror import stream_error

        _fail(stream_error(exc.oserror, 1, "standard output"), 1)
    except Exception as exc:  # noqa: BLE001 - a bug: say so plainly, trace on request
        _internal(exc)
    sys.exit(0)


def _fail(err: CargoholdError, code: int) -> None:
    """Say ``err`` (its message, its hint; the traceback with --debug) and exit ``code``."""
    _trace()
    _say(f"hold: {err.message}")
    if err.hint:
        _say(f"hint: {err.hint}")
    sys.exit(code)


def _internal(exc: BaseException) -> None:
    _trace()
    _say(f"hold: internal error: {type(exc).__name__}: {exc}")
    if not _debug:
        _say("hint: run it again with 'hold --debug' for the traceback, and report it")
    sys.exit(1)


class OutputError(OSError):
    """A write to standard output failed (``oserror`` says why): the user's output, not a
    bug. A command that writes its own output may catch it as the OSError it is (``images
    export -`` names what it was exporting); otherwise ``main`` reports it.
    """

    def __init__(self, oserror: OSError) -> None:
        super().__init__(oserror.errno, oserror.strerror)
        self.oserror = oserror


class _Stdout(io.RawIOBase):
    """Descriptor 1 under ``sys.stdout``, whose write errors say they are the output's (an
    OSError there carries no path, and would read as an internal error).
    """

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return 1

    def isatty(self) -> bool:
        return os.isatty(1)

    failed = False

    def write(self, b: bytes | memoryview) -> int:  # type: ignore[override]
        if self.failed:
            return len(b)  # reported once already; the interpreter's last flush says nothing
        try:
            return os.write(1, b)
        except (BrokenPipeError, InterruptedError, BlockingIOError):
            raise  # a closed pipe is main's quiet exit; the others io retries itself
        except OSError as exc:
            self.failed = True
            raise OutputError(exc) from exc


def _own_stdout() -> None:
    """Put :class:`_Stdout` under ``sys.stdout`` (same encoding and buffering)."""
    out = sys.stdout
    try:
        if out is None or out.fileno() != 1:
            return
    except (OSError, ValueError, AttributeError):
        return  # no real descriptor 1 (captured by a test, say): leave it
    out.flush()
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(_Stdout()), encoding=out.encoding,
                                  errors=out.errors, line_buffering=out.line_buffering,
                                  write_through=getattr(out, "write_through", False))


def _trace() -> None:
    """With --debug, the traceback of the exception being handled, on stderr."""
    if _debug:
        import traceback

        traceback.print_exc(file=sys.stderr)
