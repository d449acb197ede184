"""A zygote for many short `hold` runs: import cargohold once, fork a child per case.

Run as ``python -m tests.images.zygote``; it reads one JSON request per line on stdin and
answers one JSON line on stdout. A request is ``{"steps": [...], "env": {...}, "timeout": s}``;
each step is ``{"argv": [...]}`` (the real ``hold`` entry point, in the child, with its own
stdout/stderr files) or ``{"apply": {...}}`` (one layer apply, see :func:`_apply`). The child
runs the steps in order in a fresh process group; the zygote kills the group when the whole
request passes its ``timeout`` and answers ``{"timed_out": true}`` — a hang fails the case, it
does not stall the run. Otherwise the answer is ``{"results": [{"code", "stdout", "stderr"}
or the apply outcome, ...]}``.

Forking an already-imported interpreter makes a case cost milliseconds instead of the ~0.3 s a
new `hold` process needs, while each case still gets a real process: its own exit code, file
descriptors, threads and signal handling, and nothing it leaks survives it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import traceback


def _apply(spec: dict) -> dict:
    """Apply one layer: ``{"blob", "media_type", "digest", "mode": bind|overlay, "root",
    "lowers", "work"}``; the outcome names the exception class and whether it is a
    CargoholdError, with its exit code and message."""
    from cargohold.differ.apply import apply
    from cargohold.errors import CargoholdError
    from cargohold.types import Descriptor, Mount

    if spec["mode"] == "bind":
        mounts = [Mount("bind", spec["root"], ("rbind",))]
    else:
        opts = [f"upperdir={spec['root']}", f"workdir={spec['work']}"]
        if spec["lowers"]:
            opts.insert(0, "lowerdir=" + ":".join(spec["lowers"]))
        mounts = [Mount("overlay", "overlay", tuple(opts))]
    desc = Descriptor(spec["media_type"], spec["digest"], 0)
    try:
        with open(spec["blob"], "rb") as r:
            apply(desc, mounts, reader=r, devices=False, warnings=[])
    except CargoholdError as exc:
        return {"ok": False, "class": type(exc).__name__, "cargohold": True,
                "exit_code": exc.exit_code, "message": exc.message}
    except BaseException as exc:  # noqa: BLE001 - reported, the test fails on it
        return {"ok": False, "class": type(exc).__name__, "cargohold": False,
                "message": "".join(traceback.format_exception(exc))}
    return {"ok": True}


def _redirect(tmp: str, n: int) -> tuple[str, str]:
    out, err = os.path.join(tmp, f"{n}.out"), os.path.join(tmp, f"{n}.err")
    sys.stdout.flush()
    sys.stderr.flush()
    with open(out, "wb") as o, open(err, "wb") as e:
        os.dup2(o.fileno(), 1)
        os.dup2(e.fileno(), 2)
    return out, err


def _collected(out: str, err: str) -> dict:
    sys.stdout.flush()
    sys.stderr.flush()
    with open(out, "rb") as o, open(err, "rb") as e:
        return {"stdout": o.read().decode("utf-8", "replace"),
                "stderr": e.read().decode("utf-8", "replace")}


def _run_argv(argv: list[str], tmp: str, n: int) -> dict:
    from cargohold.cli.main import main

    files = _redirect(tmp, n)
    code = 0
    t0 = time.monotonic()
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a crash of the entry point itself
        traceback.print_exc()
        code = 99
    return {"code": code, "seconds": time.monotonic() - t0, **_collected(*files)}


def _child(req: dict, answer: str) -> None:
    os.setpgid(0, 0)
    sys.stdout = sys.__stdout__  # the zygote pointed it at stderr
    os.environ.update(req.get("env") or {})
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    results = []
    with tempfile.TemporaryDirectory(prefix="zygote-") as tmp:
        for n, step in enumerate(req["steps"]):
            if "argv" in step:
                results.append(_run_argv(step["argv"], tmp, n))
            else:
                files = _redirect(tmp, n)
                results.append({**_apply(step["apply"]), **_collected(*files)})
    with open(answer, "w") as f:
        json.dump({"results": results}, f)


def _serve_one(req: dict) -> dict:
    fd, answer = tempfile.mkstemp(prefix="zygote-answer-")
    os.close(fd)
    try:
        pid = os.fork()
        if pid == 0:  # the child: never return into the zygote's loop
            code = 0
            try:
                _child(req, answer)
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
                code = 98
            os._exit(code)
        deadline = time.monotonic() + float(req.get("timeout", 30))
        t0 = time.monotonic()
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"timed_out": True, "seconds": time.monotonic() - t0}
            time.sleep(0.002)
        with open(answer) as f:
            text = f.read()
        if not text:
            return {"crashed": os.waitstatus_to_exitcode(status),
                    "seconds": time.monotonic() - t0}
        return {**json.loads(text), "seconds": time.monotonic() - t0}
    finally:
        os.unlink(answer)


def _warm() -> None:
    """Import every cargohold module (and the heavy libraries), so that children start with
    them loaded: a module a case would import lazily costs that case milliseconds."""
    import importlib
    import pkgutil

    import cargohold

    for name in ("lmdb", "isal.igzip", "zstandard", "lzma", "click"):
        importlib.import_module(name)
    for mod in pkgutil.walk_packages(cargohold.__path__, "cargohold."):
        if mod.name == "cargohold.__main__":
            continue
        try:
            importlib.import_module(mod.name)
        except Exception:  # noqa: BLE001, S112 - an optional backend: the case imports it
            continue


def main() -> None:
    _warm()

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write on the answer channel
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        out.write(json.dumps(_serve_one(json.loads(line))) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
