"""Mutators for fuzzing real archives and layers, and the client of the zygote that runs them.

``mutate(tar, rnd)`` returns ``(bytes, description)``: one of the mutations below, chosen and
placed by ``rnd`` (a seeded ``random.Random``), biased toward header blocks — a blob's bytes
are checked by its digest anyway, the headers are where a reader can go wrong. Mutations that
change a header field recompute its checksum (so that the field's own validation is what
gets tested), unless the checksum is the point.

:class:`Zygote` starts ``python -m tests.images.zygote`` and sends it one case at a time with
a time limit; a case that passes it is reported as ``timed_out`` (the child is killed).
"""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys
import tarfile

from tests.differ.rawtar import BLOCK, block, padded, pax, record

# --- where the headers are -------------------------------------------------------------------


def header_offsets(tar: bytes) -> list[int]:
    """Offsets of every header block (extended headers included), found by tarfile."""
    out: set[int] = set()
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as t:
        for m in t.getmembers():
            out.add(m.offset)
            out.add(m.offset_data - BLOCK)
    return sorted(o for o in out if 0 <= o <= len(tar) - BLOCK)


def _fix_checksum(b: bytearray, at: int) -> None:
    h = b[at:at + BLOCK]
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    b[at:at + BLOCK] = h


_FIELDS = {"mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "size": (124, 12),
           "mtime": (136, 12), "devmajor": (329, 8), "devminor": (337, 8)}
_NUMBERS = [b"77777777777\0", b"99999999\0", b"-1\0", b"0o17\0", b"1_0\0", b" \0 1 \0",
            b"\x80" + b"\xff" * 11, b"\xff" * 12, b"\x80\0\0\0\0\0\0\x01\0\0\0\0",
            b"\xc0" + b"\0" * 10 + b"\x01", b"\0\x31\x32", b"7" * 12, b"\x00" * 12]
_NAMES = [b"../../../../etc/passwd", b"/etc/shadow", b"a/../../x", b".", b"", b"a\0b",
          b"blobs/sha256/" + b"0" * 64, b"index.json", b"manifest.json", b"./oci-layout",
          b"x" * 100]
_BAD_PAX = [b"0 path=x\n", b"999 path=x\n", b"1x path=x\n", b"12 pathx\n", b"11 path=xy",
            b"-5 path=x\n", b"3 =\n", b"05 a=\n\n", b"\0\0x", b"99999999999999999999 a=b\n",
            record("uid", str(1 << 40)), record("gid", "-1"), record("size", "9" * 30),
            record("size", "-12"), record("size", str(1 << 40)), record("mtime", "1e9"),
            record("mtime", "-" + "9" * 25), record("atime", "."), record("path", "a\0b"),
            record("path", "../../../etc/passwd"), record("linkpath", "/etc/passwd"),
            record("GNU.sparse.major", "1"), record("LIBARCHIVE.xattr.user.x", "!!"),
            record("SCHILY.xattr.trusted.overlay.opaque", "y"), record("uid", " 12"),
            record("size", "0x10")]


def _at_header(tar: bytes, rnd, offs: list[int]) -> int:  # noqa: ANN001
    return rnd.choice(offs) if offs else 0


def mutate(tar: bytes, rnd) -> tuple[bytes, str]:  # noqa: ANN001 - random.Random
    """One seeded mutation of ``tar`` (see the module docstring)."""
    offs = header_offsets(tar)
    b = bytearray(tar)
    kind = rnd.choice(["flip", "flip-header", "field", "field", "type", "name", "pax", "pax",
                       "truncate", "truncate-header", "dup-header", "drop-block", "splice",
                       "swap", "huge-size", "zero-block", "longname", "link"])
    at = _at_header(tar, rnd, offs)
    if kind == "flip":
        for _ in range(rnd.randint(1, 8)):
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
        return bytes(b), kind
    if kind == "flip-header":
        i = at + rnd.randrange(BLOCK)
        b[i] ^= 1 << rnd.randrange(8)
        return bytes(b), f"{kind} byte {i}"
    if kind in ("field", "huge-size"):
        name = "size" if kind == "huge-size" else rnd.choice(sorted(_FIELDS))
        off, width = _FIELDS[name]
        value = (rnd.choice([b"77777777777\0", b"\x80" + (1 << 62).to_bytes(11, "big"),
                             b"\x80" + b"\x7f" * 11]) if kind == "huge-size"
                 else rnd.choice(_NUMBERS))
        b[at + off:at + off + width] = value[:width].ljust(width, b"\0")
        _fix_checksum(b, at)
        return bytes(b), f"{kind} {name}={value!r} at {at}"
    if kind == "type":
        t = rnd.choice(b"0123456789xgLKSDMVNA\0")
        b[at + 156] = t
        _fix_checksum(b, at)
        return bytes(b), f"type {chr(t)!r} at {at}"
    if kind == "name":
        name = rnd.choice(_NAMES)
        b[at:at + 100] = name[:100].ljust(100, b"\0")
        _fix_checksum(b, at)
        return bytes(b), f"name {name!r} at {at}"
    if kind == "pax":
        payload = b"".join(rnd.sample(_BAD_PAX, rnd.randint(1, 2)))
        size = rnd.choice([None, None, 1 << 21, len(payload) + 100000, 0])
        ext = pax(payload, size=size)
        return bytes(b[:at] + ext + b[at:]), f"pax {payload[:60]!r} size={size} at {at}"
    if kind == "truncate":
        n = rnd.randrange(len(b))
        return bytes(b[:n]), f"truncate at {n}"
    if kind == "truncate-header":
        n = max(0, at + rnd.choice([0, 1, 100, 511, 512, 513, 1024]))
        return bytes(b[:n]), f"truncate at {n}"
    if kind == "dup-header":
        to = _at_header(tar, rnd, offs)
        return bytes(b[:to] + b[at:at + BLOCK] + b[to:]), f"dup header {at} at {to}"
    if kind == "drop-block":
        return bytes(b[:at] + b[at + BLOCK:]), f"drop block {at}"
    if kind == "splice":
        nxt = [o for o in offs if o > at]
        end = nxt[0] if nxt else len(b)
        to = _at_header(tar, rnd, offs)
        return bytes(b[:to] + b[at:end] + b[to:]), f"splice {at}..{end} at {to}"
    if kind == "swap":
        other = _at_header(tar, rnd, offs)
        x, y = sorted((at, other))
        if x == y:
            return bytes(b), "swap (none)"
        hx, hy = bytes(b[x:x + BLOCK]), bytes(b[y:y + BLOCK])
        b[x:x + BLOCK], b[y:y + BLOCK] = hy, hx
        return bytes(b), f"swap {x} {y}"
    if kind == "zero-block":
        return bytes(b[:at] + bytes(BLOCK) + b[at:]), f"zero block at {at}"
    if kind == "longname":
        size = rnd.choice([5, 2 << 20, 1 << 40])
        ext = block("././@LongLink", "L", size=size) + padded(b"evil/../../x\0"[:size])
        return bytes(b[:at] + ext + b[at:]), f"GNU long name size {size} at {at}"
    target = rnd.choice(["/etc/passwd", "../../../../etc/passwd", "blobs/../../../../etc"])
    typ = rnd.choice(["1", "2"])
    ext = block(rnd.choice(["blobs/sha256/" + "1" * 64, "index.json", "manifest.json", "x"]),
                typ, linkname=target)
    return bytes(b[:at] + ext + b[at:]), f"link type {typ} -> {target} at {at}"


# --- the zygote ------------------------------------------------------------------------------
class Zygote:
    """The zygote child process (see tests/images/zygote.py)."""

    def __init__(self) -> None:
        e = dict(os.environ)
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        e["PYTHONPATH"] = os.pathsep.join([os.path.join(here, "src"), here,
                                           e.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.images.zygote"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=e,
                                     cwd=here)
        if self._line(60) != "ready":
            raise RuntimeError("the zygote did not start")

    def _line(self, timeout: float) -> str:
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise TimeoutError("the zygote did not answer")
        return self.proc.stdout.readline().decode().strip()  # type: ignore[union-attr]

    def run(self, steps: list[dict], env: dict[str, str], timeout: float) -> dict:
        req = {"steps": steps, "env": env, "timeout": timeout}
        self.proc.stdin.write((json.dumps(req) + "\n").encode())  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return json.loads(self._line(timeout + 60))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
