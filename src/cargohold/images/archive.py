"""Reading image archives in one pass: tar files, directories, stdin, compressed or not.

:func:`open_archive` takes a path (a tar file, an OCI layout or extracted ``docker save``
directory) or ``-`` (standard input) and returns an :class:`Archive` whose :meth:`members`
yields each entry once, in archive order, with a reader for regular files. Nothing is buffered
beyond the current member: a 10 GB archive needs a few MiB of memory.

Compression is sniffed from the first bytes, never from the file name
(:func:`cargohold.differ.compression.sniff`): gzip (read with ISA-L when available), zstd, xz;
bzip2 is refused by name; anything else must be a tar stream. Reading and decompressing run on
the differ's :class:`~cargohold.differ.compression.PlainStream` worker thread, which stays a
few MiB ahead, so decompression overlaps with the hashing and writing the importer does with
each member.

The tar is read by the differ's reader (:class:`cargohold.differ.tarread.TarReader`, the one
tar reader of cargohold, strict about every header). Every problem raises
:class:`ArchiveError` naming the archive and, when known, the entry: a stream that ends inside
a header or a member ("truncated"), a malformed header, or a first block that is not a tar
header ("not an image archive").
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

from cargohold._record import record
from cargohold.errors import InvalidArgument, MalformedData, Unsupported

if TYPE_CHECKING:
    from cargohold.differ.api import Source
    from cargohold.differ.compression import PlainStream
    from cargohold.differ.tarread import TarReader

CHUNK = 1 << 20
#: plain bytes decompressed ahead of the importer
BUFFER = 8 << 20
DAMAGED = "the archive is incomplete or damaged; copy or export it again"


class ArchiveError(MalformedData):
    """The archive is malformed: truncated, not a tar, or not an image archive (exit 1)."""


def archive_source(label: str) -> Source:
    """The differ :class:`~cargohold.differ.api.Source` naming archive ``label`` in errors."""
    from cargohold.differ.api import Source

    def error(problem: str, *, entry: str | None = None,
              hint: str | None = None) -> ArchiveError:
        where = f"archive {label}: " + (f"entry {entry!r}: " if entry is not None else "")
        return ArchiveError(where + problem, hint=hint or DAMAGED)

    return Source(label, error, DAMAGED)


@record
class Member:
    """One entry of an archive.

    ``kind`` is ``file``, ``dir``, ``symlink``, ``hardlink`` or ``other``; ``reader`` reads a
    regular file's ``size`` bytes (only until the next member is requested).
    """

    name: str
    kind: str
    size: int = 0
    linkname: str = ""
    reader: BinaryIO | None = None


def normalize_name(name: str) -> str:
    """An archive path without ``./``, leading or trailing slashes."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts)


# --- archives ---------------------------------------------------------------------------------
class Archive:
    """An opened archive; iterate :meth:`members` once. Use as a context manager."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.compression = "none"

    def members(self) -> Iterator[Member]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _DirArchive(Archive):
    """An OCI layout or an extracted docker save directory."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path

    def members(self) -> Iterator[Member]:
        # Small metadata first, then blobs, so an importer sees the layout before the bytes.
        entries: list[tuple[int, str]] = []
        for d, dirs, files in os.walk(self.path):
            dirs.sort()
            for n in sorted(files + [x for x in dirs if os.path.islink(os.path.join(d, x))]):
                rel = normalize_name(os.path.relpath(os.path.join(d, n), self.path))
                entries.append((0 if "/" not in rel else 1, rel))
        for _rank, rel in sorted(entries):
            full = os.path.join(self.path, rel)
            if os.path.islink(full):
                yield Member(rel, "symlink", linkname=os.readlink(full))
                continue
            if not os.path.isfile(full):
                yield Member(rel, "other")
                continue
            with open(full, "rb", buffering=0) as f:
                yield Member(rel, "file", os.fstat(f.fileno()).st_size, reader=f)


class _TarArchive(Archive):
    """A tar stream (possibly decompressed on the fly)."""

    def __init__(self, label: str, raw: BinaryIO, owned: BinaryIO | None) -> None:
        super().__init__(label)
        self._raw = raw
        self._owned = owned
        self._stream: PlainStream | None = None  # once members() runs

    def _reader(self) -> TarReader:
        from cargohold.differ.api import Compression
        from cargohold.differ.compression import SNIFF_BYTES, PlainStream, sniff
        from cargohold.differ.tarread import TarReader

        head = _read_head(self._raw, SNIFF_BYTES)
        if not head:
            raise ArchiveError(f"archive {self.label}: empty input",
                               hint="give an image archive (docker save, skopeo oci-archive, "
                                    "ctr images export) or a layout directory")
        kind = sniff(head) or Compression.NONE
        self.compression = kind.value
        if kind is Compression.BZIP2:
            raise Unsupported(f"archive {self.label}: bzip2 compression is not supported",
                              hint="decompress it first (bunzip2), or recompress with gzip, "
                                   "zstd or xz")
        source = archive_source(self.label)
        self._stream = PlainStream(self._raw, kind, self.label, source=source, head=head,
                                   hash=False, buffer=BUFFER, chunk=CHUNK).start()
        return TarReader(self._stream)

    def members(self) -> Iterator[Member]:
        from cargohold.differ.tarheader import DIR, LNK, REG, SYM, checksum_ok

        tar = self._reader()
        if not checksum_ok(tar.peek_block()):
            raise ArchiveError(f"archive {self.label}: not an image archive (not a tar stream, "
                               "and not gzip, zstd or xz)",
                               hint="give a docker save or OCI image-layout tar (optionally "
                                    "compressed), or a layout directory")
        while (e := tar.next()) is not None:
            rel = normalize_name(e.name)
            if e.type == REG:
                yield Member(rel, "file", e.size, reader=tar.data_reader())  # type: ignore
            elif e.type == SYM:
                yield Member(rel, "symlink", linkname=e.linkname)
            elif e.type == LNK:
                yield Member(rel, "hardlink", linkname=normalize_name(e.linkname))
            else:
                yield Member(rel, "dir" if e.type == DIR else "other")

    def close(self) -> None:
        if self._stream is not None:
            # A pipe's writer may stall forever: do not wait for the worker to notice.
            self._stream.close(wait=self._owned is not None)
        if self._owned is not None:
            self._owned.close()


def _read_head(raw: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes (fewer only at the end), however the writer of a pipe splits them."""
    out = b""
    while len(out) < n:
        chunk = raw.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def open_archive(path: str) -> Archive:
    """Open ``path`` (file, directory or ``-`` for stdin) for one pass over its members.

    Raises NotFound for a path that does not exist; reading raises :class:`ArchiveError`.
    """
    if path == "-":
        return _TarArchive("(stdin)", sys.stdin.buffer, None)  # type: ignore[arg-type]
    if os.path.isdir(path):
        return _DirArchive(path)
    try:
        f = open(path, "rb", buffering=CHUNK)  # noqa: SIM115 - owned by the archive
    except FileNotFoundError as exc:
        from cargohold.errors import NotFound

        raise NotFound(f"archive {path}: not found",
                       hint="give the path of an image archive or layout directory, or - "
                            "for standard input") from exc
    except IsADirectoryError as exc:  # pragma: no cover - raced with isdir
        raise InvalidArgument(f"archive {path}: is a directory") from exc
    return _TarArchive(path, f, f)  # type: ignore[arg-type]
