"""brainless_odm through its public API only.

``class BenchItem(Document)`` with ``Indexed`` / ``Unique`` fields and a nested Pydantic model. Each
dataset is its own namespace (so its own bucket, ``{namespace}-bench_item``). Writes are
``BenchItem.objects.using(db).add(dict)`` for every document, then ``await db.flush()``; a load is
``await Database(...).start()``; queries are awaited ``filter`` calls; propagation assigns a field on
node A (``flush_interval=0``) and waits for node B's ``on_change``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from nats.js.errors import NotFoundError
from pydantic import BaseModel, Field

from bench.common import Dataset, Implementation, PropagationRun, Reader, Waiter
from bench.data import Doc
from brainless_odm import Database, Document, Indexed, Manager, Unique

#: The ODM's own default; the write workload flushes explicitly anyway.
FLUSH_INTERVAL = 0.1


class BenchCaller(BaseModel):
    number: str
    city: str | None = None


class BenchItem(Document):
    code: Annotated[str, Unique()]
    queue: Annotated[int, Indexed()]
    score: Annotated[int, Indexed()]
    state: str = "waiting"
    priority: int = 0
    name: str = ""
    caller: BenchCaller | None = None
    tags: list[str] = Field(default_factory=list)


COLLECTION = "bench_item"


class OdmReader(Reader):
    def __init__(self, db: Database) -> None:
        self.db = db
        self.objects: Manager[BenchItem] = BenchItem.objects.using(db)

    def count(self) -> int:
        return len(self.objects)

    async def query_eq(self, queue: int) -> int:
        return len(await self.objects.filter(queue=queue))

    async def query_range(self, lo: int, hi: int) -> int:
        return len(await self.objects.filter(score__range=(lo, hi)))

    async def query_scan(self, state: str) -> int:
        return len(await self.objects.filter(state=state))

    async def close(self) -> None:
        await self.db.stop()


class OdmDataset(Dataset):
    def __init__(self, impl: OdmImplementation, namespace: str) -> None:
        self.impl = impl
        self.namespace = namespace
        self.writer: Database | None = None
        self.keys: list[str] = []

    async def _node(self, nc: Any, location: str, flush_interval: float) -> Database:
        db = Database(
            nc,
            namespace=self.namespace,
            location=location,
            flush_interval=flush_interval,
            documents=[BenchItem],
        )
        await db.start()
        return db

    async def prepare(self) -> None:
        self.writer = await self._node(self.impl.ctx.nc_a, "node-a", FLUSH_INTERVAL)

    async def write(self, docs: Sequence[Doc]) -> None:
        assert self.writer is not None
        add = BenchItem.objects.using(self.writer).add
        keys: list[str] = []
        for doc in docs:
            uuid = add(doc).uuid
            assert uuid is not None
            keys.append(uuid)
        self.keys = keys
        await self.writer.flush()

    async def after_write(self) -> None:
        # Node A's job is done; stop it so it does not watch the later workloads.
        if self.writer is not None:
            await self.writer.stop()
            self.writer = None

    async def open_reader(self) -> Reader:
        return OdmReader(await self._node(self.impl.ctx.nc_b, "node-b", FLUSH_INTERVAL))

    @contextlib.asynccontextmanager
    async def propagation(self, reader: Reader) -> AsyncIterator[PropagationRun]:
        assert isinstance(reader, OdmReader)
        waiter = Waiter()

        def seen(old: BenchItem | None, new: BenchItem) -> None:
            waiter.seen(new.uuid or "")

        reader.objects.on_change(seen)
        node_a = await self._node(self.impl.ctx.nc_a, "node-a", 0)
        objects_a = BenchItem.objects.using(node_a)

        def change(i: int, key: str) -> None:
            doc = objects_a[key]
            doc.priority = (doc.priority + 1) % 10

        try:
            yield PropagationRun(self.keys, change, waiter)
        finally:
            reader.objects.off(seen)
            await node_a.stop()

    async def drop(self) -> None:
        if self.writer is not None:
            await self.writer.stop()
            self.writer = None
        js = self.impl.ctx.nc_a.jetstream()
        prefix = f"KV_{self.namespace}-"
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(prefix):
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(info.config.name)


class OdmImplementation(Implementation):
    name = "odm"

    def dataset(self, tag: str) -> OdmDataset:
        return OdmDataset(self, f"bench-odm-{self.ctx.run_id}-{tag}")
