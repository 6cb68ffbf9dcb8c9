"""Static types of the public API, pinned with ``assert_type``: mypy strict checks this file
(``mypy tests/typing``) and pytest runs it against an in-memory database."""

from __future__ import annotations

import sys
from typing import Annotated

import pytest

from brainless_odm import (
    Database,
    DeadLetter,
    Document,
    DocumentConfig,
    Indexed,
    Manager,
    Q,
    QueryError,
    QuerySet,
    Registry,
    Unique,
)

if sys.version_info >= (3, 11):
    from typing import assert_type
else:  # pragma: no cover
    from typing_extensions import assert_type

REG = Registry()


class TypedBase(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Call(TypedBase):
    channel_id: Annotated[str, Unique()]
    queue_id: Annotated[int, Indexed()] = 0
    priority: int = 0


async def test_types() -> None:
    async with Database(None, documents=[Call]) as db:
        assert_type(Call.objects, Manager[Call])
        objects = Call.objects.using(db)
        assert_type(objects, Manager[Call])

        added = objects.add(channel_id="a", priority=1)
        assert_type(added, Call)
        assert_type(objects.add({"channel_id": "b"}), Call)
        assert_type(objects.add(Call(channel_id="c")), Call)

        qs = objects.filter(priority__gte=1)
        assert_type(qs, QuerySet[Call])
        assert_type(objects.exclude(Q(priority=0)), QuerySet[Call])
        assert_type(qs.order_by("-priority").limit(5).offset(0), QuerySet[Call])

        found = await qs
        assert_type(found, list[Call])
        assert found == [added]
        assert_type(await objects.filter(priority=1), list[Call])
        assert_type(await objects.all(), list[Call])

        one = await objects.find(channel_id="a")
        assert_type(one, Call | None)
        assert one is added

        got = await objects.get(channel_id="a")
        assert_type(got, Call)
        assert_type(await objects.get(added.uuid or ""), Call)

        first = await qs.first()
        assert_type(first, Call | None)
        assert_type(await qs.get(), Call)
        assert_type(await qs.count(), int)
        assert_type(await qs.exists(), bool)
        assert_type(await qs.update(priority=2), int)

        async for doc in objects.filter():
            assert_type(doc, Call)
        for doc in objects:
            assert_type(doc, Call)
        assert_type(objects[added.uuid or ""], Call)
        assert_type(objects.delete(added), bool)
        assert_type(await qs.delete(), int)
        assert_type(added.dirty_fields, frozenset[str])
        assert_type(added.is_dirty, bool)
        assert_type(await db.flush(), int)

        # A queryset is awaited or iterated with `async for`; a plain `for` is an error at run
        # time, and the checkers say so (the `ignore` fails mypy's warn_unused_ignores if not).
        with pytest.raises(TypeError):
            for _ in qs:  # type: ignore[misc]
                pass
        with pytest.raises(AttributeError):
            _ = added.objects  # type: ignore[arg-type]  # through the class only
        with pytest.raises(TypeError):
            Database("nats://127.0.0.1:4222")  # type: ignore[arg-type]  # a client, not a URL
        with pytest.raises(QueryError):
            await objects.get(added.uuid or "", priority=1)  # type: ignore[call-overload]  # one or the other

        # A dead letter's fixed value: the stored bytes, a str of JSON, or a mapping of the fields.
        letter = DeadLetter(collection=Call.__odm__.collection, key="fixed", error="", value=b"", revision=1)
        with pytest.raises(TypeError):
            await db.requeue_dead_letter(letter, 12)  # type: ignore[arg-type]  # not a value
        assert_type(await db.requeue_dead_letter(letter, {"channel_id": "fixed"}), Document)
