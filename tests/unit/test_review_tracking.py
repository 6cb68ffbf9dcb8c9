"""Adversarial review: dirty tracking, validation and queries (in-memory databases).

Some tests reproduce bugs the review found (fixed since: each test fails without its fix); the others
guard behaviour that was checked and found correct and is easy to break.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Annotated

import pytest
from helpers import DbFactory, wait_for
from pydantic import BaseModel, Field, ValidationError, model_validator

from brainless_odm import Database, Document, DocumentConfig, Indexed, MemoryStore, Registry, Unique
from brainless_odm.query.manager import Manager

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Geo(BaseModel):
    lat: float = 0.0


class Caller(BaseModel):
    number: str
    city: str | None = None
    tags: list[str] = []
    geo: Geo | None = None


@dataclasses.dataclass
class Point:
    x: int = 0


class Call(Base):
    channel_id: Annotated[str | None, Unique()] = None
    state: Annotated[str, Indexed()] = "waiting"
    priority: int = 0
    name: str = ""
    caller: Caller | None = None
    callers: list[Caller] = Field(default_factory=list)
    backup: list[Caller] = Field(default_factory=list)
    meta: dict[str, list[int]] = Field(default_factory=dict)
    pair: tuple[list[int], int] = ([], 0)
    point: Point = Point()

    @model_validator(mode="after")
    def _vip_cap(self) -> Call:
        if self.priority > 100 and self.state == "vip":
            raise ValueError("a vip call cannot have priority > 100")
        return self


async def setup(make_db: DbFactory) -> tuple[Database, Manager[Call]]:
    db = await make_db(Call, flush_interval=60)
    return db, Call.objects.using(db)


async def clean(db: Database, *docs: Call) -> None:
    await db.flush()
    for d in docs:
        assert not d.is_dirty, d.dirty_fields


# -- failed validation must change nothing -----------------------------------------------------------
async def test_rejected_assignment_by_model_validator_keeps_old_value(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    a = m.add(state="vip", priority=1)
    await clean(db, a)
    with pytest.raises(ValidationError):
        a.priority = 200
    assert a.priority == 1
    assert not a.is_dirty


async def test_rejected_assignment_of_indexed_field_does_not_drift_index(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    a = m.add(priority=200)
    for _ in range(3):
        m.add(state="other")
    await clean(db, a)
    with pytest.raises(ValidationError):
        a.state = "vip"
    held = [d for d in await m.all() if d.state == "vip"]
    found = await m.filter(state="vip")
    assert found == held  # the index and the documents agree, whatever the value is


async def test_update_rejected_by_model_validator_changes_none(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    b1 = m.add(name="b1", state="x")
    b2 = m.add(name="b2", state="vip")
    await clean(db, b1, b2)
    with pytest.raises(ValidationError):
        await m.filter(name__in=["b1", "b2"]).order_by("name").update(priority=500)
    assert (b1.priority, b2.priority) == (0, 0)
    assert not b1.is_dirty
    assert not b2.is_dirty


async def test_rejected_plain_assignment_keeps_value_dirty_and_index(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    a = m.add(state="s1", channel_id="c1")
    m.add(state="s2", channel_id="c2")
    await clean(db, a)
    with pytest.raises(ValidationError):
        a.priority = "high"  # type: ignore[assignment]
    with pytest.raises(Exception, match="c2"):
        a.channel_id = "c2"
    assert (a.priority, a.channel_id, a.is_dirty) == (0, "c1", False)
    assert await m.filter(channel_id="c1").count() == 1
    assert await m.filter(channel_id="c2").count() == 1


async def test_update_unique_violation_changes_none(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    a = m.add(channel_id="a", name="n")
    b = m.add(channel_id="b", name="n")
    await clean(db, a, b)
    with pytest.raises(Exception, match="channel_id"):
        await m.filter(name="n").update(priority=5, channel_id="z")
    assert (a.priority, b.priority, a.channel_id, b.channel_id) == (0, 0, "a", "b")
    assert not a.is_dirty
    assert not b.is_dirty


async def test_invalid_in_place_change_is_undone(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    a = m.add(meta={"k": [1]})
    await clean(db, a)
    with pytest.raises(ValidationError):
        a.meta["k"].extend([2, "x"])  # type: ignore[list-item]
    assert a.meta == {"k": [1]}
    assert not a.is_dirty


# -- in-place changes must be tracked, and tracked on the right document ------------------------------
async def test_dict_appended_to_model_list_becomes_model_or_raises(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    a = m.add()
    await clean(db, a)
    try:
        try:
            a.callers.append({"number": "1"})  # type: ignore[arg-type]
        except ValidationError:
            assert a.callers == []
            return
        assert isinstance(a.callers[-1], Caller)
    finally:
        await a.delete()  # never serialise the bad value (a serializer warning fails teardown)


async def test_model_moved_between_documents_tracks_the_new_one(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    src = m.add(callers=[Caller(number="1")])
    dst = m.add()
    await clean(db, src, dst)
    moved = src.callers.pop()
    dst.callers.append(moved)
    await clean(db, src, dst)
    moved.city = "Brno"
    assert not src.is_dirty
    assert dst.callers[0].city == "Brno"
    assert dst.dirty_fields == {"callers"}


async def test_list_inside_tuple_field_is_tracked(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    a = m.add()
    await clean(db, a)
    a.pair[0].append(1)
    assert a.dirty_fields == {"pair"}


async def test_dataclass_field_assignment_is_tracked(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    a = m.add()
    await clean(db, a)
    a.point.x = 5
    assert a.dirty_fields == {"point"}


async def test_equal_nested_assignment_is_no_change(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    a = m.add(caller=Caller(number="1", city="Prague"))
    await clean(db, a)
    a.caller.city = "Prague"  # type: ignore[union-attr]
    assert not a.is_dirty


async def test_in_place_change_that_changes_nothing_is_no_change(make_db: DbFactory) -> None:
    """Like assigning an equal value: nothing to write, no event (it cost a write per flush)."""
    db, m = await setup(make_db)
    a = m.add(meta={"k": [1, 2]}, callers=[Caller(number="1")])
    await clean(db, a)
    events: list[object] = []
    m.on_change(lambda old, new: events.append(new), local=True)
    no_ops: list[Callable[[], object]] = [
        lambda: a.backup.clear(),
        lambda: a.backup.__delitem__(slice(None)),
        lambda: a.backup.extend([]),
        lambda: a.backup.sort(),
        lambda: a.meta["k"].sort(),
        lambda: a.meta["k"].__setitem__(0, 1),
        lambda: a.meta["k"].__imul__(1),
        lambda: a.meta.update({}),
        lambda: a.meta.pop("missing", None),
        lambda: a.meta.__setitem__("k", [1, 2]),
        lambda: a.callers.__setitem__(0, a.callers[0]),
        lambda: a.callers[0].tags.clear(),
    ]
    for i, edit in enumerate(no_ops):
        edit()
        assert not a.is_dirty, i
    a.meta["k"][0] = 5
    assert a.dirty_fields == {"meta"}
    await wait_for(lambda: events == [a])


async def test_container_replaced_inside_nested_model_is_cut(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    a = m.add(caller=Caller(number="1", tags=["a"]))
    await clean(db, a)
    old = a.caller.tags  # type: ignore[union-attr]
    a.caller.tags = ["b"]  # type: ignore[union-attr]
    await clean(db, a)
    old.append("zzz")
    assert not a.is_dirty
    assert a.caller.tags == ["b"]  # type: ignore[union-attr]


async def test_in_place_forms_are_all_tracked(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    a = m.add(callers=[Caller(number="2"), Caller(number="1")], meta={"k": [1]})
    await clean(db, a)
    edits: list[Callable[[], object]] = [
        lambda: a.meta.setdefault("new", []).append(3),
        lambda: a.meta["k"].__iadd__([4]),
        lambda: a.callers.sort(key=lambda c: c.number),
        lambda: a.callers.__setitem__(slice(0, 1), [Caller(number="0")]),
        lambda: a.callers[0].__setattr__("geo", Geo()),
        lambda: a.callers[0].geo.__setattr__("lat", 3.0),
        lambda: a.callers[1].tags.append("t"),
    ]
    for edit in edits:
        edit()
        assert a.is_dirty
        await clean(db, a)
    a.callers += [Caller(number="9")]
    assert a.dirty_fields == {"callers"}
    await clean(db, a)
    assert a.meta == {"k": [1, 4], "new": [3]}
    assert [c.number for c in a.callers] == ["0", "2", "9"]
    assert a.callers[0].geo == Geo(lat=3.0)


async def test_shared_nested_model_is_not_shared_between_documents(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    a = m.add(caller=Caller(number="1"))
    b = m.add()
    await clean(db, a, b)
    b.caller = a.caller
    b.backup.append(a.caller)  # type: ignore[arg-type]
    await clean(db, a, b)
    b.caller.city = "Brno"  # type: ignore[union-attr]
    assert b.dirty_fields == {"caller"}
    assert not a.is_dirty
    assert a.caller.city is None  # type: ignore[union-attr]


async def test_stale_references_cannot_touch_the_document(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    a = m.add(callers=[Caller(number="1")], caller=Caller(number="2"))
    await clean(db, a)
    old_list, old_caller = a.callers, a.caller
    a.callers = []
    a.caller = None
    await clean(db, a)
    old_list.append(Caller(number="3"))
    old_caller.city = "X"  # type: ignore[union-attr]
    assert not a.is_dirty
    kept = a.meta
    assert await a.delete()
    kept["x"] = [1]  # a deleted document is no longer tracked: no error, nothing scheduled
    assert not db.collection(Call).pending


async def test_model_copy_of_stored_doc_is_independent_when_deep(make_db: DbFactory) -> None:
    db, m = await setup(make_db)
    a = m.add(callers=[Caller(number="1")])
    await clean(db, a)
    cp = a.model_copy(deep=True)
    cp.callers.append(Caller(number="2"))
    cp.callers[0].city = "X"
    assert not a.is_dirty
    assert a.callers == [Caller(number="1")]
    b = m.add(a.model_copy(update={"uuid": None}))
    await clean(db, a, b)
    b.callers[0].city = "Y"
    assert not a.is_dirty
    assert a.callers[0].city is None


async def test_remote_merge_cuts_the_replaced_container(make_db: DbFactory) -> None:
    store = MemoryStore()
    db1 = await make_db(Call, store=store, location="a", flush_interval=60)
    db2 = await make_db(Call, store=store, location="b", flush_interval=60)
    a = Call.objects.using(db1).add(callers=[Caller(number="1")])
    await db1.flush()
    await wait_for(lambda: a.uuid in Call.objects.using(db2), what="replica")
    old = a.callers
    Call.objects.using(db2)[a.uuid or ""].callers.append(Caller(number="2"))
    await db2.flush()
    await wait_for(lambda: len(a.callers) == 2, what="merge")
    old.append(Caller(number="stale"))
    assert not a.is_dirty
    assert [c.number for c in a.callers] == ["1", "2"]


# -- queries -------------------------------------------------------------------------------------------
async def test_query_none_handling_and_ordering(make_db: DbFactory) -> None:
    _, m = await setup(make_db)
    m.add(name="a", caller=Caller(number="1", city="Prague"), priority=2)
    m.add(name="b", caller=None, priority=1)
    m.add(name="c", caller=Caller(number="2"), priority=2)
    assert [d.name for d in await m.filter(caller__city__startswith="Pr")] == ["a"]
    assert await m.filter(caller__city__gt="A").count() == 1
    assert await m.filter(caller__city=None).count() == 2
    assert await m.filter(caller__city__in=[None]).count() == 2
    assert await m.filter(caller__city__nin=[None]).count() == 1
    assert await m.filter(callers__contains=Caller(number="1")).count() == 0
    asc = await m.order_by("caller__city", "name")
    assert [d.name for d in asc] == ["b", "c", "a"]
    desc = await m.order_by("-priority", "name")
    assert [d.name for d in desc] == ["a", "c", "b"]  # stable within equal keys
    assert [d.name for d in await m.order_by("-caller__city", "name")] == ["a", "b", "c"]
    qs = m.order_by("name")
    assert await qs.offset(1).limit(1).count() == len(await qs.limit(1).offset(1)) == 1
    assert await qs.offset(5).count() == 0
    assert await qs.limit(0).first() is None
    assert not await qs.limit(0).exists()


async def test_index_follows_assignment_update_and_delete(make_db: DbFactory) -> None:
    _, m = await setup(make_db)
    docs = [m.add(state="s", name=str(i)) for i in range(5)]
    docs[0].state = "t"
    assert await m.filter(name__in=["1", "2"]).update(state="u") == 2
    await docs[3].delete()
    held: dict[str, set[str]] = {}
    for d in await m.all():
        held.setdefault(d.state, set()).add(d.name)
    for state in ("s", "t", "u"):
        assert {d.name for d in await m.filter(state=state)} == held.get(state, set())
        assert {d.name for d in await m.filter(state__in=[state, "none"])} == held.get(state, set())
    assert await m.filter(state__in=[]).count() == 0
    assert await m.filter(state__nin=[]).count() == 4
