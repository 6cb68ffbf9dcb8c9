"""``plain_copy``: what snapshots for event callbacks are made with. It must give what
``copy.deepcopy`` gives (plain containers, nothing shared with the original) for every value a
tracked field can hold."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, PrivateAttr

from brainless_odm._tracking import FieldLink, TrackedDict, TrackedList, TrackedSet, plain_copy


class Inner(BaseModel):
    n: int
    items: list[int] = []


class Outer(BaseModel):
    name: str
    inner: Inner
    many: list[Inner] = []
    by_key: dict[str, list[int]] = {}


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")
    n: int


class Secret(BaseModel):
    n: int
    _cache: list[int] = PrivateAttr(default_factory=list)


class Custom(BaseModel):
    n: int

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Custom:
        return Custom(n=self.n + 1000)  # visibly its own


@dataclasses.dataclass(frozen=True)
class Key:
    a: int


@dataclasses.dataclass
class Box:
    items: list[int]


def _mutables(value: Any, seen: set[int] | None = None) -> list[Any]:
    """Every mutable object reachable from ``value``."""
    out: list[Any] = []
    seen = set() if seen is None else seen
    if id(value) in seen or isinstance(value, (str, int, float, bool, bytes, type(None), Key)):
        return out
    seen.add(id(value))
    if isinstance(value, (list, set, dict, BaseModel, Box)):
        out.append(value)
    if isinstance(value, dict):
        children: Any = list(value.keys()) + list(value.values())
    elif isinstance(value, (list, tuple, set)):
        children = list(value)
    elif isinstance(value, BaseModel):
        out.append(value.__pydantic_fields_set__)  # mutable too (assignment adds to it)
        children = list(value.__dict__.values()) + list((value.__pydantic_extra__ or {}).values())
    elif isinstance(value, Box):
        children = [value.items]
    else:
        children = []
    for c in children:
        out.extend(_mutables(c, seen))
    return out


def _loose() -> Loose:
    m = Loose(n=1, extra_list=[1, 2])  # type: ignore[call-arg]
    return m


def _secret() -> Secret:
    m = Secret(n=1)
    m._cache.append(5)
    return m


shared = Inner(n=9, items=[9])
VALUES: list[Any] = [
    [1, "a", None],
    [[1, 2], {"k": [3]}],
    {"a": [1], "b": {"c": {"d": [2]}}},
    {Key(1): [1], (1, 2): [2]},  # keys that are not plain scalars
    {1, 2, "x"},
    {Key(1), Key(2)},
    (1, "x"),
    ([1], {"a": 2}),
    Outer(name="o", inner=Inner(n=1, items=[1]), many=[Inner(n=2)], by_key={"k": [1]}),
    [shared, shared],  # one model twice: the copy keeps it one
    _loose(),
    _secret(),
    Custom(n=1),
    Box([1, 2]),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_plain_copy_gives_what_deepcopy_gives(value: Any) -> None:
    expected = copy.deepcopy(value)
    got = plain_copy(value)
    assert got == expected
    assert type(got) is type(expected)
    originals = {id(m) for m in _mutables(value)}
    assert not [m for m in _mutables(got) if id(m) in originals], "shares a mutable object"
    if isinstance(value, BaseModel):
        assert got.model_fields_set == value.model_fields_set
        assert got.__pydantic_extra__ == expected.__pydantic_extra__
        assert got.__pydantic_private__ == expected.__pydantic_private__


@pytest.mark.parametrize("alias", [shared, {1, 2}, [1, 2], {"a": 1}], ids=lambda v: type(v).__name__)
def test_plain_copy_keeps_aliases_within_one_value(alias: Any) -> None:
    got = plain_copy([alias, {"again": alias}])
    assert got[0] is got[1]["again"]
    assert got[0] is not alias
    assert got[0] == alias


def test_a_model_with_its_own_deepcopy_is_copied_by_it() -> None:
    assert plain_copy(Custom(n=1)) == Custom(n=1001)
    assert plain_copy([Custom(n=1)]) == [Custom(n=1001)]


def test_tracked_containers_copy_to_plain_ones() -> None:
    link = FieldLink.__new__(FieldLink)
    link.doc, link.field, link.models = None, "f", None
    for tracked, plain in (
        (TrackedList(link, [1, [2]]), [1, [2]]),
        (TrackedDict(link, {"a": [1]}.items()), {"a": [1]}),
        (TrackedSet(link, {1, 2}), {1, 2}),
    ):
        got = plain_copy(tracked)
        assert got == plain
        assert type(got) is type(plain)
        inner = [v for v in (got.values() if isinstance(got, dict) else got) if not isinstance(v, int)]
        assert all(type(v) is list for v in inner)
