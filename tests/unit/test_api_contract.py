"""The examples of ../shared/design/api.md (up to "Errors"), as written, in the in-memory mode.

Each statement below is one from the contract; the asserts say what the contract says it does.
"""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel, ValidationError

import brainless_odm
from brainless_odm import (
    BrainlessError,
    Database,
    DefinitionError,
    Document,
    DocumentConfig,
    DoesNotExist,
    Indexed,
    MultipleObjectsReturned,
    NotBoundError,
    Q,
    QueryError,
    Registry,
    Unique,
    UniqueViolation,
)

REG = Registry()


class Caller(BaseModel):
    number: str
    city: str | None = None


class Call(Document):
    model_config = DocumentConfig(registry=REG, collection="contract_call")

    channel_id: Annotated[str, Unique()]
    queue_id: Annotated[int, Indexed()]
    state: Annotated[str, Indexed()] = "waiting"
    priority: int = 0
    caller: Caller | None = None
    tags: list[str] = []  # noqa: RUF012 - a Pydantic default, copied per instance


class QueueItem(Document):
    model_config = DocumentConfig(registry=REG)

    name: str = ""


async def test_database_and_binding() -> None:
    with pytest.raises(NotBoundError, match="start"):
        Call.objects.add(channel_id="x", queue_id=1)
    db = Database(None, namespace="app", location="prague-1", documents=REG)
    await db.start()
    try:
        assert Call.objects.database is db  # the first started database that holds Call
        other = await Database(None, namespace="app", location="brno", documents=REG).start()
        assert Call.objects.database is db
        assert Call.objects.using(other).database is other
        await other.stop()
        assert QueueItem.__odm__.collection == "queue_item"  # QueueItem -> queue_item
        Call.objects.add(channel_id="c1", queue_id=1)
        assert await db.flush() == 1  # documents written or deleted
    finally:
        await db.stop()
    async with Database(None, namespace="app", location="prague-1", documents=REG) as db2:
        assert len(Call.objects.using(db2)) == 0  # in-memory: nothing persists


async def test_document_validation_uuid_and_dirtiness() -> None:
    async with Database(None, location="prague-1", documents=REG) as db:
        call = Call(channel_id="c1", queue_id=1, caller=Caller(number="1"))
        assert call.uuid is None
        with pytest.raises(ValidationError):
            call.priority = "high"  # type: ignore[assignment]
        assert call.priority == 0
        stored = Call.objects.add(call)
        assert stored is call
        assert call.uuid is not None
        assert call.dirty_fields == frozenset(Call.__odm__.data_fields)  # added, not yet flushed
        await db.flush()
        assert not call.is_dirty
        call.caller.city = "Brno"  # type: ignore[union-attr]
        call.tags.append("vip")
        assert call.dirty_fields == {"caller", "tags"}
        call.priority = 0  # an equal value is no change
        assert call.dirty_fields == {"caller", "tags"}
        explicit = Call.objects.add(channel_id="c2", queue_id=1, uuid="my-key")
        assert explicit.uuid == "my-key"
        assert await call.delete() is True
        assert call.uuid not in Call.objects.using(db)
    for reserved in ("uuid", "objects", "dirty_fields", "is_dirty", "delete"):
        with pytest.raises(DefinitionError):
            type(
                "Bad",
                (Document,),
                {"__annotations__": {reserved: int}, "model_config": {"registry": Registry()}},
            )


async def test_manager() -> None:
    async with Database(None, documents=REG) as db:
        objects = Call.objects.using(db)
        a = objects.add(channel_id="a", queue_id=1)
        b = objects.add({"channel_id": "b", "queue_id": 2})
        c = objects.add(Call(channel_id="c", queue_id=2), priority=3)
        with pytest.raises(UniqueViolation) as info:
            objects.add(channel_id="a", queue_id=9)
        assert (info.value.field, info.value.value) == ("channel_id", "a")
        objects.add(channel_id="n1", queue_id=5, caller=None)
        assert await objects.get(a.uuid) is a  # type: ignore[arg-type]
        assert await objects.get(channel_id="b") is b
        with pytest.raises(Call.DoesNotExist):
            await objects.get(channel_id="zzz")
        assert issubclass(Call.DoesNotExist, DoesNotExist)
        with pytest.raises(MultipleObjectsReturned):
            await objects.get(queue_id=2)
        assert await objects.find(channel_id="c") is c
        assert await objects.find(channel_id="zzz") is None
        assert len(await objects.all()) == 4
        assert objects[a.uuid] is a  # type: ignore[index]
        with pytest.raises(KeyError):
            objects["nope"]
        assert a.uuid in objects
        assert a in objects
        del objects[a]
        assert objects.delete(b) is True
        assert objects.delete(b) is False
        assert len(objects) == 2
        assert {d.channel_id for d in objects} == {"c", "n1"}


async def test_queryset_and_lookups() -> None:
    async with Database(None, documents=REG) as db:
        objects = Call.objects.using(db)
        objects.add(
            channel_id="a", queue_id=1, state="a", priority=1, caller=Caller(number="1", city="Prague")
        )
        objects.add(channel_id="b", queue_id=2, state="b", priority=7, tags=["vip"])
        objects.add(channel_id="c", queue_id=3, state="a", priority=5, caller=Caller(number="3", city="Brno"))

        async def ids(qs: brainless_odm.QuerySet[Call]) -> list[str]:
            return [d.channel_id async for d in qs]

        qs = objects.filter(state="a")
        assert await ids(qs.order_by("-priority", "channel_id")) == ["c", "a"]
        assert await ids(objects.filter(Q(state="a") | Q(priority__gt=5)).order_by("channel_id")) == [
            "a",
            "b",
            "c",
        ]
        assert await ids(objects.order_by("channel_id").limit(1).offset(1)) == ["b"]
        assert await ids(objects.order_by("channel_id").offset(1).limit(1)) == ["b"]
        assert await objects.filter(priority__gt="5").count() == 1  # "5" means 5
        with pytest.raises(QueryError):
            objects.filter(priority__gt="high")
        with pytest.raises(QueryError):
            objects.filter(nope=1)
        with pytest.raises(QueryError):
            objects.filter(priority__nope=1)
        assert await objects.filter(caller__city="Prague").count() == 1
        assert await objects.filter(caller__city__startswith="Pr").count() == 1
        assert await objects.filter(caller__city__gt="A").count() == 2  # None never matches nor raises
        assert (
            await objects.filter(caller=None).count()
            == await objects.filter(caller__isnull=True).count()
            == 1
        )
        assert await objects.filter(queue_id__in=[]).count() == 0
        assert await objects.filter(queue_id__nin=[]).count() == 3
        assert await objects.filter(tags__contains="vip").count() == 1
        assert await objects.filter(channel_id__icontains="A").count() == 1
        assert await objects.filter(queue_id__range=(2, 3)).count() == 2
        assert await objects.exclude(state="a").count() == 1
        assert await objects.filter(state="a").exists()
        first = await objects.order_by("priority").first()
        assert first is not None
        assert first.channel_id == "a"
        with pytest.raises(ValidationError):
            await objects.filter(state="a").update(priority="high")
        assert {d.priority for d in await objects.filter(state="a")} == {1, 5}  # none changed
        assert await objects.filter(state="a").update(priority=2) == 2
        assert await objects.filter(state="b").delete() == 1


def test_errors_share_the_root() -> None:
    for cls in (DoesNotExist, MultipleObjectsReturned, UniqueViolation, QueryError, NotBoundError):
        assert issubclass(cls, BrainlessError)
