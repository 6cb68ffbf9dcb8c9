"""Model validators that set other fields than the one assigned or updated: those changes are
tracked (dirty, indexed, unique-checked) like the assignment itself. Before, only the named field
was: the index of the derived field went stale, its change was never written, and update() dropped
it or half-applied itself before a unique violation (found by a review)."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from helpers import DbFactory
from pydantic import field_validator, model_validator

from brainless_odm import Document, DocumentConfig, Indexed, Registry, Unique, UniqueViolation

REG = Registry()


class Before(Document):
    model_config = DocumentConfig(registry=REG, collection="before")
    a: int
    b: Annotated[int, Unique()] = 0
    tags: list[str] = []  # noqa: RUF012  (pydantic copies defaults)

    @model_validator(mode="before")
    @classmethod
    def derive(cls, data: Any) -> Any:
        return {**data, "b": data["a"] * 10} if isinstance(data, dict) and "a" in data else data


class After(Document):
    model_config = DocumentConfig(registry=REG, collection="after")
    a: int
    b: Annotated[int, Indexed()] = 0

    @model_validator(mode="after")
    def derive(self) -> After:
        if self.b != self.a * 10:
            self.b = self.a * 10
        return self


class Lower(Document):
    model_config = DocumentConfig(registry=REG, collection="lower")
    x: int = 0
    k: Annotated[str, Unique()]

    @field_validator("k")
    @classmethod
    def low(cls, v: str) -> str:
        return v.lower()


async def test_assignment_tracks_what_a_before_validator_derived(make_db: DbFactory) -> None:
    db = await make_db(Before, flush_interval=60)
    objects = Before.objects.using(db)
    d = objects.add(a=1, tags=["t"])
    for i in range(3):
        objects.add(a=100 + i)
    await db.flush()
    events: list[tuple[Any, Any]] = []
    objects.on_change(lambda old, new: events.append((old.b, new.b)), local=True)
    d.a = 2
    assert (d.b, d.dirty_fields) == (20, {"a", "b"})
    assert await objects.filter(b=20) == [d]
    assert await objects.filter(b=10) == []
    assert await objects.filter(b__gte=15, b__lt=25) == [d]
    d.tags.append("still tracked")  # the unchanged container kept its tracking
    assert "tags" in d.dirty_fields
    with pytest.raises(UniqueViolation):
        d.a = 100  # b would be 1000, held by another document
    assert (d.a, d.b) == (2, 20)
    await db.flush()
    assert events == [(10, 20), (20, 20)]  # one for the assignment (a and b), one for tags


async def test_update_sets_what_a_validator_derived(make_db: DbFactory) -> None:
    db = await make_db(After, flush_interval=60)
    objects = After.objects.using(db)
    d = objects.add(a=2)
    assert d.b == 20
    assert await objects.filter(a=2).update(a=3) == 1
    assert (d.a, d.b, d.dirty_fields) == (3, 30, {"a", "b"})
    assert await objects.filter(b=30) == [d]


async def test_update_checks_unique_values_as_validated_before_any_change(make_db: DbFactory) -> None:
    db = await make_db(Lower, flush_interval=60)
    objects = Lower.objects.using(db)
    objects.add(k="a")
    d2 = objects.add(k="b")
    with pytest.raises(UniqueViolation):
        await objects.filter(k="b").update(x=99, k="A")  # validated to "a", which is held
    assert (d2.x, d2.k) == (0, "b")
    # several documents may take values a validator makes distinct, or swap them
    d3 = objects.add(k="c")
    assert await objects.filter(k__in=["b", "c"]).update(x=1) == 2
    with pytest.raises(UniqueViolation):
        await objects.filter(k__in=["b", "c"]).update(k="Z")  # both would hold "z"
    assert (d2.k, d3.k) == ("b", "c")
    with pytest.raises(UniqueViolation):  # "c" as validated: held by d3
        await objects.filter(k="b").update(k="C")
    assert (d2.k, d3.k) == ("b", "c")
