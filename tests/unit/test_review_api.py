"""What an adversarial review of the API contract found: each test failed before its fix.

Validators see in-place changes and update()'s whole new state; values that compare equal across
types are still changes; odd values never crash a query; what is stored loads back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Annotated, Any

import pytest
from helpers import DbFactory, wait_for
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from brainless_odm import DefinitionError, Document, DocumentConfig, Indexed, MemoryStore, Registry, Unique

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Caller(BaseModel):
    number: str
    city: str | None = None


class Guarded(Base):
    name: str = ""
    lo: int = 0
    hi: int = 10
    tags: list[str] = Field(default_factory=list)
    caller: Caller | None = None

    @field_validator("tags")
    @classmethod
    def at_most_two(cls, v: list[str]) -> list[str]:
        if len(v) > 2:
            raise ValueError("at most 2 tags")
        return v

    @model_validator(mode="after")
    def ordered(self) -> Guarded:
        if self.lo > self.hi:
            raise ValueError("lo > hi")
        if self.caller is not None and self.caller.city == "nowhere":
            raise ValueError("no calls from nowhere")
        return self


@dataclasses.dataclass
class Point:
    x: int = 0


class Loose(Base):
    value: Any = None
    when: dt.datetime | None = None
    points: list[Point] = Field(default_factory=list)


async def test_an_in_place_change_meets_the_field_validators(make_db: DbFactory) -> None:
    db = await make_db(Guarded)
    g = Guarded.objects.using(db).add(tags=["a"])
    await db.flush()
    with pytest.raises(ValidationError, match="at most 2 tags"):
        g.tags.extend(["b", "c"])  # what `g.tags = ["a", "b", "c"]` refuses
    assert g.tags == ["a"]
    assert not g.is_dirty
    g.tags.append("b")
    assert g.dirty_fields == {"tags"}


async def test_a_nested_assignment_meets_the_documents_model_validator(make_db: DbFactory) -> None:
    db = await make_db(Guarded)
    g = Guarded.objects.using(db).add(caller=Caller(number="1", city="Brno"))
    await db.flush()
    assert g.caller is not None
    with pytest.raises(ValidationError, match="nowhere"):
        g.caller.city = "nowhere"
    assert g.caller.city == "Brno"
    assert not g.is_dirty
    g.caller.city = "Praha"
    assert g.dirty_fields == {"caller"}


async def test_add_validates_what_a_document_changed_in_place_before_it_was_added(
    make_db: DbFactory,
) -> None:
    db = await make_db(Guarded, Loose)
    g = Guarded(tags=["a"])
    g.tags.extend(["b", "c"])  # not held by a database yet: nothing checks this
    with pytest.raises(ValidationError, match="at most 2 tags"):
        Guarded.objects.using(db).add(g)
    c = Guarded(caller=Caller(number="1"))
    assert c.caller is not None
    c.caller.number = 42  # type: ignore[assignment]  # a plain model does not validate assignment
    with pytest.raises(ValidationError, match="number"):
        Guarded.objects.using(db).add(c)
    assert len(Guarded.objects.using(db)) == 0
    p = Loose(points=[Point(1)])
    p.points.append(Point(2))  # dataclass instances are what a list[Point] holds
    assert Loose.objects.using(db).add(p) is p
    p.points.append(Point(3))  # and once tracked (strict validation refused their dumped dicts)
    assert p.dirty_fields >= {"points"}


def test_a_document_defined_in_a_function_resolves_its_local_classes() -> None:
    # Postponed annotations (this module's `from __future__ import annotations`) name a class
    # local to the function: Pydantic looked for it one frame too far up, past our metaclass.
    class Local(BaseModel):
        n: int = 0

    class Holder(Base):
        local: Local | None = None
        items: list[Local] = Field(default_factory=list)

    assert Holder.__odm__.tracked == {"local", "items"}
    assert Holder(local={"n": 1}).local == Local(n=1)  # type: ignore[arg-type]


async def test_update_sets_every_field_at_once_for_the_model_validator(make_db: DbFactory) -> None:
    db = await make_db(Guarded)
    objects = Guarded.objects.using(db)
    a = objects.add(name="a", lo=0, hi=100)
    b = objects.add(name="b", lo=0, hi=10)
    await db.flush()
    # (20, 30) is valid for both; setting lo first would show b (20, 10), hi first a (0, 30).
    assert await objects.order_by("name").update(lo=20, hi=30) == 2
    assert (a.lo, a.hi, b.lo, b.hi) == (20, 30, 20, 30)
    assert a.dirty_fields == b.dirty_fields == {"lo", "hi"}
    await db.flush()
    with pytest.raises(ValidationError, match="lo > hi"):
        await objects.filter().update(lo=50)  # invalid for both: neither changes
    assert (a.lo, b.lo) == (20, 20)
    assert not a.is_dirty
    assert not b.is_dirty


async def test_values_equal_across_types_are_still_changes(make_db: DbFactory) -> None:
    store = MemoryStore()
    db1 = await make_db(Loose, store=store, location="one")
    db2 = await make_db(Loose, store=store, location="two")
    doc = Loose.objects.using(db1).add(value=1)
    await db1.flush()
    await wait_for(lambda: doc.uuid in Loose.objects.using(db2))
    doc.value = True  # 1 == True, but what is stored differs
    assert doc.value is True
    assert doc.dirty_fields == {"value"}
    await db1.flush()
    other = Loose.objects.using(db2)[doc.uuid or ""]
    await wait_for(lambda: other.value is True, what="True arrives on the other node")
    doc.value = 1.0
    await db1.flush()
    await wait_for(lambda: type(other.value) is float, what="1.0 arrives on the other node")


async def test_odd_values_never_crash_a_query(make_db: DbFactory) -> None:
    db = await make_db(Loose)
    objects = Loose.objects.using(db)
    naive = dt.datetime(2026, 1, 1)
    aware = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
    objects.add(value={"a": 1}, when=naive)
    objects.add(value={"b": 2}, when=aware)
    objects.add(value=[1, 2])
    objects.add(value=1)
    assert len(await objects.order_by("value")) == 4
    assert len(await objects.order_by("-when")) == 4
    assert await objects.order_by("when").first() is not None
    assert [d.value for d in await objects.filter(value__in=[1, "x"])] == [1]
    assert len(await objects.filter(value__nin=[1])) == 3


def test_reserved_names_from_a_plain_model_mixin_are_a_definition_error() -> None:
    class Mixin(BaseModel):
        delete: int = 0

    with pytest.raises(DefinitionError, match="reserved"):

        class Bad(Base, Mixin):  # type: ignore[misc]
            x: int = 0


def test_index_markers_inside_a_nested_model_are_a_definition_error() -> None:
    class Inner(BaseModel):
        number: Annotated[str, Unique()]

    with pytest.raises(DefinitionError, match="only a document's own fields"):

        class Bad(Base):
            inner: Inner | None = None


async def test_a_template_keeps_an_explicit_uuid_but_not_a_stored_one(make_db: DbFactory) -> None:
    db = await make_db(Guarded)
    objects = Guarded.objects.using(db)
    first = objects.add(Guarded(uuid="explicit-1", name="a"), lo=1)
    assert first.uuid == "explicit-1"
    assert first.lo == 1
    copy = objects.add(first, name="b")  # a stored document's uuid is taken: the copy gets one
    assert copy.uuid not in (None, "explicit-1")
    assert (copy.name, copy.lo) == ("b", 1)


class Measured(Base):
    model_config = DocumentConfig(registry=REG)

    value: float = 0.0
    limit: float | None = None
    title: str = Field("", alias="Title")
    rank: Annotated[int, Indexed()] = 0


async def test_what_is_stored_loads_back_nan_infinities_and_aliases(make_db: DbFactory) -> None:
    store = MemoryStore()
    db = await make_db(Measured, store=store)
    m = Measured.objects.using(db).add(value=float("nan"), limit=float("-inf"), Title="t")
    await db.flush()
    fresh = await make_db(Measured, store=store, location="fresh")
    assert await fresh.dead_letters() == []
    loaded = Measured.objects.using(fresh)[m.uuid or ""]
    assert loaded.value != loaded.value  # NaN
    assert loaded.limit == float("-inf")
    assert loaded.title == "t"
