"""A float NaN in a field: equal to nothing (itself included) and ordered against nothing, whether
the field is indexed or not. In the sorted index it broke the order bisection relies on: range
lookups answered wrong documents, and removed entries stayed (found by a review's fuzzing)."""

from __future__ import annotations

import math
from typing import Annotated

import pytest
from helpers import DbFactory

from brainless_odm import Document, DocumentConfig, Indexed, Registry, Unique

REG = Registry()


class Indexed_(Document):
    model_config = DocumentConfig(registry=REG, collection="indexed")
    x: Annotated[float, Indexed()] = 0.0
    n: int = 0


class Plain(Document):
    model_config = DocumentConfig(registry=REG, collection="plain")
    x: float = 0.0
    n: int = 0


class Once(Document):
    model_config = DocumentConfig(registry=REG, collection="once")
    x: Annotated[float | None, Unique()] = None


XS = [1.0, math.nan, 3.0, 2.0, float("nan"), 5.0, 4.0, 0.5]


@pytest.mark.parametrize("cls", [Indexed_, Plain])
async def test_nan_matches_no_lookup_and_sorts_last(make_db: DbFactory, cls: type[Indexed_ | Plain]) -> None:
    db = await make_db(cls)
    objects = cls.objects.using(db)
    docs = [objects.add(x=x, n=n) for n, x in enumerate(XS)]

    async def ns(**lookups: object) -> list[int]:
        return sorted(d.n for d in await objects.filter(**lookups))

    for _ in range(2):  # before and after every value changed (NaN ones included)
        expected = {k: sorted(d.n for d in docs if pred(d.x)) for k, pred in _PREDICATES.items()}
        assert await ns(x__gt=1.5) == expected["gt"]
        assert await ns(x__lt=3.5) == expected["lt"]
        assert await ns(x__range=(1.0, 4.0)) == expected["range"]
        assert await ns(x=math.nan) == []
        assert await ns(x__in=[math.nan, 2.0]) == expected["eq2"]
        ordered = [d.x for d in await objects.order_by("x")]
        numbers = [x for x in ordered if not math.isnan(x)]
        assert numbers == sorted(numbers)
        assert all(math.isnan(x) for x in ordered[len(numbers) :])
        for d in docs:
            d.x = math.nan if d.n % 3 == 0 else d.x + 10 if not math.isnan(d.x) else 0.0


_PREDICATES = {
    "gt": lambda x: x > 1.5,
    "lt": lambda x: x < 3.5,
    "range": lambda x: 1.0 <= x <= 4.0,
    "eq2": lambda x: x == 2.0,
}


async def test_nan_repeats_in_a_unique_field(make_db: DbFactory) -> None:
    db = await make_db(Once)
    objects = Once.objects.using(db)
    objects.add(x=math.nan)
    objects.add(x=math.nan)  # the same object: NaN still equals nothing
    objects.add(x=float("nan"))
    assert len(objects) == 3


@pytest.mark.parametrize("cls", [Indexed_, Plain])
@pytest.mark.parametrize(
    "lookups",
    [{"x__gt": math.nan}, {"x__gte": math.nan}, {"x__lt": math.nan}, {"x__lte": math.nan},
     {"x__range": (math.nan, 5.0)}, {"x__range": (0.0, math.nan)}],
)  # fmt: skip
async def test_a_nan_bound_matches_nothing(
    make_db: DbFactory, cls: type[Indexed_ | Plain], lookups: dict[str, float]
) -> None:
    """Nothing is above or below NaN. The sorted index placed a NaN bound at its start, so that
    ``x__gte=nan`` and ``x__range=(nan, 5)`` on an indexed field matched every number."""
    db = await make_db(cls)
    objects = cls.objects.using(db)
    for n, x in enumerate(XS):
        objects.add(x=x, n=n)
    assert await objects.filter(**lookups) == []
    assert await objects.filter(**lookups).count() == 0
