"""The progress reporter (every mode) and docker-style name normalisation."""

from __future__ import annotations

import io
import json
import threading

import pytest

from cargohold.errors import InvalidArgument
from cargohold.images import refs
from cargohold.images.progress import Progress


def _drive(p: Progress) -> None:
    p.start("a", "layer a", 3000)
    threads = [threading.Thread(target=lambda: [p.advance("a", 10) for _ in range(100)])
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.advance("never-started", 5)
    p.note("a note")
    p.done("a")
    p.done("a")  # twice: ignored
    p.close()
    p.close()


def test_plain_json_none_and_bars():
    out = io.StringIO()
    _drive(Progress.open("plain", out))
    assert out.getvalue().splitlines()[0] == "a note"
    assert out.getvalue().splitlines()[1].startswith("layer a: done 3.0 kB in ")
    out = io.StringIO()
    _drive(Progress.open("json", out))
    events = [json.loads(x) for x in out.getvalue().splitlines()]
    assert events[0]["event"] == "start" and events[0]["total"] == 3000
    assert events[-1] == {**events[-1], "event": "done", "current": 3000, "status": "done"}
    assert any(e["event"] == "note" and e["text"] == "a note" for e in events)
    out = io.StringIO()
    _drive(Progress.open("none", out))
    assert out.getvalue() == ""
    out = io.StringIO()
    _drive(Progress.open("bars", out))
    assert "\x1b[2K" in out.getvalue() and "layer a: done" in out.getvalue()
    out = io.StringIO()
    assert Progress.open("auto", out).mode == "none"  # not a terminal
    with pytest.raises(ValueError):
        Progress.open("fancy")


@pytest.mark.parametrize("ref,want", [
    ("alpine", "docker.io/library/alpine:latest"),
    ("alpine:3.19", "docker.io/library/alpine:3.19"),
    ("team/app:1", "docker.io/team/app:1"),
    ("index.docker.io/library/x:1", "docker.io/library/x:1"),
    ("localhost:5000/x", "localhost:5000/x:latest"),
    ("ghcr.io/a/b@sha256:" + "a" * 64, "ghcr.io/a/b@sha256:" + "a" * 64),
    ("example.com/team/busy:1", "example.com/team/busy:1"),
])
def test_normalize(ref, want):
    assert refs.normalize(ref) == want


@pytest.mark.parametrize("bad", ["", "Upper:1", "a//b", "x@sha256:zz", "a:b:c"])
def test_normalize_refuses(bad):
    with pytest.raises(InvalidArgument):
        refs.normalize(bad)
