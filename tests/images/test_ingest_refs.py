"""Ingest refs of an import: the same for the same archive member in every run (so a repeat
resumes), different once the archive changes, and private to the run for a pipe."""

from __future__ import annotations

import os
import subprocess
import sys

from cargohold.images.archive import Member
from cargohold.images.ingest import ArchiveIngest, digest_ref
from cargohold.images.progress import Progress

DIGEST = "sha256:" + "ab" * 32


def _refs(source, lease="L1", name="layer0/layer.tar", size=10, expected=""):
    r = ArchiveIngest(None, lease, Progress(), source, source)  # type: ignore[arg-type]
    return r.ref_for(Member(name, "file", size), expected)


def test_a_known_digest_gives_the_same_ref_whatever_the_archive():
    assert _refs("a.tar", expected=DIGEST) == (digest_ref(DIGEST), True)
    assert _refs("-", lease="L2", expected=DIGEST) == (f"import-sha256-{'ab' * 32}", True)


def test_a_member_of_an_unchanged_file_keeps_its_ref(tmp_path):
    f = tmp_path / "docker.tar"
    f.write_bytes(b"x" * 100)
    ref, resumable = _refs(str(f))
    assert resumable and _refs(str(f), lease="L2") == (ref, True)
    assert _refs(str(f), name="layer1/layer.tar")[0] != ref
    assert _refs(str(f), size=11)[0] != ref
    os.utime(f, ns=(1, 1))  # changed (or replaced): its partial ingests are not this one's
    assert _refs(str(f))[0] != ref


def test_a_directory_member_takes_its_own_files_identity(tmp_path):
    (tmp_path / "layer0").mkdir()
    member = tmp_path / "layer0" / "layer.tar"
    member.write_bytes(b"y" * 10)
    ref, resumable = _refs(str(tmp_path))
    assert resumable and _refs(str(tmp_path))[0] == ref
    member.write_bytes(b"z" * 10)
    os.utime(member, ns=(2, 2))
    assert _refs(str(tmp_path))[0] != ref


def test_a_pipe_has_no_identity_so_its_refs_are_the_runs_own():
    code = ("import sys; sys.path[:0] = %r; from tests.images.test_ingest_refs import _refs; "
            "print(_refs('-', lease=sys.argv[1]))" % sys.path)
    outs = [subprocess.run([sys.executable, "-c", code, lease], input=b"", capture_output=True,
                           check=True).stdout.decode() for lease in ("L1", "L2")]
    assert "False" in outs[0] and "L1" in outs[0] and "L2" in outs[1]
