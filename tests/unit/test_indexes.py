"""Indexes: lookups on Indexed/Unique fields are served without a scan and follow every change."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from helpers import DbFactory, wait_for

from brainless_odm import (
    Database,
    Document,
    DocumentConfig,
    Indexed,
    MemoryStore,
    Q,
    Registry,
    Unique,
    UniqueViolation,
)
from brainless_odm.engine.collection import Collection

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Call(Base):
    channel_id: Annotated[str | None, Unique()] = None
    queue_id: Annotated[int, Indexed()] = 0
    state: Annotated[str, Indexed()] = "waiting"
    priority: int = 0


class CountingDocs(dict[str, Any]):
    """A collection's ``docs`` dict that counts full scans (``values()``)."""

    scans = 0

    def values(self) -> Any:
        CountingDocs.scans += 1
        return super().values()

    def __iter__(self) -> Iterator[str]:
        CountingDocs.scans += 1
        return super().__iter__()


@pytest.fixture
async def db(make_db: DbFactory) -> Database:
    db = await make_db(Call)
    objects = Call.objects.using(db)
    for i in range(200):
        objects.add(
            channel_id=f"ch-{i}", queue_id=i % 10, state="waiting" if i % 2 else "talking", priority=i
        )
    coll = db.collection(Call)
    coll.docs = CountingDocs(coll.docs)
    CountingDocs.scans = 0
    return db


async def no_scan(db: Database, qs: Any) -> list[Call]:
    """Run ``qs`` and check it did not scan the collection."""
    CountingDocs.scans = 0
    result: list[Call] = await qs
    assert CountingDocs.scans == 0, "the query scanned the collection"
    return result


def ref(db: Database, pred: Any) -> set[str | None]:
    return {d.uuid for d in dict.values(db.collection(Call).docs) if pred(d)}


def keys(docs: list[Call]) -> set[str | None]:
    return {d.uuid for d in docs}


async def test_a_scan_is_detected(db: Database) -> None:
    CountingDocs.scans = 0
    await Call.objects.using(db).filter(priority=3)
    assert CountingDocs.scans > 0


@pytest.mark.parametrize(
    ("lookups", "pred"),
    [
        ({"queue_id": 3}, lambda d: d.queue_id == 3),
        ({"queue_id__exact": "3"}, lambda d: d.queue_id == 3),
        ({"channel_id": "ch-7"}, lambda d: d.channel_id == "ch-7"),
        ({"queue_id__in": [1, 2]}, lambda d: d.queue_id in (1, 2)),
        ({"queue_id__in": []}, lambda d: False),
        ({"queue_id__lt": 2}, lambda d: d.queue_id < 2),
        ({"queue_id__lte": 2}, lambda d: d.queue_id <= 2),
        ({"queue_id__gt": 7}, lambda d: d.queue_id > 7),
        ({"queue_id__gte": 7}, lambda d: d.queue_id >= 7),
        ({"queue_id__range": (3, 5)}, lambda d: 3 <= d.queue_id <= 5),
        ({"channel_id__range": ("ch-10", "ch-12")}, lambda d: "ch-10" <= d.channel_id <= "ch-12"),
        ({"channel_id__isnull": True}, lambda d: d.channel_id is None),
        ({"channel_id": None}, lambda d: d.channel_id is None),
        ({"queue_id": 3, "priority__gt": 100}, lambda d: d.queue_id == 3 and d.priority > 100),
        ({"state": "talking", "queue_id__gte": 8}, lambda d: d.state == "talking" and d.queue_id >= 8),
    ],
)
async def test_indexed_lookups_do_not_scan(db: Database, lookups: dict[str, Any], pred: Any) -> None:
    found = await no_scan(db, Call.objects.using(db).filter(**lookups))
    assert keys(found) == ref(db, pred)


async def test_q_and_of_an_indexed_lookup_does_not_scan(db: Database) -> None:
    qs = Call.objects.using(db).filter(Q(queue_id=1) & Q(priority__lt=50))
    assert keys(await no_scan(db, qs)) == ref(db, lambda d: d.queue_id == 1 and d.priority < 50)


async def test_count_exists_first_get_use_the_index(db: Database) -> None:
    objects = Call.objects.using(db)
    CountingDocs.scans = 0
    assert await objects.filter(queue_id=4).count() == 20
    assert await objects.filter(queue_id=4).exists()
    assert await objects.find(channel_id="ch-9") is not None
    assert (await objects.get(channel_id="ch-9")).priority == 9
    assert CountingDocs.scans == 0


async def test_index_follows_assignment(db: Database) -> None:
    objects = Call.objects.using(db)
    doc = await objects.get(channel_id="ch-5")
    doc.queue_id = 99
    doc.channel_id = "renamed"
    assert keys(await no_scan(db, objects.filter(queue_id=99))) == {doc.uuid}
    assert doc.uuid not in keys(await no_scan(db, objects.filter(queue_id=5)))
    assert keys(await no_scan(db, objects.filter(queue_id__gt=50))) == {doc.uuid}
    assert await no_scan(db, objects.filter(channel_id="ch-5")) == []
    assert keys(await no_scan(db, objects.filter(channel_id="renamed"))) == {doc.uuid}


async def test_index_follows_update(db: Database) -> None:
    objects = Call.objects.using(db)
    assert await objects.filter(queue_id=2).update(queue_id=42, state="gone") == 20
    assert await no_scan(db, objects.filter(queue_id=2)) == []
    assert len(await no_scan(db, objects.filter(queue_id=42))) == 20
    assert len(await no_scan(db, objects.filter(queue_id__range=(40, 45)))) == 20
    assert len(await no_scan(db, objects.filter(state="gone"))) == 20


async def test_index_follows_delete(db: Database) -> None:
    objects = Call.objects.using(db)
    doc = await objects.get(channel_id="ch-3")
    assert objects.delete(doc)
    assert await no_scan(db, objects.filter(channel_id="ch-3")) == []
    assert doc.uuid not in keys(await no_scan(db, objects.filter(queue_id__lte=3)))
    assert await objects.filter(queue_id=1).delete() == 20
    assert await no_scan(db, objects.filter(queue_id=1)) == []
    assert await no_scan(db, objects.filter(queue_id__range=(1, 1))) == []
    # the freed unique value can be taken again
    objects.add(channel_id="ch-3")


async def test_index_follows_remote_changes(make_db: DbFactory) -> None:
    store = MemoryStore()
    a = await make_db(Call, store=store, location="a")
    b = await make_db(Call, store=store, location="b")
    on_a, on_b = Call.objects.using(a), Call.objects.using(b)
    doc = on_a.add(channel_id="r1", queue_id=1)
    await a.flush()
    await wait_for(lambda: doc.uuid in on_b, what="the add to reach b")
    remote = on_b[doc.uuid or ""]
    assert [d.uuid for d in await on_b.filter(queue_id=1)] == [doc.uuid]

    doc.queue_id = 2
    doc.channel_id = "r2"
    await a.flush()
    await wait_for(lambda: remote.queue_id == 2, what="the change to reach b")
    assert await on_b.filter(queue_id=1) == []
    assert await on_b.filter(queue_id__gte=2) == [remote]
    assert await on_b.filter(channel_id="r2") == [remote]
    assert await on_b.filter(channel_id="r1") == []
    with pytest.raises(UniqueViolation):
        on_b.add(channel_id="r2")

    await doc.delete()
    await a.flush()
    await wait_for(lambda: doc.uuid not in on_b, what="the delete to reach b")
    assert await on_b.filter(queue_id=2) == []
    assert await on_b.filter(queue_id__range=(0, 10)) == []
    on_b.add(channel_id="r2")  # free again


async def test_index_is_built_on_load(make_db: DbFactory) -> None:
    store = MemoryStore()
    a = await make_db(Call, store=store)
    for i in range(10):
        Call.objects.using(a).add(channel_id=f"l{i}", queue_id=i)
    await a.flush()
    b = await make_db(Call, store=store)
    coll = b.collection(Call)
    coll.docs = CountingDocs(coll.docs)
    found = await no_scan(b, Call.objects.using(b).filter(queue_id__range=(2, 4)))
    assert sorted(d.queue_id for d in found) == [2, 3, 4]
    with pytest.raises(UniqueViolation):
        Call.objects.using(b).add(channel_id="l3")


# -- unique ----------------------------------------------------------------------------------------
async def test_unique_on_add(make_db: DbFactory) -> None:
    db = await make_db(Call)
    objects = Call.objects.using(db)
    objects.add(channel_id="u1")
    with pytest.raises(UniqueViolation) as err:
        objects.add(channel_id="u1", queue_id=5)
    assert err.value.field == "channel_id"
    assert err.value.value == "u1"
    assert len(objects) == 1
    assert await objects.filter(queue_id=5) == []


async def test_unique_on_add_of_a_dict_and_of_an_instance(make_db: DbFactory) -> None:
    db = await make_db(Call)
    objects = Call.objects.using(db)
    objects.add({"channel_id": "u1"})
    with pytest.raises(UniqueViolation):
        objects.add({"channel_id": "u1"})
    with pytest.raises(UniqueViolation):
        objects.add(Call(channel_id="u1"))
    assert len(objects) == 1


async def test_unique_on_assignment_leaves_everything_unchanged(make_db: DbFactory) -> None:
    db = await make_db(Call)
    objects = Call.objects.using(db)
    objects.add(channel_id="a")
    b = objects.add(channel_id="b")
    await db.flush()
    with pytest.raises(UniqueViolation) as err:
        b.channel_id = "a"
    assert (err.value.field, err.value.value) == ("channel_id", "a")
    assert b.channel_id == "b"
    assert not b.is_dirty
    assert await objects.filter(channel_id="b") == [b]
    assert len(await objects.filter(channel_id="a")) == 1


async def test_assigning_own_unique_value_is_fine(make_db: DbFactory) -> None:
    db = await make_db(Call)
    a = Call.objects.using(db).add(channel_id="a")
    a.channel_id = "a"
    a.channel_id = "a2"
    a.channel_id = "a"
    assert await Call.objects.using(db).filter(channel_id="a") == [a]


async def test_unique_on_update(make_db: DbFactory) -> None:
    db = await make_db(Call)
    objects = Call.objects.using(db)
    a = objects.add(channel_id="a", queue_id=1)
    b = objects.add(channel_id="b", queue_id=2)
    c = objects.add(channel_id="c", queue_id=2)
    await db.flush()
    with pytest.raises(UniqueViolation) as err:
        await objects.filter(queue_id=2).update(channel_id="a")
    assert err.value.field == "channel_id"
    # two matches cannot both take one unique value
    with pytest.raises(UniqueViolation):
        await objects.filter(queue_id=2).update(channel_id="z", priority=5)
    assert (a.channel_id, b.channel_id, c.channel_id) == ("a", "b", "c")
    assert (b.priority, c.priority) == (0, 0)
    assert not any(d.is_dirty for d in (a, b, c))
    # one match may take a free value, or keep its own
    assert await objects.filter(channel_id="b").update(channel_id="z") == 1
    assert await objects.filter(channel_id="z").update(channel_id="z") == 1
    assert b.channel_id == "z"


async def test_none_is_allowed_many_times_in_a_unique_field(make_db: DbFactory) -> None:
    db = await make_db(Call)
    objects = Call.objects.using(db)
    docs = [objects.add(channel_id=None) for _ in range(3)]
    d4 = objects.add(channel_id="x")
    d4.channel_id = None
    assert await objects.filter(queue_id=0).update(channel_id=None) == 4
    assert len(await objects.filter(channel_id__isnull=True)) == 4
    docs[0].channel_id = "y"
    assert len(await objects.filter(channel_id=None)) == 3


async def test_collection_indexes_structure(db: Database) -> None:
    coll: Collection[Call] = db.collection(Call)
    assert set(coll.indexes) == {"channel_id", "queue_id", "state"}
    assert coll.indexes["channel_id"].unique
    assert not coll.indexes["queue_id"].unique


class Mixed(Base):
    code: Annotated[int | str, Indexed()] = 0


async def test_sorted_index_is_built_by_the_first_range_lookup_and_then_follows_changes(db: Database) -> None:
    objects = Call.objects.using(db)
    idx = db.collection(Call).indexes["queue_id"]
    assert idx.sorted is None  # equality-only use never pays for the sorted part
    assert await objects.filter(queue_id=3).count() == 20
    assert idx.sorted is None
    assert keys(await objects.filter(queue_id__gte=8)) == ref(db, lambda c: c.queue_id >= 8)
    assert idx.sorted is not None
    first = await objects.get(channel_id="ch-0")
    first.queue_id = 9
    await (await objects.get(channel_id="ch-1")).delete()
    objects.add(channel_id="new", queue_id=8)
    for lookup, pred in [
        ({"queue_id__gte": 8}, lambda c: c.queue_id >= 8),
        ({"queue_id__lt": 1}, lambda c: c.queue_id < 1),
        ({"queue_id__range": (2, 3)}, lambda c: 2 <= c.queue_id <= 3),
    ]:
        assert keys(await objects.filter(**lookup)) == ref(db, pred), lookup


async def test_range_on_values_that_do_not_order_falls_back_to_a_scan(make_db: DbFactory) -> None:
    db = await make_db(Mixed)
    objects = Mixed.objects.using(db)
    for code in (1, "a", 3, "b"):
        objects.add(code=code)
    assert [d.code for d in await objects.filter(code__gt=1)] == [3]
    assert [d.code for d in await objects.filter(code__gte="a")] == ["a", "b"]
    assert db.collection(Mixed).indexes["code"].orderable is False


async def test_sorted_index_recovers_once_the_value_that_did_not_order_is_gone(make_db: DbFactory) -> None:
    db = await make_db(Mixed)
    objects = Mixed.objects.using(db)
    docs = [objects.add(code=code) for code in (1, "a", 3, 2)]
    index = db.collection(Mixed).indexes["code"]
    assert [d.code for d in await objects.filter(code__gt=1)] == [3, 2]
    assert index.orderable is False
    assert index.sorted is None
    # Lookups after an add alone do not retry: the value that did not compare is still there.
    objects.add(code=5)
    assert [d.code for d in await objects.filter(code__gt=2)] == [3, 5]
    assert index.sorted is None
    docs[1].code = 4  # the str goes (a removal from the index), an int comes
    assert sorted(d.code for d in await objects.filter(code__gt=2)) == [3, 4, 5]
    assert index.orderable is True
    assert index.sorted is not None
    assert len(index.sorted) == 5
    # It follows changes again, and gives up again when a str comes back.
    objects.delete(docs[0])
    assert [d.code for d in await objects.filter(code__lt=3)] == [2]
    objects.add(code="z")
    assert index.sorted is None
    assert index.orderable is False
    assert [d.code for d in await objects.filter(code__lt=3)] == [2]
