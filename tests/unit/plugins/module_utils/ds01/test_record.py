"""record: the dataclass semantics ds01's records rely on, checked against ``dataclasses`` itself where both apply."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import ClassVar, Optional

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import record as rec


@rec.record(frozen=True)
class Point:
    """A frozen record with a default, a factory and a field left out of == and repr."""

    x: int
    y: int = 0
    tags: dict = rec.field(default_factory=dict)
    note: Optional[str] = rec.field(default=None, compare=False, repr=False)
    unit: ClassVar[str] = "px"


@dataclasses.dataclass(frozen=True)
class DataPoint:
    x: int
    y: int = 0
    tags: dict = dataclasses.field(default_factory=dict)
    note: Optional[str] = dataclasses.field(default=None, compare=False, repr=False)


@rec.record(frozen=True)
class Pair:
    x: int
    note: str = rec.field(default="", compare=False)


@dataclasses.dataclass(frozen=True)
class DataPair:
    x: int
    note: str = dataclasses.field(default="", compare=False)


@rec.record
class Box:
    items: list = rec.field(default_factory=list)
    seen: int = 0

    def __post_init__(self) -> None:
        self.seen += 1


@rec.record(frozen=True)
class Labelled(Point):
    label: str = ""


def test_init_repr_eq_hash_as_dataclasses():
    args = [((1,), {}), ((1, 2), {}), ((), {"x": 3, "y": 4, "tags": {"a": "b"}, "note": "n"})]
    for pos, kw in args:
        ours, theirs = Point(*pos, **kw), DataPoint(*pos, **kw)
        assert repr(ours) == repr(theirs).replace("DataPoint", "Point")
        assert (ours.x, ours.y, ours.tags, ours.note) == (theirs.x, theirs.y, theirs.tags, theirs.note)
    assert Point(1, note="a") == Point(1, note="b")  # compare=False
    assert Point(1) != Point(2)
    assert Point(1).__eq__(DataPoint(1)) is NotImplemented  # only the same class compares
    assert hash(Pair(1, note="a")) == hash(Pair(1, note="b")) == hash(DataPair(1, note="c"))  # the same key
    assert {Pair(1): "p"}[Pair(1)] == "p"
    with pytest.raises(TypeError, match="unhashable type: 'dict'"):  # as with dataclasses: a dict field
        hash(Point(1))
    assert Point(1).tags is not Point(1).tags  # a fresh default per instance
    assert Point.__match_args__ == ("x", "y", "tags", "note")
    assert [f.name for f in rec.fields(Point)] == ["x", "y", "tags", "note"]  # a ClassVar is not a field
    assert Point.unit == "px"
    assert Point.y == 0 and "tags" not in Point.__dict__  # class attributes: the plain default, or none


def test_argument_errors_are_pythons():
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'x'"):
        Point()
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        Point(1, z=2)
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        Point(1, x=2)


def test_frozen_refuses_assignment_and_deletion():
    point = Point(1)
    with pytest.raises(rec.FrozenInstanceError, match="'x'"):
        point.x = 2
    with pytest.raises(AttributeError):
        del point.y
    assert point.x == 1


def test_a_record_that_is_not_frozen_is_mutable_and_unhashable():
    box = Box()
    box.items.append(1)
    box.seen = 5
    assert box == Box(items=[1], seen=4)  # post_init adds one
    assert Box().seen == 1  # __post_init__ ran
    with pytest.raises(TypeError, match="unhashable"):
        hash(box)


def test_replace_fields_and_asdict():
    point = Point(1, 2, {"k": [1]}, note="n")
    moved = rec.replace(point, y=5)
    assert (moved.x, moved.y, moved.tags, moved.note) == (1, 5, {"k": [1]}, "n")
    assert point.y == 2
    with pytest.raises(TypeError):
        rec.replace(point, z=1)
    with pytest.raises(TypeError):
        rec.replace(DataPoint(1), y=2)
    as_dict = rec.asdict(Labelled(1, tags={"k": [Point(2)]}, label="l"))
    assert as_dict == {
        "x": 1,
        "y": 0,
        "tags": {"k": [{"x": 2, "y": 0, "tags": {}, "note": None}]},
        "note": None,
        "label": "l",
    }
    assert rec.asdict(point) == dataclasses.asdict(DataPoint(1, 2, {"k": [1]}, note="n"))
    assert rec.asdict(point)["tags"]["k"] is not point.tags["k"]  # deep: changing the dict leaves the record alone
    assert rec.is_record(point) and rec.is_record(Point) and not rec.is_record(DataPoint(1))


def test_inherited_fields_come_first():
    assert [f.name for f in rec.fields(Labelled)] == ["x", "y", "tags", "note", "label"]
    assert Labelled(1, label="a") != Labelled(1, label="b")
    assert Labelled(1) != Point(1)


def test_copies_and_pickles_keep_the_values():
    point = Point(1, 2, {"a": "b"}, note="n")
    for twin in (copy.copy(point), copy.deepcopy(point), pickle.loads(pickle.dumps(point))):
        assert twin == point and twin.note == "n"


def test_declaration_mistakes_are_refused():
    with pytest.raises(ValueError, match="default_factory"):

        @rec.record
        class Shared:
            items: list = []

    with pytest.raises(TypeError, match="without a default follows"):

        @rec.record
        class Order:
            a: int = 0
            b: int

    with pytest.raises(ValueError, match="not both"):
        rec.field(default=1, default_factory=int)
