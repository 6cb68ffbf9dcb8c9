"""docs/operations.md advises ``gc.freeze()`` after start-up: frozen objects are never examined by the
cyclic collector again, so this pins what the advice rests on — stored documents hold no reference cycle
once they leave the database (deleted here or remotely): reference counting alone frees them."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from helpers import DbFactory, wait_for
from pydantic import BaseModel, Field

from brainless_odm import Document, DocumentConfig, MemoryStore, Registry

registry = Registry()


class Leg(BaseModel):
    number: str
    tags: list[str] = Field(default_factory=list)


class Frozen(Document):
    model_config = DocumentConfig(registry=registry)

    name: str
    legs: list[Leg] = Field(default_factory=list)
    caller: Leg | None = None
    meta: dict[str, list[int]] = Field(default_factory=dict)


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    gc.collect()
    gc.disable()  # nothing but reference counting frees anything during the test
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()


async def test_documents_leave_without_the_cyclic_gc(make_db: DbFactory, frozen_heap: None) -> None:
    store = MemoryStore()
    db1 = await make_db(Frozen, store=store, location="a", flush_interval=60)
    db2 = await make_db(Frozen, store=store, location="b", flush_interval=60)
    m1 = Frozen.objects.using(db1)
    for i in range(50):
        doc = m1.add(
            name=f"n{i}", legs=[Leg(number="1", tags=["x"])], caller=Leg(number="2"), meta={"a": [1]}
        )
        doc.legs.append(Leg(number="3"))
        doc.meta["b"] = [2]
    del doc
    await db1.flush()
    await wait_for(lambda: len(Frozen.objects.using(db2)) == 50, what="replica")
    keys = sorted(d.uuid or "" for d in m1)[:25]
    # Weak references to the documents and to their nested models (gc.get_objects() cannot tell:
    # it skips frozen objects).
    refs = [
        weakref.ref(m)
        for db in (db1, db2)
        for key in keys
        for m in (
            Frozen.objects.using(db)[key],
            Frozen.objects.using(db)[key].caller,
            *Frozen.objects.using(db)[key].legs,
        )
    ]
    gc.freeze()
    for key in keys:
        m1.delete(key)  # deleted here: gone from db1 at once, from db2 by its watch
    await db1.flush()
    await wait_for(lambda: len(Frozen.objects.using(db2)) == 25, what="remote delete")
    alive = [r() for r in refs if r() is not None]
    assert alive == []
