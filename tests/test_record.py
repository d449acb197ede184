"""cargohold._record behaves as dataclasses does for the options cargohold uses."""

from __future__ import annotations

import pytest

from cargohold._record import FrozenInstanceError, asdict, field, fields, record, replace


@record(frozen=True)
class Point:
    """A frozen record."""

    x: int
    y: int = 0
    tags: dict[str, str] = field(default_factory=dict, compare=False)


@record
class Bag:
    """A mutable record."""

    items: list[int] = field(default_factory=list)
    name: str = ""


def test_init_defaults_and_factories():
    p = Point(1)
    assert (p.x, p.y, p.tags) == (1, 0, {})
    assert Point(1).tags is not Point(1).tags  # a fresh dict each time
    assert Point(x=2, y=3) == Point(2, 3)
    with pytest.raises(TypeError):
        Point()
    with pytest.raises(TypeError):
        Point(1, 2, {}, 4)


def test_frozen_eq_hash_repr():
    p = Point(1, 2, {"a": "b"})
    with pytest.raises(FrozenInstanceError):
        p.x = 5
    with pytest.raises(AttributeError):
        del p.y
    assert p == Point(1, 2) and hash(p) == hash(Point(1, 2))  # tags not compared
    assert p != Point(1, 3) and p != (1, 2)
    assert repr(p) == "Point(x=1, y=2, tags={'a': 'b'})"
    assert {p, Point(1, 2)} == {p}


def test_mutable_records_are_unhashable_and_assignable():
    b = Bag()
    b.items.append(1)
    b.name = "n"
    assert b == Bag([1], "n")
    with pytest.raises(TypeError):
        hash(b)


def test_replace_asdict_fields():
    p = Point(1, 2)
    q = replace(p, y=5)
    assert q == Point(1, 5) and p.y == 2
    assert asdict(Bag([1, 2], "x")) == {"items": [1, 2], "name": "x"}
    b = Bag([1])
    d = asdict(b)
    d["items"].append(9)
    assert b.items == [1]  # copied
    assert [f.name for f in fields(Point)] == ["x", "y", "tags"]


def test_what_it_refuses():
    with pytest.raises(ValueError):
        @record
        class Bad:
            """A shared mutable default."""

            xs: list[int] = []  # noqa: RUF012

    with pytest.raises(TypeError):
        @record
        class Late:
            """A field without default after one with."""

            a: int = 0
            b: int

    with pytest.raises(TypeError):
        @record
        class Post:
            """Asks for __post_init__, which record never runs."""

            a: int

            def __post_init__(self) -> None:
                pass


def test_slots_and_identity_equality():
    @record(slots=True)
    class S:
        """Slotted."""

        a: int
        b: int = 1

    s = S(1)
    assert S.__slots__ == ("a", "b") and not hasattr(s, "__dict__") and s == S(1, 1)

    @record(eq=False)
    class Id:
        """Identity equality."""

        a: int

    i = Id(1)
    assert i != Id(1) and i == i and {i: 1}[i] == 1


def test_the_small_sha256_is_hashlibs():
    import hashlib

    from cargohold._sha import sha256_hex

    for data in (b"", b"abc", b"sha256:aa sha256:bb", bytes(range(256)) * 9):
        assert sha256_hex(data) == hashlib.sha256(data).hexdigest()
