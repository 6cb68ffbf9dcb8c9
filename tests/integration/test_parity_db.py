"""Databases behave the same on a MemoryStore as on NATS: each test runs on both.

On NATS every node has its own connection to the session's server; in memory the nodes share one
``MemoryStore``, which is what ``docs/testing.md`` promises to behave like one NATS server.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sync_helpers import DbFactory, eventually

from brainless_odm import BucketNotFound, Database, Document, DocumentConfig, FlushError, Registry
from brainless_odm.store.memory import MemoryStore

pytestmark = pytest.mark.integration

REG = Registry()


class Note(Document):
    model_config = DocumentConfig(registry=REG)
    text: str = ""


class Expiring(Document):
    model_config = DocumentConfig(registry=REG, bucket_ttl=1)
    text: str = ""


Node = Callable[[str, type[Document]], Awaitable[Database]]


@pytest.fixture(params=["nats", "memory"])
async def node(
    request: pytest.FixtureRequest, make_db: DbFactory, brainless_namespace: str
) -> AsyncIterator[Node]:
    """``await node(location, cls)``: a started database holding ``cls``, on NATS or in memory."""
    if request.param == "nats":

        async def on_nats(location: str, cls: type[Document]) -> Database:
            return await make_db(documents=(cls,), location=location)

        yield on_nats
        return
    store = MemoryStore()
    started: list[Database] = []

    async def in_memory(location: str, cls: type[Document]) -> Database:
        db = Database(
            store, namespace=brainless_namespace, location=location, flush_interval=0.01, documents=[cls]
        )
        started.append(db)
        return await db.start()

    yield in_memory
    for db in reversed(started):
        with contextlib.suppress(Exception):
            await db.stop()


async def test_bucket_ttl_expires_documents_everywhere(node: Node) -> None:
    a = await node("a", Expiring)
    b = await node("b", Expiring)
    deleted: list[str | None] = []
    Expiring.objects.using(b).on_delete(lambda doc: deleted.append(doc.uuid))
    doc = Expiring.objects.using(a).add(text="short-lived")
    await a.flush()
    await eventually(lambda: doc.uuid in Expiring.objects.using(b), what="b to see the document")
    await eventually(
        lambda: doc.uuid not in Expiring.objects.using(a) and doc.uuid not in Expiring.objects.using(b),
        timeout=5,
        what="the document to expire on both nodes",
    )
    assert deleted == [doc.uuid]
    late = await node("late", Expiring)
    assert len(Expiring.objects.using(late)) == 0


async def test_a_recreated_bucket_serves_running_databases(node: Node) -> None:
    """Deleting a bucket under a running database fails its flushes; once another database
    creates it again, the running one writes to it and the other sees what it writes."""
    a = await node("a", Note)
    Note.objects.using(a).add(text="one")
    await a.flush()
    assert await a.store.delete_bucket(a.bucket_name("note")) is True
    Note.objects.using(a).add(text="two")
    with pytest.raises(FlushError) as failed:
        await a.flush()
    assert all(isinstance(exc, BucketNotFound) for _c, _k, exc in failed.value.failures)
    b = await node("b", Note)  # creates the bucket again, empty ("two" may be retried in already)
    assert {d.text for d in Note.objects.using(b)} <= {"two"}
    Note.objects.using(a).add(text="three")
    await a.flush()  # no FlushError: "three" (and "two", unless a background flush wrote it)
    await eventually(
        lambda: sorted(d.text for d in Note.objects.using(b)) == ["three", "two"],
        what="b to see a's writes",
    )
    # a's watch resumes too (after the revision it had applied: see docs/errors.md#bucketnotfound).
    Note.objects.using(b).add(text="four")
    await b.flush()
    await eventually(
        lambda: "four" in {d.text for d in Note.objects.using(a)}, timeout=10, what="a to see b's write"
    )
