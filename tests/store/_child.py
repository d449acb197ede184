"""Child-process helper for the crash and concurrency tests (run as a script, never imported).

    python _child.py MODE ROOT ARGS...

Each mode is one real process doing store work so the parent can kill it, race it, or make
one step of its commit crash. Exit 0 = done, 3 = an expected error was printed, anything else
is a failure (the parent prints stderr).
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time

from cargohold.errors import AlreadyExists, CargoholdError, NotFound, Unavailable
from cargohold.store import ingest as ingest_mod
from cargohold.store.api import copy_into
from cargohold.store.local import LocalStore


class PausingReader:
    """A file that stops (prints ``ready`` and sleeps) after ``pause_at`` bytes."""

    def __init__(self, path: str, pause_at: int) -> None:
        self.f = open(path, "rb", buffering=0)  # noqa: SIM115
        self.pause_at = pause_at
        self.done = 0

    def seek(self, off: int) -> int:
        self.done = off
        return self.f.seek(off)

    def readinto(self, b) -> int:
        if self.done >= self.pause_at:
            print("ready", flush=True)
            time.sleep(3600)
        n = self.f.readinto(memoryview(b)[: self.pause_at - self.done])
        self.done += n
        return n


def crash_after(obj, name: str, *, before: bool = False, when=None) -> None:
    """Replace ``obj.name`` so the process dies (like kill -9) around that one step (only
    for calls whose arguments ``when`` accepts, when given)."""
    real = getattr(obj, name)

    def step(*a, **kw):
        if when is not None and not when(*a):
            return real(*a, **kw)
        if before:
            os._exit(137)
        real(*a, **kw)
        os._exit(137)

    setattr(obj, name, step)


def fail(obj, name: str, *, when=None) -> None:
    """Replace ``obj.name`` with a step that raises EIO (for calls ``when`` accepts)."""
    real = getattr(obj, name)

    def step(*a, **kw):
        if when is not None and not when(*a):
            return real(*a, **kw)
        raise OSError(5, "Input/output error (injected)")

    setattr(obj, name, step)


def _blob_dir(path: str) -> bool:
    """The fsync of the directory the blob is renamed into (not of the directories made on
    the way to it, which the first commit makes durable first)."""
    return path.endswith(os.path.join("blobs", "sha256"))


def commit_crash(root: str, ref: str, src: str, step: str) -> int:
    store = LocalStore(root)
    data = open(src, "rb").read()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    w = store.writer(ref)
    w.write(data)
    if step == "before-rename":
        crash_after(ingest_mod.os, "rename", before=True)
    elif step == "after-rename":
        crash_after(ingest_mod.os, "rename")
    elif step == "after-dir-fsync":
        crash_after(ingest_mod._fsutil, "fsync_dir", when=_blob_dir)
    elif step == "mid-ingest-removal":
        crash_after(ingest_mod._fsutil, "remove_tree", before=True)
    elif step == "after-ingest-removal":
        crash_after(ingest_mod, "remove_ingest_dir")
    elif step == "rename-fails":
        fail(ingest_mod.os, "rename")
    elif step == "dir-fsync-fails":
        fail(ingest_mod._fsutil, "fsync_dir", when=_blob_dir)
    else:
        raise SystemExit(f"unknown step {step}")
    try:
        w.commit(len(data), digest)
    except CargoholdError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    return 0


def open_writer(store: LocalStore, ref: str, **kw):
    """Open ``ref``, retrying while another process holds it (as containerd's clients do)."""
    delay = 0.005
    while True:
        try:
            return store.writer(ref, **kw)
        except Unavailable:
            time.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 0.2)


def ingest_many(root: str, *srcs: str) -> int:
    store = LocalStore(root)
    for src in srcs:
        data = open(src, "rb").read()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        # Same content under the same ref in every process: the ref lock serialises them.
        ref = f"shared-{os.path.basename(src)}"
        try:
            w = open_writer(store, ref, expected=digest)
        except AlreadyExists:
            continue
        with open(src, "rb") as f:
            try:
                copy_into(w, f, size=len(data), expected=digest)
            except AlreadyExists:
                pass
        # And again under a ref of its own, so two commits of one digest race.
        w = store.writer(f"own-{os.getpid()}-{os.path.basename(src)}")
        w.write(data)
        try:
            w.commit(len(data), digest)
        except AlreadyExists:
            pass
    return 0


def race_commit(root: str, markers: str, seconds: str) -> int:
    store = LocalStore(root)
    data = b"raced content"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    marker = os.path.join(markers, str(os.getpid()))
    deadline = time.monotonic() + float(seconds)
    n = 0
    while time.monotonic() < deadline:
        w = store.writer(f"race-{os.getpid()}")
        w.write(data)
        # The hook stands for the metadata record: written under the digest lock.
        w.commit(then=lambda d, existed: open(marker, "w").close())
        with open(store.blob_path(digest), "rb") as f:  # the record's blob must be there
            assert hashlib.sha256(f.read()).hexdigest() == digest.split(":")[1]
        os.unlink(marker)  # the record goes away (e.g. an image was deleted)
        n += 1
    print(n)
    return 0


def race_delete(root: str, markers: str, seconds: str) -> int:
    store = LocalStore(root)
    digest = "sha256:" + hashlib.sha256(b"raced content").hexdigest()
    deadline = time.monotonic() + float(seconds)
    n = 0
    while time.monotonic() < deadline:
        try:
            # GC: delete only if no record refers to the blob, decided under the lock.
            store.delete(digest, check=lambda d: not os.listdir(markers))
            n += 1
        except NotFound:
            pass
    print(n)
    return 0


def main() -> int:
    mode, root, *args = sys.argv[1:]
    if mode == "ingest-pause":
        ref, src, pause_at = args
        store = LocalStore(root)
        copy_into(store.writer(ref), PausingReader(src, int(pause_at)))
        return 1  # never reached: the parent kills us while paused
    if mode == "ingest":
        ref, src = args
        with open(src, "rb") as f:
            copy_into(LocalStore(root).writer(ref), f)
        return 0
    if mode == "commit-crash":
        return commit_crash(root, *args)
    if mode == "ingest-many":
        return ingest_many(root, *args)
    if mode == "race-commit":
        return race_commit(root, *args)
    if mode == "race-delete":
        return race_delete(root, *args)
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main())
