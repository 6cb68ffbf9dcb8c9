"""Lookups on fields that may hold values of several types: ``Any``, ``object`` and unions.

``contains`` on an ``Any`` field validated its argument as a str (``data__contains=5`` was a
``QueryError`` though the field held lists of ints), ``object`` fields refused every string lookup,
and ``contains``/``icontains`` on a ``str | list[str]`` field only ever looked into the str values.
The rule now: the argument is taken as each kind of value the field may hold takes it (as it is, for
``Any``), and a document whose value does not take it does not match — never an error at query time.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import DbFactory
from pydantic import Field

from brainless_odm import Database, Document, DocumentConfig, QueryError, Registry

REG = Registry()


class Thing(Document):
    model_config = DocumentConfig(registry=REG)
    n: int = 0
    data: Any = None
    obj: object = None
    either: str | list[str] | None = None
    nums: list[int] = Field(default_factory=list)
    mixed: int | str | None = None
    count: int = 0


VALUES: list[Any] = [
    [1, 2, 3],
    "hello",
    5,
    {"a": 1, "b": 2},
    None,
    ["Straße", "x"],
    (2, "a"),
    "ПРИВЕТ straße",
    3.5,
]


def textual(v: Any) -> bool:
    """What a ``str | list[str]`` field can hold."""
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))


@pytest.fixture
async def db(make_db: DbFactory) -> Database:
    db = await make_db(Thing)
    objects = Thing.objects.using(db)
    for n, v in enumerate(VALUES):
        objects.add(
            n=n,
            data=v,
            obj=v,
            either=v if textual(v) else None,
            nums=[n, n + 1],
            mixed=v if isinstance(v, (int, str)) else None,
        )
    return db


def expect(pred: Any, field: str = "data") -> list[int]:
    out = []
    for n, v in enumerate(VALUES):
        if field == "either" and not textual(v):
            v = None
        try:
            if v is not None and pred(v):
                out.append(n)
        except TypeError:
            pass
    return out


async def ns(db: Database, **lookups: Any) -> list[int]:
    return sorted(d.n for d in await Thing.objects.using(db).filter(**lookups))


@pytest.mark.parametrize("field", ["data", "obj"])
@pytest.mark.parametrize("arg", [5, 2, "a", "ell", "x", "", (2, "a"), [1], 3.5])
async def test_contains_on_any_is_python_in(db: Database, field: str, arg: Any) -> None:
    matched = expect(lambda v: arg in v)
    assert await ns(db, **{f"{field}__contains": arg}) == matched
    excluded = sorted(d.n for d in await Thing.objects.using(db).exclude(**{f"{field}__contains": arg}))
    assert excluded == [n for n in range(len(VALUES)) if n not in matched]


@pytest.mark.parametrize("field", ["data", "obj", "either"])
@pytest.mark.parametrize("arg", ["STRASSE", "straße", "hel", "X", "привет", "", "a"])
async def test_icontains_on_any_and_unions_looks_into_strs_and_lists(
    db: Database, field: str, arg: str
) -> None:
    folded = arg.casefold()

    def pred(v: Any) -> bool:
        if isinstance(v, str):
            return folded in v.casefold()
        if isinstance(v, (list, tuple)):
            return any(isinstance(x, str) and x.casefold() == folded for x in v)
        return False

    assert await ns(db, **{f"{field}__icontains": arg}) == expect(pred, field)


@pytest.mark.parametrize("field", ["data", "obj", "either"])
async def test_startswith_endswith_on_any_and_unions(db: Database, field: str) -> None:
    assert await ns(db, **{f"{field}__startswith": "he"}) == expect(
        lambda v: isinstance(v, str) and v.startswith("he"), field
    )
    assert await ns(db, **{f"{field}__endswith": "ße"}) == expect(
        lambda v: isinstance(v, str) and v.endswith("ße"), field
    )


async def test_contains_on_a_union_looks_into_each_kind_of_value(db: Database) -> None:
    assert await ns(db, either__contains="x") == [5]  # a member of the list
    assert await ns(db, either__contains="ll") == [1]  # a substring of the str
    assert await ns(db, either__contains="straße") == [7]
    assert await ns(db, either__contains="Straße") == [5]
    assert await ns(db, mixed__contains="ll") == [1]  # int | str: the str values
    with pytest.raises(QueryError, match="not a valid str"):
        Thing.objects.using(db).filter(mixed__contains=5)  # no kind of value takes it
    assert await ns(db, nums__contains="3") == [2, 3]  # validated as the members are: 3
    with pytest.raises(QueryError, match="contains needs a str or list field"):
        Thing.objects.using(db).filter(count__contains=1)
    with pytest.raises(QueryError, match="valid str"):
        Thing.objects.using(db).filter(data__icontains=5)  # ignoring case is about text


@pytest.mark.parametrize("field", ["data", "obj"])
async def test_other_lookups_on_any_never_raise(db: Database, field: str) -> None:
    def q(op: str, arg: Any) -> Any:
        return ns(db, **{f"{field}__{op}": arg})

    assert await q("gt", 3) == expect(lambda v: v > 3)
    assert await q("lte", "hello") == expect(lambda v: v <= "hello")
    assert await q("range", (1, 5)) == expect(lambda v: 1 <= v <= 5)
    assert await q("in", [5, "hello", [1, 2, 3], {"a": 1, "b": 2}]) == [0, 1, 2, 3]
    assert await q("nin", [5, [1, 2, 3]]) == [1, 3, 4, 5, 6, 7, 8]  # None is none of them
    assert await q("exact", (2, "a")) == [6]
    assert await q("ne", "hello") == [0, 2, 3, 4, 5, 6, 7, 8]
    assert await q("isnull", True) == [4]
    objects = Thing.objects.using(db)
    assert len(await objects.order_by(field, "n")) == len(VALUES)


class Pairs(Document):
    model_config = DocumentConfig(registry=REG)
    n: int = 0
    pair: tuple[int, str] = (0, "")
    holes: list[int | None] = Field(default_factory=list)
    text_or_nums: str | list[int] = ""


async def test_contains_takes_the_argument_as_each_item_type_does(make_db: DbFactory) -> None:
    """A ``tuple[int, str]`` was searched with the argument validated as its first item type only:
    ``pair__contains="a"`` was a ``QueryError``, ``pair__icontains`` refused the field."""
    db = await make_db(Pairs)
    objects = Pairs.objects.using(db)
    objects.add(n=0, pair=(1, "a"), holes=[1, None], text_or_nums="x5")
    objects.add(n=1, pair=(2, "B"), holes=[2], text_or_nums=[5, 6])
    objects.add(n=2, pair=(3, "2"), holes=[], text_or_nums=[7])

    async def ns(**lookups: Any) -> list[int]:
        return sorted(d.n for d in await objects.filter(**lookups))

    assert await ns(pair__contains="a") == [0]
    assert await ns(pair__contains=1) == [0]
    assert await ns(pair__contains="2") == [1, 2]  # the int 2 and the str "2"
    assert await ns(pair__icontains="b") == [1]
    assert await ns(holes__contains=None) == [0]
    assert await ns(holes__contains="2") == [1]
    assert await ns(text_or_nums__contains="5") == [0, 1]  # a substring, and the int 5
    assert await ns(text_or_nums__contains=7) == [2]
