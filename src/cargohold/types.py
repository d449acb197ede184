"""Value types shared by every layer: digests, descriptors, mounts, and the well-known labels."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from cargohold._record import field, record
from cargohold.errors import InvalidArgument, MalformedData

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# --- labels (containerd's names, so labels survive a round trip through either tool) ----------
LABEL_GC_ROOT = "containerd.io/gc.root"
LABEL_GC_REF_CONTENT = "containerd.io/gc.ref.content"
LABEL_GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."
LABEL_GC_REF_IMAGE = "containerd.io/gc.ref.image"
LABEL_GC_EXPIRE = "containerd.io/gc.expire"
LABEL_GC_FLAT = "containerd.io/gc.flat"
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
LABEL_DISTRIBUTION_SOURCE = "containerd.io/distribution.source."
LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"

MAX_LABEL_BYTES = 4096

# Always used with fullmatch: ``$`` would also match before a trailing newline.
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
# containerd's identifiers rule (namespaces, leases, containers), spelled as containerd prints it.
IDENTIFIER_RULE = r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"
MAX_IDENTIFIER = 76
_IDENT_RE = re.compile(IDENTIFIER_RULE)


class Digest(str):
    """A validated ``algorithm:hex`` content digest (sha256 or sha512)."""

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        """Validate ``value``; raise InvalidArgument naming it when it is not a digest."""
        if isinstance(value, Digest):
            return value
        if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
            raise InvalidArgument(
                f"digest {value!r}: not a valid digest",
                hint="expected sha256:<64 lowercase hex characters>",
            )
        return super().__new__(cls, value)

    @property
    def algorithm(self) -> str:
        return self.split(":", 1)[0]

    @property
    def hex(self) -> str:
        return self.split(":", 1)[1]

    @classmethod
    def from_bytes(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        import hashlib

        return cls(f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}")


def is_digest(value: str) -> bool:
    """Whether ``value`` is a well-formed digest string."""
    return isinstance(value, str) and _DIGEST_RE.fullmatch(value) is not None


def validate_identifier(kind: str, value: str) -> str:
    """Check a namespace/lease/container id against containerd's identifiers rule
    (:data:`IDENTIFIER_RULE`, at most :data:`MAX_IDENTIFIER` characters); return it.

    Raises InvalidArgument (exit 2) with a message that alone says what is allowed.
    """
    if not value:
        raise InvalidArgument(f"{kind} '': must not be empty")
    if len(value) > MAX_IDENTIFIER:
        raise InvalidArgument(f"{kind} {value!r}: longer than {MAX_IDENTIFIER} characters "
                              f"({len(value)})")
    if not _IDENT_RE.fullmatch(value):  # not .match: "$" passes a final "\n"
        raise InvalidArgument(f"{kind} {value!r}: must match {IDENTIFIER_RULE} (letters and "
                              "digits joined by single '.', '_' or '-')")
    return value


def validate_labels(labels: dict[str, str]) -> dict[str, str]:
    """Check label sizes; return the labels with empty values (deletions) kept."""
    for k, v in labels.items():
        if not k:
            raise InvalidArgument("label key '': empty", hint="labels are key=value")
        if len(k.encode()) + len(v.encode()) > MAX_LABEL_BYTES:
            raise InvalidArgument(
                f"label {k!r}: key and value longer than {MAX_LABEL_BYTES} bytes"
            )
    return labels


def apply_field_paths(current: dict[str, str], given: dict[str, str], fieldpaths: Sequence[str],
                      *, subject: str, default: Sequence[str] = ("labels",),
                      other: Sequence[str] = ()) -> tuple[dict[str, str], set[str]]:
    """The labels after an update in containerd's field-path language, and the other fields
    the paths name.

    ``labels`` replaces every label by ``given``'s; ``labels.<k>`` sets ``k`` to ``given[k]``
    or, when that is empty or absent, deletes it; no paths at all means ``default``. A path in
    ``other`` (an image's ``target``, say) is returned for the caller to apply; any other path
    raises InvalidArgument naming ``subject``. The result has no empty values and is validated.
    """
    labels = dict(current)
    named: set[str] = set()
    for fp in fieldpaths or default:
        if fp == "labels":
            labels = dict(given)
        elif fp.startswith("labels.") and len(fp) > 7:
            k = fp[7:]
            if given.get(k):
                labels[k] = given[k]
            else:
                labels.pop(k, None)
        elif fp in other:
            named.add(fp)
        else:
            can = ", ".join([*other, "labels", "labels.<key>"])
            raise InvalidArgument(f"{subject}: cannot update field {fp!r}",
                                  hint=f"only {can} can change")
    labels = {k: v for k, v in labels.items() if v}
    return validate_labels(labels), named


def parse_labels(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Parse ``k=v`` strings (``k=`` or ``k`` deletes) into a dict."""
    out: dict[str, str] = {}
    for p in pairs:
        k, _, v = p.partition("=")
        out[k] = v
    return validate_labels(out)


@record(frozen=True)
class Platform:
    """An OCI platform: os/architecture[/variant]."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    def __str__(self) -> str:
        s = f"{self.os}/{self.architecture}"
        return f"{s}/{self.variant}" if self.variant else s


@record(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    urls: tuple[str, ...] = field(default=(), compare=False, hash=False)
    platform: Platform | None = field(default=None, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                             "size": self.size}
        if self.urls:
            d["urls"] = list(self.urls)
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform is not None:
            p: dict[str, Any] = {"architecture": self.platform.architecture,
                                 "os": self.platform.os}
            if self.platform.os_version:
                p["os.version"] = self.platform.os_version
            if self.platform.variant:
                p["variant"] = self.platform.variant
            d["platform"] = p
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Descriptor:
        """A descriptor from a JSON document; raise MalformedData (exit 1) when it is not one:
        descriptors come from manifests, indexes and archives, never from the command line.
        """
        try:
            p = d.get("platform")
            plat = None
            if p:
                plat = Platform(p.get("os", ""), p.get("architecture", ""),
                                p.get("variant", ""), p.get("os.version", ""))
            size = d["size"]
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"size {size!r} is not a byte count")
            return cls(str(d.get("mediaType", "")), str(Digest(d["digest"])), size,
                       dict(d.get("annotations") or {}), tuple(d.get("urls") or ()), plat)
        except (KeyError, TypeError, ValueError, AttributeError, InvalidArgument) as exc:
            shown = repr(d)
            shown = shown if len(shown) <= 200 else shown[:200] + "…"
            raise MalformedData(f"descriptor {shown}: malformed ({exc})") from exc


@record(frozen=True)
class Mount:
    """What the kernel mounts: ``mount -t type -o options source target``."""

    type: str
    source: str
    options: tuple[str, ...] = ()

    def command(self, target: str) -> str:
        """The ``mount`` command line a user can paste into a shell as it is."""
        import shlex

        parts = ["mount", "-t", self.type]
        if self.options:
            parts += ["-o", ",".join(self.options)]
        parts += [self.source, target]
        return " ".join(shlex.quote(p) for p in parts)

    @property
    def read_only(self) -> bool:
        if "ro" in self.options:
            return True
        if self.type == "overlay":
            return not any(o.startswith("upperdir=") for o in self.options)
        return False


_IEC = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_size(n: int) -> str:
    """Bytes in IEC units with one decimal, as ctr prints sizes (``782.0 B``, ``2.9 MiB``)."""
    size = float(n)
    unit = 0
    while size >= 1024 and unit < len(_IEC) - 1:
        size /= 1024
        unit += 1
    return f"{size:.1f} {_IEC[unit]}"


def now_ns() -> int:
    """Wall-clock time in nanoseconds since the epoch."""
    return time.time_ns()


def format_time(ns: int) -> str:
    """RFC 3339 UTC text for a nanosecond timestamp."""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def parse_time(text: str) -> int:
    """Parse RFC 3339 text (as containerd writes gc.expire) into nanoseconds; raise on junk."""
    from datetime import datetime

    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    # Python < 3.11 cannot take more than 6 fractional digits; trim nanoseconds.
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", t)
    if not m:
        raise InvalidArgument(f"time {text!r}: not RFC 3339")
    frac = (m.group(2) or "")[:7]
    try:
        dt = datetime.fromisoformat(m.group(1) + frac + m.group(3))
    except ValueError as exc:
        raise InvalidArgument(f"time {text!r}: not RFC 3339") from exc
    if dt.tzinfo is None:
        raise InvalidArgument(f"time {text!r}: no time zone")
    return int(dt.timestamp() * 1_000_000) * 1000


def parse_duration(text: str) -> int:
    """Parse ``90s``, ``10m``, ``1h30m``, ``2d`` into nanoseconds."""
    units = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9,
             "h": 3600 * 10**9, "d": 86400 * 10**9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d)", text.strip())
    if not parts or "".join(a + b for a, b in parts) != text.strip():
        raise InvalidArgument(f"duration {text!r}: not understood",
                              hint="write it like 30s, 10m, 1h30m or 2d")
    return int(sum(float(n) * units[u] for n, u in parts))


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6,
               "mib": 1 << 20, "g": 10**9, "gb": 10**9, "gib": 1 << 30, "t": 10**12,
               "tb": 10**12, "tib": 1 << 40}


def parse_size(text: str | int, *, binary: bool = False) -> int:
    """Parse ``32MiB``, ``16M``, ``4GB``, ``1048576``, ``0`` (or an int) into bytes.

    ``KiB``/``MiB``/... are always powers of 1024; ``k``/``MB``/... are powers of 1000, unless
    ``binary`` (containerd's devmapper sizes read ``10GB`` as 10 GiB, as Docker's do).
    """
    if isinstance(text, int):
        return text
    t = str(text).strip().lower().replace(" ", "")
    num = t.rstrip("kmgtib")
    unit_text = t[len(num):]
    try:
        n = float(num)
        unit = _SIZE_UNITS[unit_text]
    except (ValueError, KeyError) as exc:
        raise InvalidArgument(f"size {text!r}: not a size",
                              hint="write it like 32MiB, 16MB or 0") from exc
    if binary and unit_text and not unit_text.endswith("ib") and unit_text != "b":
        unit = _SIZE_UNITS[unit_text[0] + "ib"]
    return int(n * unit)
