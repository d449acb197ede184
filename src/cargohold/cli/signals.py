"""SIGTERM unwinds ``hold`` the way Ctrl-C does, so interrupted work cleans up after itself.

Python's default for SIGTERM is to die on the spot: an import stopped by ``kill`` or by a
service manager would leave its extract snapshots and its lease behind. :func:`install` makes
SIGTERM raise :class:`Terminated` in the main thread instead. Like KeyboardInterrupt it is a
BaseException, so every ``finally`` and ``except BaseException`` cleanup runs (extract
snapshots removed, the lease deleted and collected, ingests closed for a resume) while
``except Exception`` handlers let it pass; ``cli.main`` then exits 143 (128 + SIGTERM).
"""

from __future__ import annotations

# The C module under ``signal``: importing ``signal`` itself builds three enums of signal
# names, a millisecond of every command's start on the test VM, for nothing used here.
import _signal
from types import FrameType

EXIT_CODE = 128 + _signal.SIGTERM


class Terminated(BaseException):  # noqa: N818 - named like KeyboardInterrupt, its twin
    """SIGTERM arrived; raised in the main thread at the next Python instruction."""


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def install() -> None:
    """Turn SIGTERM into :class:`Terminated` (only the main thread may set handlers)."""
    try:
        _signal.signal(_signal.SIGTERM, _raise)
    except ValueError:
        pass  # not the main thread (hold driven from a library's thread): keep the default
