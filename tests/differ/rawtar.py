"""Raw tar blocks for hostile-input tests: every field under the test's control.

``block(name, typ, size=..., **fields)`` is one 512-byte header whose fields are given as the
bytes to write (``uid=b"\\x80..."`` for base-256) or as ints (octal, or base-256 when octal
cannot hold them); the checksum is computed unless ``chksum=`` says otherwise.
``pax(records)`` is an ``x`` header plus its payload; ``member(name, data)`` a regular file
with its padded data.
"""

from __future__ import annotations

BLOCK = 512
_FIELDS = {"name": (0, 100), "mode": (100, 8), "uid": (108, 8), "gid": (116, 8),
           "size": (124, 12), "mtime": (136, 12), "chksum": (148, 8), "typ": (156, 1),
           "linkname": (157, 100), "magic": (257, 8), "devmajor": (329, 8),
           "devminor": (337, 8), "prefix": (345, 155)}


def _field(value: int | bytes | str, width: int) -> bytes:
    if isinstance(value, int):
        if 0 <= value < 8 ** (width - 1):
            return b"%0*o\0" % (width - 1, value)
        return (value & ((1 << (width * 8)) - 1) | (0x80 << (width * 8 - 8))).to_bytes(
            width, "big")  # base-256, as GNU tar writes what octal cannot hold
    if isinstance(value, str):
        value = value.encode()
    return value[:width].ljust(width, b"\0")


def block(name: str | bytes, typ: str | bytes = b"0", *, size: int | bytes = 0,
          chksum: bytes | None = None, **fields: int | bytes | str) -> bytes:
    """One ustar header; ``chksum`` overrides the computed checksum."""
    h = bytearray(BLOCK)
    values = {"name": name, "mode": 0o644, "uid": 0, "gid": 0, "size": size,
              "mtime": 1_600_000_000, "typ": typ, "magic": b"ustar\x0000", **fields}
    for k, v in values.items():
        off, width = _FIELDS[k]
        h[off:off + width] = _field(v, width)
    h[148:156] = b" " * 8
    h[148:156] = chksum if chksum is not None else b"%06o\0 " % sum(h)
    return bytes(h)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def record(key: str, value: str | bytes) -> bytes:
    """One well-formed PAX record."""
    v = value.encode() if isinstance(value, str) else value
    body = b" " + key.encode() + b"=" + v + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def pax(payload: bytes, *, typ: str = "x", size: int | None = None) -> bytes:
    """An extended header (``size`` may lie about the payload)."""
    return block("PaxHeaders/f", typ, size=len(payload) if size is None else size) + padded(
        payload)


def member(name: str, data: bytes = b"", **fields: int | bytes | str) -> bytes:
    return block(name, b"0", size=len(data), **fields) + padded(data)


def end() -> bytes:
    return bytes(2 * BLOCK)
