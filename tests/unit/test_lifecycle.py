"""Database lifecycle edge cases: stop() with event callbacks, concurrent stops and flushes, stop()
during start(), stop() cancelled, and a database never stopped."""

from __future__ import annotations

import asyncio

from brainless_odm import Database, Document, DocumentConfig, Registry

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Item(Base):
    name: str = ""
    n: int = 0


# -- event callbacks at stop -----------------------------------------------------------------------
async def test_stopping_one_database_leaves_class_callbacks_of_another_running() -> None:
    """Class-level callbacks fire in every database; stopping one waited for (and after five
    seconds cancelled) those another database had started."""
    db1 = await Database(None, location="a", documents=[Item]).start()
    db2 = await Database(None, location="b", documents=[Item]).start()
    release = asyncio.Event()
    finished: list[str] = []

    async def audit(old: Item | None, new: Item) -> None:
        await release.wait()
        finished.append(new.name)

    Item.objects.on_change(audit, local=True)
    try:
        Item.objects.using(db2).add(name="in-db2")
        await asyncio.sleep(0)
        await asyncio.wait_for(db1.stop(), 1)  # db1 has nothing of its own to wait for
        release.set()
        await db2.stop()
    finally:
        Item.objects.off(audit)
    assert finished == ["in-db2"]
