"""brainlessdb 0.17.x, the published predecessor, used the way its README shows.

Schema: a ``BrainlessBucket`` msgspec struct with ``BrainlessDBFeat.INDEX`` / ``UNIQUE`` flags and a
nested ``BrainlessStruct``. brainlessdb names a bucket after the class, so every dataset gets its own
class (``msgspec.defstruct``) to get a fresh bucket. Writes go through ``collection.add`` and
``await db.flush()`` (one awaited put per document, as the library does); a load is
``await BrainlessDB(...).start()``; queries are ``collection.filter``: keyword equality (its index
for ``queue``), a predicate for the ``score`` range (it has no range lookup, so this scans) and
keyword equality on the non-indexed ``state`` (a scan). Propagation: ``collection.add`` of a changed
copy on a node A with ``flush_interval=0``, seen by node B's ``on_change``.

Not ``item.save()`` for updates: it finds the collection through a process-global ``uuid →
collection`` registry, which points at whichever of the two in-process nodes registered the uuid
last; ``collection.add`` (the README's "Add/update") names the node explicitly.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

import msgspec
from brainlessdb import BrainlessBucket, BrainlessDB, BrainlessDBFeat, BrainlessStruct, Collection
from msgspec import Meta
from nats.js.errors import BucketNotFoundError, NotFoundError

from bench.common import Dataset, Implementation, PropagationRun, Reader, Waiter
from bench.data import Doc

#: brainlessdb's own default; the write workload flushes explicitly anyway.
FLUSH_INTERVAL = 0.1
#: Buckets brainlessdb creates beside the collection's: its start() reports versions to the first,
#: the second receives dead letters.
SHARED_BUCKETS = ("brainless_meta", "brainless_dlq")

_INDEX = Meta(extra={"brainlessdb_flags": BrainlessDBFeat.INDEX})
_UNIQUE = Meta(extra={"brainlessdb_flags": BrainlessDBFeat.UNIQUE})


class BenchCaller(BrainlessStruct):  # type: ignore[misc]  # brainlessdb ships no type hints
    number: str = ""
    city: str | None = None


def _allows_app(cls: type, app: str) -> bool:
    return True


def item_class(name: str) -> type[BrainlessBucket]:
    """A fresh ``BrainlessBucket`` subclass called ``name`` (which becomes its bucket's name)."""
    fields: list[Any] = [
        ("code", Annotated[str, _UNIQUE]),
        ("queue", Annotated[int, _INDEX]),
        ("score", Annotated[int, _INDEX]),
        ("state", str, "waiting"),
        ("priority", int, 0),
        ("name", str, ""),
        ("caller", BenchCaller | None, None),
        ("tags", list[str], []),
    ]
    cls: type[BrainlessBucket] = msgspec.defstruct(
        name,
        fields,
        bases=(BrainlessBucket,),
        kw_only=True,
        namespace={"allows_app": classmethod(_allows_app)},
    )
    return cls


class BrainlessReader(Reader):
    def __init__(self, db: BrainlessDB, coll: Collection[Any]) -> None:
        self.db = db
        self.coll = coll

    def count(self) -> int:
        return len(self.coll)

    async def query_eq(self, queue: int) -> int:
        return len(self.coll.filter(queue=queue))

    async def query_range(self, lo: int, hi: int) -> int:
        return len(self.coll.filter(lambda i: lo <= i.score <= hi))

    async def query_scan(self, state: str) -> int:
        return len(self.coll.filter(state=state))

    async def close(self) -> None:
        await self.db.stop()


class BrainlessDataset(Dataset):
    def __init__(self, impl: BrainlessImplementation, cls: type[BrainlessBucket]) -> None:
        self.impl = impl
        self.cls = cls
        self.bucket = cls.__name__
        self.writer: BrainlessDB | None = None
        self.coll: Collection[Any] | None = None
        self.keys: list[str] = []

    async def _node(self, nc: Any, flush_interval: float) -> tuple[BrainlessDB, Collection[Any]]:
        db = BrainlessDB(nc, namespace="bench", flush_interval=flush_interval)
        coll = db.collection(self.cls)
        await db.start()
        return db, coll

    async def prepare(self) -> None:
        self.writer, self.coll = await self._node(self.impl.ctx.nc_a, FLUSH_INTERVAL)

    async def write(self, docs: Sequence[Doc]) -> None:
        assert self.writer is not None
        assert self.coll is not None
        add = self.coll.add
        self.keys = [str(add(doc).uuid) for doc in docs]
        await self.writer.flush()

    async def after_write(self) -> None:
        # Node A's job is done; stop it so it does not watch the later workloads.
        if self.writer is not None:
            await self.writer.stop()
            self.writer = None
        # ... and let its documents go: the other implementations' writes should not pay garbage
        # collection passes over them.
        self.coll = None

    async def open_reader(self) -> Reader:
        db, coll = await self._node(self.impl.ctx.nc_b, FLUSH_INTERVAL)
        return BrainlessReader(db, coll)

    @contextlib.asynccontextmanager
    async def propagation(self, reader: Reader) -> AsyncIterator[PropagationRun]:
        assert isinstance(reader, BrainlessReader)
        waiter = Waiter()
        reader.coll.on_change(lambda old, new: waiter.seen(str(new.uuid)))
        node_a, coll_a = await self._node(self.impl.ctx.nc_a, 0)

        def change(i: int, key: str) -> None:
            item = coll_a.get(key)
            coll_a.add(msgspec.structs.replace(item, priority=(item.priority + 1) % 10))

        try:
            yield PropagationRun(self.keys, change, waiter)
        finally:
            await node_a.stop()

    async def drop(self) -> None:
        if self.writer is not None:
            await self.writer.stop()
            self.writer = None
        with contextlib.suppress(BucketNotFoundError, NotFoundError):
            await self.impl.ctx.nc_a.jetstream().delete_key_value(self.bucket)


class BrainlessImplementation(Implementation):
    name = "brainlessdb"
    slow_writes = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seq = itertools.count()

    def dataset(self, tag: str) -> BrainlessDataset:
        # Bucket names allow [A-Za-z0-9_-]; brainlessdb wants class names like NameV<N>.
        name = f"BenchItem{self.ctx.run_id}{tag}x{next(self._seq)}V1".replace("-", "_")
        return BrainlessDataset(self, item_class(name))

    async def close(self) -> None:
        js = self.ctx.nc_a.jetstream()
        for bucket in SHARED_BUCKETS:
            with contextlib.suppress(BucketNotFoundError, NotFoundError):
                await js.delete_key_value(bucket)
