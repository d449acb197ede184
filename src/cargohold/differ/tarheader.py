r"""One tar header block and the PAX records that extend it: pure, strict parsing.

The reader (:mod:`cargohold.differ.tarread`) calls these on every entry of every layer and
image archive; nothing here does I/O. Every problem raises :class:`HeaderError` with the text
the user will read (the reader adds the layer or archive and the entry).

What a header must satisfy (what Go's ``archive/tar`` — so containerd — requires, and a few
bounds of our own so that no value can reach a system call it overflows):

==================  =========================================================================
checksum            the unsigned or the signed sum of the block, as octal in bytes 148-155
numeric fields      octal digits padded with spaces or NULs, or base-256 (GNU/star); nothing
                    else (no signs, no ``0o``, no ``_``)
mode                0 .. 0o7777777
uid, gid            0 .. 4294967294 (``uid_t``; 4294967295 means "unchanged" to chown)
size                0 .. 2**63-1; ignored for header-only types (hardlinks, symlinks,
                    devices, directories, fifos), as Go ignores it: they carry no data
mtime, atime        whole seconds such that the nanoseconds fit in 64 bits (before 1970 is
                    allowed, as in PAX)
devmajor, devminor  0 .. 2**32-1
PAX record          ``<len> <key>=<value>\\n``: ``len`` decimal digits, counting the whole
                    record, at least 5, not running past the header; a non-empty key; no NUL
                    in keys nor in ``path``/``linkpath``/``uname``/``gname``; NUL padding
                    only after the last record
PAX numbers         ``size``, ``uid``, ``gid``: decimal digits in the bounds above; times:
                    ``[-]<digits>[.<digits>]``
==================  =========================================================================

Extended headers (``x``, ``g``, GNU ``L``/``K``) are at most :data:`MAX_META` bytes. A second
``x`` before an entry replaces the first and GNU long names win over PAX paths (Go's order).
"""

from __future__ import annotations

import base64
from urllib.parse import unquote_to_bytes

from cargohold._record import field, record

BLOCK = 512
MAX_META = 1 << 20  # largest PAX / GNU long-name payload we accept (Go uses the same bound)
MAX_MODE = 0o7777777
MAX_ID = (1 << 32) - 2
MAX_SIZE = (1 << 63) - 1
MAX_DEV = (1 << 32) - 1
MAX_TIME_S = (1 << 63) // 1_000_000_000 - 1  # nanoseconds must fit a signed 64-bit value

REG, LNK, SYM, CHR, BLK, DIR, FIFO = "0", "1", "2", "3", "4", "5", "6"
REGULAR = frozenset("0\0" "7")
#: types that never carry data, whatever their size field says (Go's isHeaderOnlyType)
HEADER_ONLY = frozenset("123456")
#: extended headers: their data describes the next entry
META = {"x": "PAX", "g": "PAX global", "L": "GNU long name", "K": "GNU long link"}

_OCTAL = b"01234567"
_DIGITS = b"0123456789"
_PAD = b" \0"


class HeaderError(ValueError):
    """A header or an extended header is malformed; the message is the problem."""

    def __init__(self, problem: str, hint: str | None = None) -> None:
        super().__init__(problem)
        self.hint = hint
        self.entry: str | None = None  # the header's name, when it got that far


@record(slots=True)
class Entry:
    """One tar entry with its extended headers folded in.

    ``type`` is the raw type flag, except that the regular-file flags (``0``, NUL, ``7``) read
    as :data:`REG` (or :data:`DIR` for a pre-POSIX name ending in ``/``). ``data`` is the
    number of data bytes that follow the header (0 for header-only types).
    """

    name: str
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    atime_ns: int | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)
    data: int = 0


def _bounded(v: int, what: str, lo: int, hi: int) -> int:
    if v < lo:
        raise HeaderError(f"{what} {v} is negative" if lo == 0 else
                          f"{what} {v} is out of range (at least {lo})")
    if v > hi:
        raise HeaderError(f"{what} {v} is out of range (at most {hi})")
    return v


def number(f: bytes, what: str) -> int:
    """An octal or base-256 numeric field (signed: the caller bounds it)."""
    if f[:1] and f[0] & 0x80:  # base-256: two's complement, big-endian, flag bit aside
        v = int.from_bytes(f, "big") & ((1 << (len(f) * 8 - 1)) - 1)
        if f[0] & 0x40:
            v -= 1 << (len(f) * 8 - 1)
        return v
    s = f.strip(_PAD)
    if not s:
        return 0
    if s.translate(None, _OCTAL):  # anything but octal digits (NULs inside included)
        raise HeaderError(f"{what} field {s.decode('latin-1')!r} is not an octal number")
    return int(s, 8)


def checksum_ok(b: bytes) -> bool:
    """Whether a 512-byte block carries a valid tar header checksum."""
    if len(b) != BLOCK:
        return False
    s = b[148:156].strip(_PAD)
    if not s or s.translate(None, _OCTAL):
        return False
    want = int(s, 8)
    rest = b[:148] + b[156:]
    total = sum(rest) + 256  # the checksum field counts as eight spaces
    if want == total:
        return True
    return want == total - 256 * sum(1 for x in rest if x > 127)  # signed (old Sun tar)


def _cstr(f: bytes) -> str:
    return f.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def parse_header(b: bytes) -> Entry:
    """The entry a 512-byte header block describes; raise HeaderError when it is malformed.

    The error's ``entry`` is the block's name field, even when the checksum is wrong (a
    damaged header usually keeps its name: it says where the damage is).
    """
    name = _cstr(b[0:100])
    if b[257:263] == b"ustar\0" and b[345]:  # POSIX prefix field (not in GNU headers)
        name = _cstr(b[345:500]) + "/" + name
    t = chr(b[156]) if b[156] else "\0"
    try:
        if not checksum_ok(b):
            raise HeaderError("checksum mismatch (not a tar stream, or corrupt)")
        size = _bounded(number(b[124:136], "size"), "size", 0, MAX_SIZE)
        mtime = _bounded(number(b[136:148], "mtime"), "mtime", -MAX_TIME_S, MAX_TIME_S)
        e = Entry(name=name, type=t,
                  mode=_bounded(number(b[100:108], "mode"), "mode", 0, MAX_MODE),
                  uid=_bounded(number(b[108:116], "uid"), "uid", 0, MAX_ID),
                  gid=_bounded(number(b[116:124], "gid"), "gid", 0, MAX_ID), size=size,
                  mtime_ns=mtime * 1_000_000_000, linkname=_cstr(b[157:257]))
        if t in (CHR, BLK):
            e.devmajor = _bounded(number(b[329:337], "devmajor"), "devmajor", 0, MAX_DEV)
            e.devminor = _bounded(number(b[337:345], "devminor"), "devminor", 0, MAX_DEV)
    except HeaderError as exc:
        exc.entry = name or None
        raise
    return e


def parse_pax(data: bytes) -> dict[str, bytes]:
    """PAX records (``<len> <key>=<value>`` and a newline) into raw byte values (strict)."""
    out: dict[str, bytes] = {}
    pos, end, i = 0, len(data), 0
    while pos < end:
        i += 1
        if data[pos] == 0:
            if data[pos:].strip(b"\0"):
                raise HeaderError(f"record {i} starts with a NUL byte")
            break  # NUL padding after the last record
        sp = data.find(b" ", pos, pos + 21)
        if sp < 0:
            raise HeaderError(f"record {i} has no length")
        digits = data[pos:sp]
        if not digits or digits.translate(None, _DIGITS):
            raise HeaderError(f"record {i}: length {digits.decode('latin-1')!r} is not a "
                              "decimal number")
        length = int(digits)
        if length < sp - pos + 4:  # "<len> k=\n" is the shortest record there is
            raise HeaderError(f"record {i}: length {length} is too short")
        if pos + length > end:
            raise HeaderError(f"record {i}: length {length} runs past the end of the "
                              f"{end}-byte header")
        if data[pos + length - 1] != 0x0A:
            raise HeaderError(f"record {i} does not end with a newline")
        k, eq, v = data[sp + 1:pos + length - 1].partition(b"=")
        if not eq:
            raise HeaderError(f"record {i} has no '='")
        if not k or b"\0" in k:
            raise HeaderError(f"record {i}: the key is empty or holds a NUL byte")
        key = k.decode("utf-8", "surrogateescape")
        if key in ("path", "linkpath", "uname", "gname") and b"\0" in v:
            raise HeaderError(f"record {i}: {key} holds a NUL byte")
        out[key] = v
        pos += length
    return out


def _decimal(v: bytes, key: str, hi: int) -> int:
    if not v or v.translate(None, _DIGITS):
        raise HeaderError(f"PAX {key} {v[:24].decode('latin-1')!r} is not a decimal number")
    return _bounded(int(v), f"PAX {key}", 0, hi)


def _pax_time(v: bytes, key: str) -> int:
    whole, dot, frac = v.removeprefix(b"-").partition(b".")
    if (not whole or whole.translate(None, _DIGITS) or (dot and not frac)
            or frac.translate(None, _DIGITS)):
        raise HeaderError(f"PAX {key} {v[:32].decode('latin-1')!r} is not a time "
                          "(seconds[.fraction])")
    s = _bounded(int(whole), f"PAX {key}", 0, MAX_TIME_S)
    ns = s * 1_000_000_000 + int((frac + b"000000000")[:9])
    return -ns if v.startswith(b"-") else ns


def apply_pax(e: Entry, pax: dict[str, bytes]) -> None:
    """Fold PAX records into ``e``; raise HeaderError for a bad value or a sparse file."""
    for k, v in pax.items():
        if k == "path":
            e.name = v.decode("utf-8", "surrogateescape")
        elif k == "linkpath":
            e.linkname = v.decode("utf-8", "surrogateescape")
        elif k == "size":
            e.size = _decimal(v, k, MAX_SIZE)
        elif k == "uid":
            e.uid = _decimal(v, k, MAX_ID)
        elif k == "gid":
            e.gid = _decimal(v, k, MAX_ID)
        elif k == "mtime":
            e.mtime_ns = _pax_time(v, k)
        elif k == "atime":
            e.atime_ns = _pax_time(v, k)
        elif k == "ctime":
            _pax_time(v, k)  # not applied (the kernel sets ctime), but must be well formed
        elif k.startswith("SCHILY.xattr."):
            e.xattrs[k[13:]] = v
        elif k.startswith("LIBARCHIVE.xattr."):
            # libarchive: the name is %-encoded, the value base64 (SCHILY's copy wins)
            try:
                name = unquote_to_bytes(k[17:]).decode("utf-8", "surrogateescape")
                value = base64.b64decode(v + b"=" * (-len(v) % 4), validate=True)
            except ValueError as exc:
                raise HeaderError(f"PAX {k[:64]!r}: not base64 ({exc})") from exc
            e.xattrs.setdefault(name, value)
        elif k.startswith("GNU.sparse."):
            raise HeaderError("sparse files are not supported",
                              hint="repack the layer without --sparse")
