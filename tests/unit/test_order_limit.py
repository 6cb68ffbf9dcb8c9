"""order_by(): the documented order (None first, a float NaN after every number, reversed by "-";
stable, so later keys break ties) whether the whole list is sorted or only the first offset+limit
places are chosen (a heap, when a few are wanted from many)."""

from __future__ import annotations

import math
from typing import Annotated, Any

import pytest
from helpers import DbFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brainless_odm import Database, Document, DocumentConfig, Indexed, Registry

REG = Registry()


class Ranked(Document):
    model_config = DocumentConfig(registry=REG, collection="ranked")
    x: float | None = None
    y: Annotated[int, Indexed()] = 0
    k: int = 0


def reference(rows: list[dict[str, Any]], keys: list[str]) -> list[int]:
    """Stable sorts from the last key to the first, each by (rank, value)."""

    def key(name: str) -> Any:
        def rank(row: dict[str, Any]) -> tuple[int, Any]:
            v = row[name]
            if v is None:
                return (0, 0)
            if isinstance(v, float) and math.isnan(v):
                return (2, 0)
            return (1, v)

        return rank

    out = list(rows)
    for k in reversed(keys):
        out.sort(key=key(k.lstrip("-")), reverse=k.startswith("-"))
    return [r["k"] for r in out]


@pytest.fixture
async def db(make_db: DbFactory) -> Database:
    return await make_db(Ranked, flush_interval=60)


xs = st.none() | st.integers(0, 4).map(float) | st.just(math.nan)
orders = st.sampled_from([["x"], ["-x"], ["y"], ["-y"], ["y", "-x"], ["-x", "y"], ["x", "-y"]])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(xs, st.integers(0, 3)), max_size=70),
    order=orders,
    offset=st.integers(0, 4),
    limit=st.none() | st.integers(0, 8),
)
async def test_order_and_limit_match_a_full_stable_sort(
    db: Database, rows: list[tuple[float | None, int]], order: list[str], offset: int, limit: int | None
) -> None:
    objects = Ranked.objects.using(db)
    for doc in list(objects):
        objects.delete(doc)
    data = [{"x": x, "y": y, "k": i} for i, (x, y) in enumerate(rows)]
    for row in data:
        objects.add(row)
    qs = objects.order_by(*order).offset(offset)
    if limit is not None:
        qs = qs.limit(limit)
    # The collection holds documents in insertion order; equal keys keep it.
    expected = reference(data, order)[offset : None if limit is None else offset + limit]
    assert [d.k for d in await qs] == expected
    first = await objects.order_by(*order).first()
    assert (first.k if first else None) == (reference(data, order)[0] if data else None)


async def test_a_few_from_many_uses_the_same_order(db: Database) -> None:
    objects = Ranked.objects.using(db)
    for i in range(1000):
        objects.add(x=None if i % 97 == 0 else math.nan if i % 89 == 0 else float(i % 13), y=i % 7, k=i)
    everything = [d.k for d in await objects.order_by("-x", "y")]
    assert len(everything) == 1000
    for offset, limit in [(0, 1), (0, 5), (3, 10), (40, 20), (0, 1000), (990, 50)]:
        got = [d.k for d in await objects.order_by("-x", "y").offset(offset).limit(limit)]
        assert got == everything[offset : offset + limit]
