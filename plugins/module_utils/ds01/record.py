"""Records: small value classes, declared like dataclasses and made without the ``dataclasses`` module.

Why not ``dataclasses``: a cold ``ds01`` command (``ds01 gpu plan``, a login's ``ds01 limits``) defines about twenty
record classes before it reads anything, and ``dataclasses`` made that cost about a sixth of the whole command:
importing it imports ``inspect`` (and ``ast``, ``dis``, ``tokenize``), and every class compiles five generated methods.
``record`` compiles one ``__init__`` per class, when the class is first instantiated, and shares the other methods
(``benchmarks/allocation.py``).

Declared as with dataclasses::

    @record(frozen=True)
    class Slot:
        uuid: str
        index: int = 0
        labels: Mapping[str, str] = field(default_factory=dict)
        facts: Optional[dict] = field(default=None, compare=False, repr=False)

with the semantics of ``@dataclass`` / ``@dataclass(frozen=True)`` that ds01 uses:

- the fields are the annotated names, a base record's first, in order; an annotation starting with ``ClassVar`` is
  not a field; a class attribute is the default (a list, dict or set default is refused: use ``default_factory``);
  a field without a default may not follow one with a default;
- ``__init__`` takes the fields by position or keyword, builds ``default_factory`` values per instance and calls
  ``__post_init__()`` when the class has one;
- ``==`` holds between records of the same class whose compared fields are equal; a frozen record hashes those
  fields and refuses assignment (``FrozenInstanceError``); a record that is not frozen is unhashable;
- ``repr`` is ``Name(field=value, …)``; methods the class defines itself (``__repr__``, ``__eq__``) are kept;
- ``replace``, ``fields`` and ``asdict`` work as their ``dataclasses`` namesakes.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Callable, Optional

__all__ = ["Field", "FrozenInstanceError", "asdict", "field", "fields", "is_record", "record", "replace"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
_FACTORY: Any = type("_Factory", (), {"__slots__": (), "__repr__": lambda self: "<factory>"})()


class FrozenInstanceError(AttributeError):
    """An assignment to (or deletion of) an attribute of a frozen record."""


class Field:
    """One field of a record: its name, default or default factory, and whether ``==`` and ``repr`` show it."""

    __slots__ = ("compare", "default", "default_factory", "name", "repr")

    def __init__(
        self, default: Any = MISSING, default_factory: Any = MISSING, compare: bool = True, repr: bool = True
    ) -> None:
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.compare = compare
        self.repr = repr

    def __repr__(self) -> str:
        return (
            f"Field(name={self.name!r}, default={self.default!r}, default_factory={self.default_factory!r}, "
            f"compare={self.compare!r}, repr={self.repr!r})"
        )


def field(
    *,
    default: Any = MISSING,
    default_factory: Optional[Callable[[], Any]] = MISSING,
    compare: bool = True,
    repr: bool = True,
) -> Any:
    """A field's options, as the class attribute of its name (``dataclasses.field``'s keywords that ds01 uses)."""
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("a field takes a default or a default_factory, not both")
    return Field(default, default_factory, compare, repr)


def record(cls: Optional[type] = None, /, *, frozen: bool = False) -> Any:
    """Make ``cls`` a record (``@record`` or ``@record(frozen=True)``)."""

    def wrap(target: type) -> type:
        return _make(target, frozen)

    return wrap if cls is None else wrap(cls)


def _own_fields(cls: type) -> list:
    out = []
    # The class's own annotations, as dataclasses reads them (inspect.get_annotations would import inspect).
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
        if text.startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = cls.__dict__.get(name, MISSING)
        spec = value if isinstance(value, Field) else Field(default=value)
        spec.name = name
        if spec.default is not MISSING and type(spec.default).__hash__ is None:
            raise ValueError(
                f"{cls.__name__}.{name}: a mutable default ({type(spec.default).__name__}) is shared by "
                "every instance; use field(default_factory=...)"
            )
        if isinstance(value, Field):  # the class attribute is the plain default, as with dataclasses
            if spec.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
        out.append(spec)
    return out


def _make(cls: type, frozen: bool) -> type:
    specs: dict = {}
    for base in reversed(cls.__mro__[1:]):
        for spec in getattr(base, "__record_fields__", ()):
            specs[spec.name] = spec
    for spec in _own_fields(cls):
        specs[spec.name] = spec
    all_fields = tuple(specs.values())
    cls.__record_fields__ = all_fields
    cls.__record_frozen__ = frozen
    cls.__match_args__ = tuple(f.name for f in all_fields)
    _check_order(cls, all_fields)
    cls.__init__ = _first_init(cls, all_fields)
    if "__repr__" not in cls.__dict__:
        cls.__repr__ = _repr
    compared = [f.name for f in all_fields if f.compare]
    key = _key(compared)
    cls.__record_key__ = staticmethod(key)
    if "__eq__" not in cls.__dict__:
        cls.__eq__ = _eq
    explicit_hash = cls.__dict__.get("__hash__", MISSING) not in (MISSING, None)
    if not explicit_hash:
        cls.__hash__ = _hash if frozen else None  # type: ignore[assignment]
    if frozen:
        cls.__setattr__ = _frozen_setattr
        cls.__delattr__ = _frozen_delattr
    return cls


def _key(names: list) -> Callable[[Any], tuple]:
    if not names:
        return lambda obj: ()
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return attrgetter(*names)


def _check_order(cls: type, all_fields: tuple) -> None:
    seen_default = False
    for f in all_fields:
        if f.default is not MISSING or f.default_factory is not MISSING:
            seen_default = True
        elif seen_default:
            raise TypeError(f"{cls.__name__}: the field {f.name!r} without a default follows one with a default")


def _first_init(cls: type, all_fields: tuple) -> Callable:
    """An ``__init__`` that compiles the real one on the first instance (a class a command never instantiates costs
    it nothing), puts it on the class and runs it."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init = cls.__dict__["__init__"]
        if init is __init__:
            init = _init(cls, all_fields)
            cls.__init__ = init
        init(self, *args, **kwargs)

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    return __init__


def _init(cls: type, all_fields: tuple) -> Callable:
    """``__init__`` for ``all_fields``: one compiled function per class (fast per instance)."""
    params, body, env = [], [], {"_FACTORY": _FACTORY}
    for f in all_fields:
        if f.default_factory is not MISSING:
            env[f"_factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_FACTORY")
            body.append(f"    if {f.name} is _FACTORY: {f.name} = _factory_{f.name}()")
        elif f.default is not MISSING:
            env[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        else:
            params.append(f.name)
    values = ", ".join(f"{f.name!r}: {f.name}" for f in all_fields)
    body.append(f"    self.__dict__.update({{{values}}})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body) + "\n"
    if not all_fields:
        source = "def __init__(self):\n" + (
            "    self.__post_init__()\n" if hasattr(cls, "__post_init__") else "    pass\n"
        )
    namespace: dict = {}
    exec(compile(source, f"<record {cls.__qualname__}.__init__>", "exec"), env, namespace)  # noqa: S102 - our own text
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    return init


def _repr(self: Any) -> str:
    shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in type(self).__record_fields__ if f.repr)
    return f"{type(self).__qualname__}({shown})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    key = self.__record_key__
    return key(self) == key(other)


def _hash(self: Any) -> int:
    return hash(self.__record_key__(self))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def is_record(obj: Any) -> bool:
    """True for a record class or instance."""
    return hasattr(obj if isinstance(obj, type) else type(obj), "__record_fields__")


def fields(obj: Any) -> tuple:
    """The ``Field``s of a record class or instance, in order."""
    try:
        return (obj if isinstance(obj, type) else type(obj)).__record_fields__
    except AttributeError:
        raise TypeError(f"fields() takes a record, not {type(obj).__name__}") from None


def replace(obj: Any, /, **changes: Any) -> Any:
    """A new record like ``obj`` with ``changes`` (``dataclasses.replace``); an unknown name is a TypeError."""
    for spec in fields(obj):
        if spec.name not in changes:
            changes[spec.name] = getattr(obj, spec.name)
    return type(obj)(**changes)


def asdict(obj: Any) -> dict:
    """``obj``'s fields as a dict, records, lists, tuples and dicts inside it converted too, other values deep-copied
    (``dataclasses.asdict``)."""
    if isinstance(obj, type) or not is_record(obj):
        raise TypeError(f"asdict() takes a record instance, not {type(obj).__name__}")
    import copy

    def convert(value: Any) -> Any:
        if is_record(value) and not isinstance(value, type):
            return {f.name: convert(getattr(value, f.name)) for f in fields(value)}
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
            return type(value)(*[convert(v) for v in value])
        if isinstance(value, (list, tuple)):
            return type(value)(convert(v) for v in value)
        if isinstance(value, dict):
            return type(value)((convert(k), convert(v)) for k, v in value.items())
        return copy.deepcopy(value)

    return convert(obj)
