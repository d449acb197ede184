"""Record classes: the part of ``dataclasses`` cargohold uses, without its import cost.

``import dataclasses`` imports ``inspect``, and with it ``ast``, ``dis``, ``tokenize`` and
``linecache``: 42 million instructions, about 14 ms on the 2-core test VM, as long as a whole
``ctr content ls`` (issue 8 asks the hot commands to stay within 3x of ctr). Every record type
in cargohold is declared with :func:`record` instead; it writes the same methods dataclasses
would for the options used here:

- fields are the class's annotations in order; a default or :func:`field` value makes a field
  optional (``default`` or ``default_factory``; ``compare=False`` leaves it out of ``==`` and
  the hash; ``hash=False`` out of the hash only);
- ``__init__`` (positional or keyword), ``__repr__``, ``__eq__`` between instances of the same
  class; with ``frozen=True``, assignment raises :class:`FrozenInstanceError` (an
  AttributeError) and instances hash by their compared fields, otherwise they are unhashable
  (as with ``@dataclass``); ``eq=False`` keeps identity equality and hashing; ``slots=True``
  gives the class ``__slots__``;
- :func:`replace`, :func:`asdict` and :func:`fields` as in ``dataclasses``.

A record's subclass that is a record too has its base's fields first. There is no
``__post_init__`` and no ``InitVar``: a class that declares ``__post_init__`` is refused, so
nothing silently goes unrun.
"""

from __future__ import annotations

from operator import attrgetter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")

_MISSING = object()


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record."""


class Field:
    """One field of a record: its name, default or default factory, and whether ``==`` and
    the hash look at it.
    """

    __slots__ = ("name", "default", "default_factory", "compare", "hash")

    def __init__(self, default: Any = _MISSING, default_factory: Any = _MISSING,
                 compare: bool = True, hash: bool | None = None) -> None:  # noqa: A002
        self.name = ""
        self.default, self.default_factory = default, default_factory
        self.compare = compare
        self.hash = compare if hash is None else hash

    def __repr__(self) -> str:
        return f"Field({self.name!r})"


def field(*, default: Any = _MISSING, default_factory: Any = _MISSING, compare: bool = True,
          hash: bool | None = None) -> Any:  # noqa: A002 - dataclasses' own word
    """A field's options, as ``dataclasses.field``."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return Field(default, default_factory, compare, hash)


def record(cls: type[T] | None = None, *, frozen: bool = False, eq: bool = True,
           slots: bool = False) -> Any:
    """Make ``cls`` a record (``@record`` or ``@record(frozen=True)``), like ``@dataclass``."""
    def wrap(c: type[T]) -> type[T]:
        return _process(c, frozen=frozen, eq=eq, slots=slots)
    return wrap if cls is None else wrap(cls)


def _process(cls: type, *, frozen: bool, eq: bool, slots: bool) -> type:
    if "__post_init__" in cls.__dict__:
        raise TypeError(f"{cls.__qualname__}: record does not run __post_init__")
    inherited: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):  # a record's subclass extends its fields
        inherited.update((f.name, f) for f in base.__dict__.get("__record_fields__", ()))
    flds: list[Field] = list(inherited.values())
    for name in cls.__dict__.get("__annotations__", {}):
        value = cls.__dict__.get(name, _MISSING)
        f = value if isinstance(value, Field) else Field(default=value)
        f.name = name
        if f.default_factory is _MISSING and isinstance(f.default, (list, dict, set)):
            raise ValueError(f"{cls.__qualname__}.{name}: mutable default, use default_factory")
        if name in inherited:
            flds.remove(inherited[name])
        flds.append(f)
    names = [f.name for f in flds]
    for f in flds:  # class attributes hold plain defaults only (as dataclasses leaves them)
        if f.name in cls.__dict__:
            if f.default is _MISSING or slots:
                delattr(cls, f.name)
            else:
                setattr(cls, f.name, f.default)
    if slots:
        body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        body["__slots__"] = tuple(names)
        cls = type(cls)(cls.__name__, cls.__bases__, body)
    cls.__record_fields__ = tuple(flds)  # type: ignore[attr-defined]
    cls.__init__ = _first_init(cls, flds, frozen)  # type: ignore[misc]
    if "__repr__" not in cls.__dict__:
        cls.__repr__ = _make_repr(names)  # type: ignore[method-assign]
    if eq:
        compared = tuple(f.name for f in flds if f.compare)
        cls.__eq__ = _make_eq(compared)  # type: ignore[method-assign]
        if frozen:
            cls.__hash__ = _make_hash(tuple(f.name for f in flds if f.hash))  # type: ignore[method-assign]
        elif "__hash__" not in cls.__dict__:
            cls.__hash__ = None  # type: ignore[assignment]
    if frozen:
        cls.__setattr__ = _frozen_setattr  # type: ignore[method-assign]
        cls.__delattr__ = _frozen_delattr  # type: ignore[method-assign]
    return cls


def _first_init(cls: type, flds: list[Field], frozen: bool) -> Callable[..., None]:
    """An ``__init__`` that writes the real one on the first instance: compiling it costs
    about as much as the rest of the class, and a command uses few of the records it imports.
    The field order is checked now, as the class is made.
    """
    seen_default = False
    for f in flds:
        if f.default is not _MISSING or f.default_factory is not _MISSING:
            seen_default = True
        elif seen_default:
            raise TypeError(f"{cls.__qualname__}: non-default field {f.name!r} follows a "
                            "default one")

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        real = _make_init(cls, flds, frozen)
        cls.__init__ = real  # type: ignore[misc]
        real(self, *args, **kwargs)
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    return __init__


def _make_init(cls: type, flds: list[Field], frozen: bool) -> Callable[..., None]:
    scope: dict[str, Any] = {"_MISSING": _MISSING, "_set": object.__setattr__}
    params, lines = [], []
    for f in flds:
        n = f.name
        if f.default_factory is not _MISSING:
            scope[f"_f_{n}"] = f.default_factory
            params.append(f"{n}=_MISSING")
            value = f"_f_{n}() if {n} is _MISSING else {n}"
        elif f.default is not _MISSING:
            scope[f"_d_{n}"] = f.default
            params.append(f"{n}=_d_{n}")
            value = n
        else:
            if params and "=" in params[-1]:
                raise TypeError(f"{cls.__qualname__}: non-default field {n!r} follows a "
                                "default one")
            params.append(n)
            value = n
        lines.append(f"_set(self, {n!r}, {value})" if frozen else f"self.{n} = {value}")
    src = (f"def __init__(self, {', '.join(params)}):\n    "
           + "\n    ".join(lines or ["pass"]))
    exec(src, scope)  # noqa: S102 - our own generated code, as dataclasses does
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def _make_repr(names: list[str]) -> Callable[[Any], str]:
    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{type(self).__qualname__}({inner})"
    return __repr__


def _make_eq(names: tuple[str, ...]) -> Callable[[Any, Any], Any]:
    # attrgetter, not generated code: every record class costs a compile of its __init__
    # only (the hot commands define a score of them at start-up).
    get = attrgetter(*names) if names else _no_fields

    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return get(self) == get(other)
    return __eq__


def _make_hash(names: tuple[str, ...]) -> Callable[[Any], int]:
    get = attrgetter(*names) if names else _no_fields

    def __hash__(self: Any) -> int:
        return hash(get(self))
    return __hash__


def _no_fields(obj: Any) -> tuple[()]:
    return ()


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def fields(obj: Any) -> tuple[Field, ...]:
    """The fields of a record class or instance, in order."""
    return obj.__record_fields__


def replace(obj: T, **changes: Any) -> T:
    """A copy of record ``obj`` with ``changes`` (as ``dataclasses.replace``)."""
    for f in obj.__record_fields__:  # type: ignore[attr-defined]
        if f.name not in changes:
            changes[f.name] = getattr(obj, f.name)
    return obj.__class__(**changes)


def asdict(obj: Any) -> Any:
    """A record as a dict, records, lists, tuples and dicts inside it copied recursively."""
    if hasattr(type(obj), "__record_fields__"):
        return {f.name: asdict(getattr(obj, f.name)) for f in obj.__record_fields__}
    if isinstance(obj, (list, tuple)):
        return type(obj)(asdict(v) for v in obj)
    if isinstance(obj, dict):
        return type(obj)((asdict(k), asdict(v)) for k, v in obj.items())
    return obj
