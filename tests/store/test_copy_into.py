"""``copy_into`` on a real LocalStore: a failed copy closes its writer and frees the ingest
lock with its bytes kept; a verified resume keeps only bytes that are the source's start."""

from __future__ import annotations

import io
import os

import pytest

from cargohold.errors import FailedPrecondition
from cargohold.store.api import ResumeMismatch, copy_into
from cargohold.store.local import LocalStore
from cargohold.store.testing import digest_of, read_all


class Stream(io.RawIOBase):
    """A pipe-like source: no seeking; optionally fails after ``fail_at`` bytes."""

    def __init__(self, data: bytes, fail_at: int = -1, exc: BaseException | None = None):
        self._b = io.BytesIO(data)
        self._fail_at = fail_at
        self._exc = exc

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if 0 <= self._fail_at <= self._b.tell():
            raise self._exc
        n = len(b) if self._fail_at < 0 else min(len(b), self._fail_at - self._b.tell())
        return self._b.readinto(memoryview(b)[:n])


@pytest.fixture
def store(tmp_path):
    return LocalStore(str(tmp_path / "content"))


@pytest.mark.parametrize("exc", [OSError(5, "Input/output error"), KeyboardInterrupt()],
                         ids=["EIO", "Ctrl-C"])
def test_a_failed_copy_closes_the_writer_and_frees_the_lock(store, exc):
    data = os.urandom(3 << 20)
    w = store.writer("r", total=len(data))
    with pytest.raises(type(exc)):
        copy_into(w, Stream(data, fail_at=2 << 20, exc=exc), size=len(data))
    with pytest.raises(FailedPrecondition, match="closed"):
        w.write(b"x")
    assert store.status("r").holder == ""
    w2 = store.writer("r", total=len(data))  # the lock is free: this would be Unavailable
    assert w2.status().offset == 2 << 20  # what was written is kept for the resume
    assert copy_into(w2, Stream(data), size=len(data), expected=digest_of(data),
                     verify_resumed=True) == digest_of(data)
    assert read_all(store, digest_of(data)) == data


def test_a_verified_resume_keeps_a_true_start_and_reports_it(store):
    data = os.urandom(5 << 20)
    w = store.writer("r")
    w.write(data[: 3 << 20])
    w.close()
    seen, kept = [], []
    got = copy_into(store.writer("r"), Stream(data), verify_resumed=True, progress=seen.append,
                    kept=kept.append)
    assert got == digest_of(data) and sum(seen) == len(data) and kept == [3 << 20]


def test_a_verified_resume_restarts_a_seekable_source_whose_start_differs(store):
    data = os.urandom(2 << 20)
    w = store.writer("r")
    w.write(b"\0" * (1 << 20))  # a torn tail: zeros where the data should be
    w.close()
    kept = []
    assert copy_into(store.writer("r"), io.BytesIO(data), verify_resumed=True,
                     kept=kept.append) == digest_of(data)
    assert kept == [0]
    assert read_all(store, digest_of(data)) == data


def test_a_verified_resume_of_a_stream_whose_start_differs_discards_and_says_so(store):
    data = os.urandom(2 << 20)
    w = store.writer("r")
    w.write(b"\0" * (1 << 20))
    w.close()
    with pytest.raises(ResumeMismatch, match="not the start of this source") as err:
        copy_into(store.writer("r"), Stream(data), verify_resumed=True)
    assert "again" in err.value.hint
    assert store.status("r").offset == 0 and store.status("r").holder == ""
    assert copy_into(store.writer("r"), Stream(data), verify_resumed=True) == digest_of(data)
