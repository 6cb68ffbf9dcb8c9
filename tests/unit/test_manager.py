"""Manager (``Call.objects``): adding, dict-style access, deleting."""

from __future__ import annotations

from typing import Annotated

import pytest
from helpers import DbFactory
from pydantic import Field, ValidationError

from brainless_odm import Database, Document, DocumentConfig, Indexed, Manager, Registry, Unique

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Call(Base):
    channel_id: Annotated[str, Unique()]
    queue_id: Annotated[int, Indexed()] = 0
    priority: int = 0
    tags: list[str] = Field(default_factory=list)


@pytest.fixture
async def db(make_db: DbFactory) -> Database:
    return await make_db(Call)


async def test_add_keyword_fields(db: Database) -> None:
    call = Call.objects.using(db).add(channel_id="k", priority="3")
    assert isinstance(call, Call)
    assert call.priority == 3
    assert call.uuid is not None
    assert Call.objects.using(db)[call.uuid] is call


async def test_add_an_instance_returns_it(db: Database) -> None:
    call = Call(channel_id="i")
    assert Call.objects.using(db).add(call) is call
    assert call.uuid in Call.objects.using(db)
    assert Call.objects.using(db).add(call) is call  # adding it again is a no-op
    assert len(Call.objects.using(db)) == 1


async def test_add_a_dict(db: Database) -> None:
    call = Call.objects.using(db).add({"channel_id": "d", "priority": 2})
    assert (call.channel_id, call.priority) == ("d", 2)


async def test_add_a_dict_with_overrides(db: Database) -> None:
    call = Call.objects.using(db).add({"channel_id": "d", "priority": 2}, priority=4)
    assert (call.channel_id, call.priority) == ("d", 4)


async def test_add_an_instance_with_overrides_stores_a_new_document(db: Database) -> None:
    template = Call(channel_id="t", tags=["x"], priority=1)
    call = Call.objects.using(db).add(template, channel_id="t2")
    assert call is not template
    assert (call.channel_id, call.tags, call.priority) == ("t2", ["x"], 1)
    assert template.uuid is None
    assert len(Call.objects.using(db)) == 1
    await db.flush()
    call.tags.append("y")
    assert template.tags == ["x"]


async def test_a_stored_document_with_overrides_is_a_template_for_a_new_one(db: Database) -> None:
    objects = Call.objects.using(db)
    first = objects.add(channel_id="a", priority=3)
    second = objects.add(first, channel_id="b")
    assert second.uuid not in (None, first.uuid)
    assert (second.channel_id, second.priority) == ("b", 3)
    assert len(objects) == 2


async def test_add_validates(db: Database) -> None:
    objects = Call.objects.using(db)
    with pytest.raises(ValidationError):
        objects.add(channel_id="v", priority="high")
    with pytest.raises(ValidationError):
        objects.add({"priority": 1})
    with pytest.raises(ValidationError):
        objects.add(Call(channel_id="v"), priority="high")
    with pytest.raises(TypeError):
        objects.add(42)  # type: ignore[call-overload,arg-type]
    assert len(objects) == 0


async def test_add_a_document_of_another_database_is_refused(make_db: DbFactory) -> None:
    a, b = await make_db(Call), await make_db(Call)
    call = Call.objects.using(a).add(channel_id="x")
    with pytest.raises(Exception, match="another database"):
        Call.objects.using(b).add(call)
    copy = Call.objects.using(b).add(call.model_copy(update={"uuid": None}))
    assert copy.uuid != call.uuid


async def test_getitem_contains_len_iter(db: Database) -> None:
    objects = Call.objects.using(db)
    a = objects.add(channel_id="a")
    b = objects.add(channel_id="b")
    assert a.uuid is not None
    assert objects[a.uuid] is a
    with pytest.raises(KeyError):
        objects["missing"]
    assert a.uuid in objects
    assert a in objects
    assert "missing" not in objects
    assert Call(channel_id="loose") not in objects
    assert a.model_copy() not in objects  # same uuid, but not the stored document
    assert 42 not in objects
    assert len(objects) == 2
    assert {d.channel_id for d in objects} == {"a", "b"}
    for doc in objects:  # deleting while iterating is safe: iteration is over a snapshot
        objects.delete(doc)
    assert len(objects) == 0
    assert b not in objects


async def test_del_item(db: Database) -> None:
    objects = Call.objects.using(db)
    a = objects.add(channel_id="a")
    b = objects.add(channel_id="b")
    del objects[a.uuid or ""]
    del objects[b]
    assert len(objects) == 0
    with pytest.raises(KeyError):
        del objects["missing"]
    with pytest.raises(KeyError):
        del objects[a]


async def test_delete_returns_whether_it_existed(db: Database) -> None:
    objects = Call.objects.using(db)
    a = objects.add(channel_id="a")
    b = objects.add(channel_id="b")
    assert objects.delete(a) is True
    assert objects.delete(a) is False
    assert objects.delete(b.uuid or "") is True
    assert objects.delete(b.uuid or "") is False
    assert objects.delete("never") is False
    assert objects.delete(Call(channel_id="loose")) is False


async def test_doc_delete(db: Database) -> None:
    objects = Call.objects.using(db)
    a = objects.add(channel_id="a")
    await db.flush()
    assert await a.delete() is True
    assert a.uuid not in objects
    assert await a.delete() is False
    assert await Call(channel_id="loose").delete() is False
    await db.flush()
    entry = await db.store.bucket("test-call").get(a.uuid)  # type: ignore[attr-defined]
    assert entry is not None
    assert entry.value == b""  # a delete marker


async def test_delete_of_a_never_written_document_writes_nothing(db: Database) -> None:
    objects = Call.objects.using(db)
    a = objects.add(channel_id="a")
    objects.delete(a)
    assert await db.flush() == 0
    assert await db.store.bucket("test-call").get(a.uuid) is None  # type: ignore[attr-defined]


async def test_deleted_unique_value_is_free_again(db: Database) -> None:
    objects = Call.objects.using(db)
    a = objects.add(channel_id="a")
    await db.flush()
    objects.delete(a)
    again = objects.add(channel_id="a")
    assert await db.flush() == 2
    assert await objects.get(channel_id="a") is again


async def test_re_adding_a_deleted_document_keeps_it(db: Database) -> None:
    objects = Call.objects.using(db)
    a = objects.add(channel_id="a")
    await db.flush()
    objects.delete(a)
    objects.add(a)
    await db.flush()
    entry = await db.store.bucket("test-call").get(a.uuid)  # type: ignore[attr-defined]
    assert entry is not None
    assert Call.model_validate_json(entry.value).channel_id == "a"


async def test_all_returns_every_document(db: Database) -> None:
    objects = Call.objects.using(db)
    added = {objects.add(channel_id=str(i)).uuid for i in range(5)}
    assert {d.uuid for d in await objects.all()} == added


async def test_using_returns_a_typed_manager_bound_to_that_database(db: Database) -> None:
    m = Call.objects.using(db)
    assert isinstance(m, Manager)
    assert m.database is db
    assert m.model is Call
    assert Call.objects is Call.objects
