"""Database lifecycle edge cases: stop() with event callbacks, concurrent stops and flushes, stop()
during start(), stop() cancelled, and a database never stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from helpers import wait_for

from brainless_odm import (
    ConnectionLost,
    Database,
    DatabaseError,
    Document,
    DocumentConfig,
    FlushError,
    MemoryStore,
    NotBoundError,
    Registry,
    database,
)
from brainless_odm.store.base import WriteOp

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Item(Base):
    name: str = ""
    n: int = 0


class Outage:
    """Stands in for a server that is away: while ``down``, every write is a lost connection
    (retried for ever by flush()); ``calls`` counts the writes that reached the store."""

    def __init__(self, db: Database, cls: type[Document] = Item) -> None:
        self.down = False
        self.calls = 0
        coll = db.collection(cls)
        self.inner = coll.bucket
        coll.bucket = self  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, ops: Sequence[WriteOp]) -> list[Any]:
        await asyncio.sleep(0.005)
        if self.down:
            return [ConnectionLost("server away")] * len(ops)
        self.calls += 1
        return list(await self.inner.write(ops))


def stored(store: MemoryStore, namespace: str = "default") -> dict[str, int]:
    """name -> n of what ``store`` holds for Item."""
    bucket = store.bucket(f"{namespace}-item")
    out: dict[str, int] = {}
    for entry in bucket._latest.values():
        if entry.value:
            item = Item.model_validate_json(entry.value)
            out[item.name] = item.n
    return out


# -- concurrent stop() and flush() -----------------------------------------------------------------
async def test_a_flush_another_task_awaits_ends_when_stop_gives_up() -> None:
    """It went on retrying on the stopped database, and wrote, once the server was back, what
    stop() had reported unwritten."""
    store = MemoryStore()
    db = await Database(store, flush_interval=60, documents=[Item]).start()
    outage = Outage(db)
    outage.down = True
    Item.objects.using(db).add(name="x")
    user = asyncio.create_task(db.flush())  # a request handler awaiting its write, say
    await asyncio.sleep(0.05)
    with pytest.raises(FlushError) as stopped:
        await db.stop(timeout=0.1)
    assert [str(e) for _, _, e in stopped.value.failures] == ["not acknowledged within stop(timeout=0.1)"]
    done, _ = await asyncio.wait([user], timeout=1)
    assert done, "the application's flush outlived stop()"
    with pytest.raises(FlushError, match="stop\\(\\) gave up") as flushed:
        user.result()
    assert [k for _, k, _ in flushed.value.failures] == [k for _, k, _ in stopped.value.failures]
    assert isinstance(flushed.value.failures[0][2], DatabaseError)
    outage.down = False
    await asyncio.sleep(0.1)
    assert outage.calls == 0
    assert stored(store) == {}


async def test_a_flush_waiting_its_turn_behind_a_stop_that_gives_up_writes_nothing() -> None:
    store = MemoryStore()
    db = await Database(store, flush_interval=60, documents=[Item]).start()
    outage = Outage(db)
    outage.down = True
    Item.objects.using(db).add(name="x")
    first = asyncio.create_task(db.flush())
    await asyncio.sleep(0.02)
    second = asyncio.create_task(db.flush())  # waits for the first one's lock
    await asyncio.sleep(0.02)
    with pytest.raises(FlushError):
        await db.stop(timeout=0.1)
    done, _ = await asyncio.wait([first, second], timeout=1)
    assert len(done) == 2
    for task in (first, second):
        with pytest.raises(FlushError):
            task.result()
    outage.down = False
    await asyncio.sleep(0.1)
    assert outage.calls == 0


async def test_a_flush_waiting_its_turn_while_stop_writes_everything_returns() -> None:
    store = MemoryStore()
    db = await Database(store, flush_interval=60, documents=[Item]).start()
    outage = Outage(db)
    outage.down = True
    Item.objects.using(db).add(name="x")
    stopping = asyncio.create_task(db.stop())
    await asyncio.sleep(0.02)  # stop()'s flush holds the lock, retrying
    waiting = asyncio.create_task(db.flush())
    await asyncio.sleep(0.02)
    outage.down = False
    assert await asyncio.wait_for(waiting, 1) == 0  # stop() wrote it
    await stopping
    assert stored(store) == {"x": 0}


async def test_concurrent_stops_share_one_shutdown() -> None:
    db = await Database(None, documents=[Item]).start()
    closes = 0
    close = db.store.close

    async def counting_close() -> None:
        nonlocal closes
        closes += 1
        await close()

    db.store.close = counting_close  # type: ignore[method-assign]
    Item.objects.using(db).add(name="x")
    assert await asyncio.gather(db.stop(), db.stop()) == [None, None]
    assert closes == 1


async def test_a_timed_stop_gives_up_for_an_untimed_one_too() -> None:
    """The untimed stop() went on writing after the timed one had reported the document lost."""
    store = MemoryStore()
    db = await Database(store, flush_interval=60, documents=[Item]).start()
    outage = Outage(db)
    outage.down = True
    Item.objects.using(db).add(name="y")
    untimed = asyncio.create_task(db.stop())
    await asyncio.sleep(0.02)
    with pytest.raises(FlushError) as timed:
        await db.stop(timeout=0.1)
    done, _ = await asyncio.wait([untimed], timeout=1)
    assert done, "the untimed stop() went on flushing"
    with pytest.raises(FlushError) as other:
        untimed.result()
    assert other.value.failures == timed.value.failures
    outage.down = False
    await asyncio.sleep(0.1)
    assert outage.calls == 0
    assert stored(store) == {}


async def test_a_cancelled_stop_still_stops_and_logs_what_it_left(caplog: pytest.LogCaptureFixture) -> None:
    """``asyncio.timeout`` around stop() while the server was away left the database started,
    still the default binding, its watch running, and nothing said which documents were lost."""
    store = MemoryStore()
    db = await Database(store, flush_interval=60, documents=[Item]).start()
    outage = Outage(db)
    outage.down = True
    doc = Item.objects.using(db).add(name="x")
    with caplog.at_level("ERROR", logger="brainless_odm"), pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(db.stop(), 0.1)
    assert not db.started
    assert db.documents == [Item]
    with pytest.raises(NotBoundError):
        len(Item.objects)
    assert all(c.watch_task is None for c in db._collections.values())
    assert doc.uuid is not None
    assert any(doc.uuid in r.getMessage() and "cancelled" in r.getMessage() for r in caplog.records)
    await db.stop()  # done already: returns
    outage.down = False
    await asyncio.sleep(0.05)
    assert outage.calls == 0


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


async def test_what_an_async_callback_changes_while_stop_runs_is_written() -> None:
    """stop() flushed, detached the documents, and only then waited for the callbacks: what they
    changed (here: the result of a slow call) was silently dropped."""
    store = MemoryStore()
    db = await Database(store, flush_interval=60, documents=[Item]).start()

    async def on_change(old: Item | None, new: Item) -> None:
        if old is None:
            await asyncio.sleep(0.05)  # an HTTP call, say
            new.n = 42

    Item.objects.using(db).on_change(on_change, local=True)
    Item.objects.using(db).add(name="x")
    await asyncio.sleep(0)
    await db.stop()
    assert stored(store) == {"x": 42}


async def test_a_change_made_after_stops_last_flush_is_reported() -> None:
    store = MemoryStore()
    db = await Database(store, flush_interval=60, documents=[Item]).start()
    doc = Item.objects.using(db).add(name="x")
    coll = db.collection(Item)
    stop_watch = coll.stop_watch

    async def change_then_stop_watch() -> None:
        doc.n = 5  # as a callback the watch fired just before it ended would
        await stop_watch()

    coll.stop_watch = change_then_stop_watch  # type: ignore[method-assign]
    with pytest.raises(FlushError, match="after stop\\(\\)'s last flush") as info:
        await db.stop()
    assert [(c, k) for c, k, _ in info.value.failures] == [("item", doc.uuid)]
    assert stored(store) == {"x": 0}


async def test_an_async_callback_may_await_stop() -> None:
    """stop() waited five seconds for the very callback awaiting it, then cancelled it (which
    then got CancelledError after its own stop() had returned)."""
    db = await Database(None, flush_interval=60, documents=[Item]).start()
    after: list[str] = []

    async def on_delete(doc: Item) -> None:
        await db.stop()
        await asyncio.sleep(0)  # goes on normally once stop() returned
        after.append(doc.name)

    Item.objects.using(db).on_delete(on_delete, local=True)
    Item.objects.using(db).delete(Item.objects.using(db).add(name="x"))
    await wait_for(lambda: after, timeout=1, what="the callback to finish")
    assert after == ["x"]
    assert not db.started


async def test_a_remote_change_callback_may_await_stop() -> None:
    store = MemoryStore()
    db = await Database(store, location="a", documents=[Item]).start()
    other = await Database(store, location="b", documents=[Item]).start()
    returned = asyncio.Event()

    async def on_change(old: Item | None, new: Item) -> None:
        await db.stop()
        returned.set()

    Item.objects.using(db).on_change(on_change)
    Item.objects.using(other).add(name="x")
    await other.flush()
    await asyncio.wait_for(returned.wait(), 1)
    await other.stop()


async def test_a_callback_starting_to_await_stop_while_stop_waits_for_it() -> None:
    db = await Database(None, flush_interval=60, documents=[Item]).start()
    stopped_by_callback = asyncio.Event()

    async def on_change(old: Item | None, new: Item) -> None:
        await asyncio.sleep(0.05)  # stop() is waiting for this callback by now
        await db.stop()
        stopped_by_callback.set()

    Item.objects.using(db).on_change(on_change, local=True)
    Item.objects.using(db).add(name="x")
    await asyncio.sleep(0)
    await asyncio.wait_for(db.stop(), 1)
    await asyncio.wait_for(stopped_by_callback.wait(), 1)


async def test_a_stuck_callback_is_cancelled_at_the_drain_deadline(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(database, "_DRAIN_TIMEOUT", 0.1)
    db = await Database(None, flush_interval=60, documents=[Item]).start()
    started = asyncio.Event()
    tasks: list[asyncio.Task[Any] | None] = []

    async def stuck(old: Item | None, new: Item) -> None:
        tasks.append(asyncio.current_task())
        started.set()
        await asyncio.Event().wait()

    Item.objects.using(db).on_change(stuck, local=True)
    Item.objects.using(db).add(name="x")
    await started.wait()
    with caplog.at_level("WARNING", logger="brainless_odm"):
        await asyncio.wait_for(db.stop(), 2)
    assert any("still running at stop(): cancelled" in r.getMessage() for r in caplog.records)
    task = tasks[0]
    assert task is not None
    assert task.cancelled()


async def test_a_timed_stop_does_not_wait_five_seconds_for_callbacks() -> None:
    db = await Database(None, flush_interval=60, documents=[Item]).start()

    async def slow(old: Item | None, new: Item) -> None:
        await asyncio.sleep(30)

    Item.objects.using(db).on_change(slow, local=True)
    Item.objects.using(db).add(name="x")
    await asyncio.sleep(0)
    await asyncio.wait_for(db.stop(timeout=0.1), 1)


# -- stop() during start() -------------------------------------------------------------------------
class Other(Base):
    x: int = 0


class SlowOpen(MemoryStore):
    """A store whose second bucket opens only once ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.opening = asyncio.Event()
        self.release = asyncio.Event()
        self.opened = 0

    async def open_bucket(self, name: str, config: Any) -> Any:
        self.opened += 1
        if self.opened == 2:
            self.opening.set()
            await self.release.wait()
        return await super().open_bucket(name, config)


async def test_stop_during_start_ends_the_start() -> None:
    """stop() returned "stopped", then start() went on and set "started": watches running, and the
    default binding back on a database its owner had stopped."""
    store = SlowOpen()
    db = Database(store, documents=[Item, Other])
    starting = asyncio.create_task(db.start())
    await asyncio.wait_for(store.opening.wait(), 1)
    await asyncio.wait_for(db.stop(), 1)
    assert not db.started
    done, _ = await asyncio.wait([starting], timeout=1)
    assert done, "start() went on after stop()"
    with pytest.raises(DatabaseError, match="stop\\(\\) was called while start\\(\\) ran"):
        starting.result()
    assert not starting.cancelled()
    assert not db.started
    assert all(c.watch_task is None for c in db._collections.values())
    with pytest.raises(NotBoundError):
        len(Item.objects)
    await db.stop()  # still idempotent
    with pytest.raises(DatabaseError, match="already called"):
        await db.start()


async def test_stop_during_start_that_ignores_the_cancellation() -> None:
    """start() that goes on after stop() cancelled it (a store answering in the very iteration of
    the cancellation) stops before it would start."""
    store = SlowOpen()
    real_wait = store.release.wait

    async def deaf_wait() -> bool:
        try:
            return await real_wait()
        except asyncio.CancelledError:
            return True  # as nats-py's wait_for did before Python 3.12

    store.release.wait = deaf_wait  # type: ignore[method-assign]
    db = Database(store, documents=[Item, Other])
    starting = asyncio.create_task(db.start())
    await asyncio.wait_for(store.opening.wait(), 1)
    await asyncio.wait_for(db.stop(), 1)
    done, _ = await asyncio.wait([starting], timeout=1)
    assert done, "start() went on after stop()"
    with pytest.raises(DatabaseError, match="stop\\(\\) was called while start\\(\\) ran"):
        starting.result()
    assert not db.started
    assert all(c.watch_task is None for c in db._collections.values())


async def test_start_cancelled_by_its_caller_is_a_cancellation() -> None:
    store = SlowOpen()
    db = Database(store, documents=[Item, Other])
    starting = asyncio.create_task(db.start())
    await asyncio.wait_for(store.opening.wait(), 1)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert not db.started
    await db.stop()


# -- never stopped ---------------------------------------------------------------------------------
class Orphan(Base):
    n: int = 0


async def start_and_add(n: int) -> Database:
    db = await Database(None, flush_interval=60, documents=[Orphan]).start()
    Orphan.objects.using(db).add(n=n)
    return db


def lost_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "was not stopped" in r.getMessage()]


def test_a_database_never_stopped_warns_when_asyncio_run_ends(caplog: pytest.LogCaptureFixture) -> None:
    """The changes of the last flush_interval were lost without a word."""
    dbs: list[Database] = []

    async def main() -> None:
        dbs.append(await start_and_add(1))  # and returns without stop()

    try:
        with caplog.at_level("WARNING", logger="brainless_odm"):
            asyncio.run(main())
    finally:
        dbs[0]._unbind()  # not the default database of later tests
    [message] = lost_warnings(caplog)
    assert "event loop is ending" in message
    assert "1 unwritten change(s) are lost (orphan/" in message
    assert "await db.stop()" in message


def test_a_database_never_stopped_warns_when_the_process_exits(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        db = loop.run_until_complete(start_and_add(2))
        with caplog.at_level("WARNING", logger="brainless_odm"):
            database._warn_unstopped_at_exit()  # what atexit runs
            database._warn_unstopped_at_exit()  # once is enough
        [message] = lost_warnings(caplog)
        assert "the process is exiting" in message
        loop.run_until_complete(db.stop())
    finally:
        loop.close()


def test_a_stopped_database_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        db = await start_and_add(3)
        await db.stop()

    with caplog.at_level("WARNING", logger="brainless_odm"):
        asyncio.run(main())
        database._warn_unstopped_at_exit()
    assert lost_warnings(caplog) == []


async def test_a_callback_returning_a_future_is_drained_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database, "_DRAIN_TIMEOUT", 0.05)
    db = await Database(None, flush_interval=60, documents=[Item]).start()
    futures: list[asyncio.Future[None]] = []

    def pending(old: Item | None, new: Item) -> asyncio.Future[None]:
        futures.append(asyncio.get_running_loop().create_future())  # never resolved
        return futures[-1]

    Item.objects.using(db).on_change(pending, local=True)
    Item.objects.using(db).add(name="x")
    await asyncio.wait_for(db.stop(), 2)
    assert futures[0].cancelled()
