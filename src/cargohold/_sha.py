"""SHA-256 of small strings (names, chain IDs) without loading OpenSSL.

``import hashlib`` initialises OpenSSL's libcrypto: 11 million instructions, about 4 ms on
the 2-core test VM, a tenth of what ``hold images mount`` may spend in all. Names and chain
IDs hash a few dozen bytes, where OpenSSL's speed is of no use, so they use CPython's own
SHA-256 (the module hashlib itself falls back to). Blob data keeps using hashlib.
"""

from __future__ import annotations

try:
    from _sha256 import sha256  # CPython 3.11
except ImportError:  # pragma: no cover - the module's name in CPython 3.12+, or none
    try:
        from _sha2 import sha256  # type: ignore[no-redef]
    except ImportError:
        from hashlib import sha256  # type: ignore[no-redef]


def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 of ``data`` (as ``hashlib.sha256(data).hexdigest()``)."""
    return sha256(data).hexdigest()
