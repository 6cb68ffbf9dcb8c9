"""What one node writes, every node reads back: with ``extra`` "forbid" or "ignore" ("allow" is
refused), and for values another writer stored with a ``uuid`` member (the key is the uuid)."""

from __future__ import annotations

import datetime
import math
from typing import Any

import orjson
import pytest
from helpers import DbFactory, wait_for
from pydantic import Field

from brainless_odm import Document, DocumentConfig, MemoryStore, Registry, codec
from brainless_odm.store.base import BucketConfig

REG = Registry()
BIG = 2**70 + 1  # beyond 64 bits: orjson reads it as a float, which rounds it


class Forbid(Document):
    model_config = DocumentConfig(registry=REG, extra="forbid")
    at: datetime.datetime = Field(strict=True)  # strict: a Python str is refused, JSON's is not
    big: int = BIG
    raw: bytes = b"\x01\xff"
    x: float = math.nan


class Ignore(Document):
    model_config = DocumentConfig(registry=REG)
    at: datetime.datetime = Field(strict=True)
    big: int = BIG


WHEN = datetime.datetime(2026, 11, 24, 12, 30, tzinfo=datetime.timezone.utc)


def _fields(doc: Document) -> dict[str, Any]:
    return {k: v for k, v in doc.model_dump().items() if not (isinstance(v, float) and math.isnan(v))}


@pytest.mark.parametrize("cls", [Forbid, Ignore])
async def test_what_one_node_writes_another_loads_and_receives(
    make_db: DbFactory, cls: type[Forbid | Ignore]
) -> None:
    store = MemoryStore()
    a = await make_db(cls, store=store, location="a")
    written = cls.objects.using(a).add(at=WHEN)
    await a.flush()
    b = await make_db(cls, store=store, location="b")
    loaded = cls.objects.using(b)[written.uuid or ""]
    assert _fields(loaded) == _fields(written)
    assert loaded.big == BIG
    written.big += 1
    await a.flush()
    await wait_for(lambda: loaded.big == BIG + 1, what="b to apply a's change")
    assert await b.dead_letters() == []


@pytest.mark.parametrize("cls", [Forbid, Ignore])
@pytest.mark.parametrize("member", ["someone-else", "not a key!", 5, None])
async def test_a_stored_uuid_member_is_ignored_by_every_class(
    make_db: DbFactory, cls: type[Forbid | Ignore], member: object
) -> None:
    """Before, a class that ignores unknown members validated it as the uuid field (and refused
    ``5`` or ``"not a key!"``), while a ``forbid`` class dropped it."""
    store = MemoryStore()
    namespace = f"u{abs(hash((cls.__name__, repr(member))))}"
    name = f"{namespace}-{cls.__odm__.collection}"
    await store.open_bucket(name, BucketConfig())
    value = orjson.dumps({"at": WHEN.isoformat(), "uuid": member})
    await store.bucket(name).put_raw("loaded", value)
    db = await make_db(cls, store=store, namespace=namespace)
    objects = cls.objects.using(db)
    assert objects["loaded"].uuid == "loaded"
    await store.bucket(name).put_raw("watched", value)
    await wait_for(lambda: "watched" in objects, what="the watch to apply the entry")
    assert objects["watched"].at == WHEN
    assert await db.dead_letters() == []


def test_decode_reports_values_that_are_not_documents() -> None:
    for value in (b"[1]", b"not json", b'{"at": "yesterday"}'):
        with pytest.raises(ValueError):
            codec.decode(Forbid, "k", value)
