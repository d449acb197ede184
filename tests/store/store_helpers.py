"""Shared pieces of the crash and concurrency tests: spawn the child helper, check invariants."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys

from cargohold.errors import AlreadyExists
from cargohold.store.api import copy_into
from cargohold.store.local import ALGORITHMS, LocalStore

CHILD = os.path.join(os.path.dirname(__file__), "_child.py")


def spawn(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, CHILD, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, CHILD, *args], capture_output=True, text=True,
                          timeout=timeout)


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def assert_blobs_verify(store: LocalStore) -> list[str]:
    """Every file under blobs/ hashes to its name and is read-only; return the digests."""
    found = []
    for alg in ALGORITHMS:
        d = os.path.join(store.root, "blobs", alg)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            path = os.path.join(d, name)
            with open(path, "rb") as f:
                got = hashlib.file_digest(f, alg).hexdigest()
            assert got == name, f"blob {alg}:{name} hashes to {got}"
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o444, f"blob {name} is writable"
            found.append(f"{alg}:{name}")
    return found


def finish_ingest(store: LocalStore, ref: str, src: str) -> str:
    """Resume ``ref`` from ``src`` and commit; an existing blob counts as done."""
    digest = file_digest(src)
    try:
        w = store.writer(ref)
    except AlreadyExists:
        return digest
    with open(src, "rb") as f:
        try:
            return copy_into(w, f, size=os.path.getsize(src), expected=digest)
        except AlreadyExists:
            return digest
