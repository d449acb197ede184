"""containerd's filter syntax: ``<fieldpath>[op value]``.

Operators ``==``, ``!=``, ``~=`` (regular expression) and bare presence; ``,`` joins clauses
with AND inside one filter string; several filter strings are ORed. Path segments may be quoted:
``labels."a.b"==x``. Values may be quoted with ``"`` or ``/`` (for regexps).

An *adaptor* is a function ``fieldpath -> (value, present)`` built by each service for one
object, so the same parser serves content, snapshots, images, leases and containers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from cargohold._record import record
from cargohold.errors import InvalidArgument

Adaptor = Callable[[tuple[str, ...]], tuple[str, bool]]


@record(frozen=True)
class Clause:
    """One ``path op value`` test."""

    path: tuple[str, ...]
    op: str  # "", "==", "!=", "~="
    value: str = ""

    def match(self, adaptor: Adaptor) -> bool:
        got, present = adaptor(self.path)
        if self.op == "":
            return present
        if self.op == "==":
            return present and got == self.value
        if self.op == "!=":
            return not present or got != self.value
        return present and re.search(self.value, got) is not None


def _split_path(text: str, src: str) -> tuple[str, ...]:
    parts: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == '"':
            j = text.find('"', i + 1)
            if j < 0:
                raise InvalidArgument(f"filter {src!r}: unterminated quote")
            parts.append(text[i + 1:j])
            i = j + 1
            if i < len(text) and text[i] == ".":
                i += 1
        else:
            j = text.find(".", i)
            if j < 0:
                parts.append(text[i:])
                break
            parts.append(text[i:j])
            i = j + 1
    if not parts or any(p == "" for p in parts):
        raise InvalidArgument(f"filter {src!r}: empty field path",
                              hint='write it like labels."k"==v or name~=^foo')
    return tuple(parts)


def _split_clauses(text: str) -> list[str]:
    out, cur, quote = [], [], ""
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "\"/" and cur and cur[-1] in "=~":
            quote = ch
            cur.append(ch)
        elif ch == '"':
            quote = ch
            cur.append(ch)
        elif ch == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quote:
        raise InvalidArgument(f"filter {text!r}: unterminated quote")
    out.append("".join(cur))
    return [c.strip() for c in out]


# A pattern, not a compiled one: re compiles (and caches) it on the first filter, and a
# command given none does not pay for it.
_OP = r'^((?:"[^"]*"|[^=!~"])+?)\s*(==|!=|~=)\s*(.*)$'


def parse(text: str) -> list[Clause]:
    """Parse one filter string into clauses that must all hold."""
    clauses = []
    for c in _split_clauses(text):
        if not c:
            raise InvalidArgument(f"filter {text!r}: empty clause")
        m = re.match(_OP, c)
        if not m:
            clauses.append(Clause(_split_path(c, text), ""))
            continue
        path, op, value = m.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"/":
            value = value[1:-1]
        if op == "~=":
            try:
                re.compile(value)
            except re.error as exc:
                raise InvalidArgument(f"filter {text!r}: bad regular expression ({exc})") from exc
        clauses.append(Clause(_split_path(path.strip(), text), op, value))
    return clauses


class Filter:
    """Several filter strings ORed together; no strings matches everything."""

    def __init__(self, texts: Sequence[str] = ()) -> None:
        self.alternatives = [parse(t) for t in texts if t.strip()]

    def __bool__(self) -> bool:
        return bool(self.alternatives)

    def match(self, adaptor: Adaptor) -> bool:
        if not self.alternatives:
            return True
        return any(all(c.match(adaptor) for c in alt) for alt in self.alternatives)


def adaptor_for(fields: dict[str, str], labels: dict[str, str]) -> Adaptor:
    """A standard adaptor: plain top-level fields plus ``labels.<key>``."""

    def get(path: tuple[str, ...]) -> tuple[str, bool]:
        if path[0] == "labels":
            key = ".".join(path[1:])
            return (labels.get(key, ""), key in labels)
        if len(path) == 1 and path[0] in fields:
            return (fields[path[0]], True)
        return ("", False)

    return get
