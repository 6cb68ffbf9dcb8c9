"""Members of a plain ``Enum`` (no int/str mixin, no order of their own) are ordered by their
``.value``: in ``order_by``, in ``lt``/``lte``/``gt``/``gte``/``range``, and in the sorted index,
which must agree with the scan. ``order_by`` on such a field was a ``QueryError``."""

from __future__ import annotations

import enum
import functools
from typing import Annotated, Any, Literal

import pytest
from helpers import DbFactory
from pydantic import Field

from brainless_odm import Document, DocumentConfig, Indexed, QueryError, Registry

REG = Registry()


class Level(enum.Enum):  # definition order differs from value order on purpose
    high = 3
    low = 1
    mid = 2


class Shade(enum.Enum):
    red = "red"
    blue = "blue"
    green = "green"


@functools.total_ordering
class Ranked(enum.Enum):
    """Has an order of its own (reversed values): kept, not replaced by the values."""

    one = 1
    two = 2

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Ranked):
            return NotImplemented
        return self.value > other.value


class Plain(Document):
    model_config = DocumentConfig(registry=REG, collection="plain")
    n: int = 0
    level: Level | None = None
    shade: Shade = Shade.red


class Indexed_(Document):
    model_config = DocumentConfig(registry=REG, collection="indexed")
    n: int = 0
    level: Annotated[Level | None, Indexed()] = None
    shade: Annotated[Shade, Indexed()] = Shade.red


class Others(Document):
    model_config = DocumentConfig(registry=REG, collection="others")
    n: int = 0
    ranked: Ranked = Ranked.one
    levels: list[Level] = Field(default_factory=list)
    anything: Any = None
    lit: Literal[Level.low, Level.high] = Level.low


LEVELS = [Level.mid, None, Level.high, Level.low, Level.mid, None, Level.low]
SHADES = [Shade.green, Shade.red, Shade.blue, Shade.red, Shade.blue, Shade.green, Shade.red]


def rank(level: Level | None) -> tuple[int, int]:
    return (0, 0) if level is None else (1, level.value)


@pytest.mark.parametrize("cls", [Plain, Indexed_])
async def test_a_plain_enum_sorts_and_compares_by_value(
    make_db: DbFactory, cls: type[Plain | Indexed_]
) -> None:
    db = await make_db(cls)
    objects = cls.objects.using(db)
    for n, (level, shade) in enumerate(zip(LEVELS, SHADES, strict=True)):
        objects.add(n=n, level=level, shade=shade)

    async def ns(qs: Any) -> list[int]:
        return [d.n for d in await qs]

    by_level = sorted(range(len(LEVELS)), key=lambda n: rank(LEVELS[n]))  # stable: n breaks ties
    assert await ns(objects.order_by("level", "n")) == by_level
    # descending: the highest value first, None last
    desc = sorted(range(len(LEVELS)), key=lambda n: (-rank(LEVELS[n])[0], -rank(LEVELS[n])[1], n))
    assert await ns(objects.order_by("-level", "n")) == desc
    by_shade = sorted(range(len(SHADES)), key=lambda n: (SHADES[n].value, n))
    assert await ns(objects.order_by("shade", "n")) == by_shade
    assert await ns(objects.order_by("shade", "n").offset(1).limit(2)) == by_shade[1:3]

    def where(pred: Any) -> list[int]:
        return [n for n, level in enumerate(LEVELS) if level is not None and pred(level.value)]

    # the lookup value is validated against the field (1 is Level.low), then compared by value
    for _ in range(2):  # the first range lookup builds the sorted index; the second uses it
        assert sorted(await ns(objects.filter(level__gt=Level.low))) == where(lambda v: v > 1)
        assert sorted(await ns(objects.filter(level__gte=1))) == where(lambda v: v >= 1)
        assert sorted(await ns(objects.filter(level__lt=Level.high))) == where(lambda v: v < 3)
        assert sorted(await ns(objects.filter(level__lte=Level.mid))) == where(lambda v: v <= 2)
        assert sorted(await ns(objects.filter(level__range=(2, 3)))) == where(lambda v: 2 <= v <= 3)
        assert await objects.filter(level__range=(Level.high, Level.low)).count() == 0
        reds = [n for n, s in enumerate(SHADES) if s.value <= "green"]
        assert sorted(await ns(objects.filter(shade__lte="green"))) == reds
    # and the index follows changes
    docs = sorted(await objects.filter(), key=lambda d: d.n)
    docs[1].level = Level.high
    docs[2].level = None
    changed = [d.level for d in docs]
    assert sorted(await ns(objects.filter(level__gte=Level.mid))) == [
        n for n, lv in enumerate(changed) if lv is not None and lv.value >= 2
    ]


async def test_the_sorted_index_holds_the_values(make_db: DbFactory) -> None:
    db = await make_db(Indexed_)
    objects = Indexed_.objects.using(db)
    for n, level in enumerate(LEVELS):
        objects.add(n=n, level=level)
    assert await objects.filter(level__gt=Level.low).count() == 3
    index = db.collection(Indexed_).indexes["level"]
    assert index.orderable is True
    assert [v for v, _ in index.sorted] == [1, 1, 2, 2, 3]  # type: ignore[union-attr]


async def test_an_enum_with_its_own_order_keeps_it(make_db: DbFactory) -> None:
    db = await make_db(Others)
    objects = Others.objects.using(db)
    objects.add(n=0, ranked=Ranked.one)
    objects.add(n=1, ranked=Ranked.two)
    assert [d.n for d in await objects.order_by("ranked")] == [1, 0]  # two < one, as it says
    assert [d.n for d in await objects.filter(ranked__lt=Ranked.one)] == [1]


async def test_members_in_an_any_field_or_a_literal_sort_by_value(make_db: DbFactory) -> None:
    db = await make_db(Others)
    objects = Others.objects.using(db)
    for n, value in enumerate([Level.high, 2, None, Level.low, 2.5]):
        objects.add(n=n, anything=value)
    assert [d.n for d in await objects.order_by("anything")] == [2, 3, 1, 4, 0]
    assert sorted(d.n for d in await objects.filter(anything__gt=1.5)) == [0, 1, 4]
    assert sorted(d.n for d in await objects.filter(anything__lt=Level.mid)) == [3]
    for doc, lit in zip(await objects.order_by("n"), [Level.high, Level.low] * 3, strict=False):
        doc.lit = lit
    assert [d.n for d in await objects.order_by("lit", "n")] == [1, 3, 0, 2, 4]


async def test_a_list_of_plain_members_still_has_no_order(make_db: DbFactory) -> None:
    db = await make_db(Others)
    with pytest.raises(QueryError, match="no order"):
        Others.objects.using(db).order_by("levels")  # lists compare their members themselves


class Odd(enum.Enum):
    unknown = None
    nan = float("nan")
    one = 1
    two = 2


class Weird(Document):
    model_config = DocumentConfig(registry=REG, collection="weird")
    n: int = 0
    odd: Odd | None = None
    iodd: Annotated[Odd | None, Indexed()] = None


async def test_a_member_valued_none_or_nan_sorts_and_compares_as_its_value(make_db: DbFactory) -> None:
    db = await make_db(Weird)
    objects = Weird.objects.using(db)
    for n, odd in enumerate([Odd.two, Odd.nan, None, Odd.unknown, Odd.one]):
        objects.add(n=n, odd=odd, iodd=odd)
    for key in ("odd", "iodd"):
        # None and the None-valued member first (stable), NaN after the numbers
        assert [d.n for d in await objects.order_by(key, "n")] == [2, 3, 4, 0, 1]
        assert [d.n for d in await objects.order_by(f"-{key}", "n")] == [1, 0, 4, 2, 3]
        for _ in range(2):
            assert sorted(d.n for d in await objects.filter(**{f"{key}__gte": 1})) == [0, 4]
            assert await objects.filter(**{f"{key}__lt": Odd.nan}).count() == 0
            assert await objects.filter(**{f"{key}__gt": Odd.unknown}).count() == 0
        assert [d.n for d in await objects.filter(**{f"{key}__isnull": True})] == [2]  # a member is no None
