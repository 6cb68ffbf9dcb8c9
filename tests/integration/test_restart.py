"""A NATS server restart (same port, same store) in the middle of a stream of writes, end to end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from sync_helpers import Call, DbFactory, dumps, eventually

from brainless_odm import Database, FlushError
from brainless_odm.exceptions import ConnectionClosed, ConnectionLost
from brainless_odm.store.base import Bucket, BucketConfig, WriteOp
from brainless_odm.store.nats import NatsKVStore, connect
from brainless_odm.testing import NatsServer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("how", ["restart", "outage"])
async def test_server_restart_mid_writes_loses_nothing_and_watch_resumes(
    make_db: DbFactory, tmp_path: Path, how: str
) -> None:
    """``restart``: the server restarted at once; ``outage``: stopped while 300 more documents
    are added, then started again. Same port and store both times."""
    # Our own server: the session one is shared with every other test.
    server = NatsServer(store_dir=tmp_path / "js")
    await server.start()
    try:
        writer = await make_db(url=server.url, location="writer", flush_interval=0.05)
        reader = await make_db(url=server.url, location="reader")
        seen: dict[str, float] = {}
        Call.objects.using(reader).on_change(
            lambda old, new: seen.setdefault(new.channel_id, time.monotonic())
        )

        restarted_at = 0.0
        restart_done = asyncio.Event()
        down_since = 0.0

        async def restart() -> None:
            nonlocal restarted_at, down_since
            down_since = time.monotonic()
            await server.restart()
            restarted_at = time.monotonic()
            restart_done.set()

        async def stop() -> None:
            nonlocal down_since
            down_since = time.monotonic()
            await server.stop()  # our own store_dir: kept

        async def start() -> None:
            nonlocal restarted_at
            await server.start()
            restarted_at = time.monotonic()
            restart_done.set()

        restart_task: asyncio.Task[None] | None = None
        first_after: str | None = None
        docs = []
        for i in range(2000):
            docs.append(Call.objects.using(writer).add(channel_id=f"c-{i}", queue_id=i % 7))
            if i % 5 == 0:
                docs[i // 2].priority = i  # updates of earlier documents in the stream too
            if how == "restart" and i == 600:
                restart_task = asyncio.create_task(restart())
            elif how == "outage" and i == 600:
                restart_task = asyncio.create_task(stop())
            elif how == "outage" and i == 900:
                assert restart_task is not None
                await restart_task
                restart_task = asyncio.create_task(start())
            if first_after is None and restart_done.is_set():
                first_after = f"c-{i}"
            await asyncio.sleep(0.002)
        assert restart_task is not None
        await restart_task
        assert first_after is not None, "the restart took longer than the stream of writes"

        await asyncio.wait_for(writer.flush(), 30)
        expected = dumps(writer)
        assert len(expected) == 2000
        await eventually(lambda: first_after in seen, timeout=10, what="the reader's watch to resume")
        resume = seen[first_after] - restarted_at
        print(
            f"\n{how}: server down {restarted_at - down_since:.2f}s; the reader saw the first write "
            f"made after the restart ({first_after}) {resume:.2f}s after the server was back"
        )
        assert resume < 3.0
        await eventually(lambda: dumps(reader) == expected, timeout=10, what="the reader to catch up")

        fresh = await make_db(url=server.url, location="fresh")
        assert dumps(fresh) == expected  # nothing acknowledged was lost, nothing duplicated
        assert await Call.objects.using(fresh).filter(queue_id=3).count() == sum(
            1 for v in expected.values() if v["queue_id"] == 3
        )
        for db in (fresh, reader, writer):
            await asyncio.wait_for(db.stop(), 10)
    finally:
        await server.stop()


async def test_two_writers_through_an_outage_lose_no_update(make_db: DbFactory, tmp_path: Path) -> None:
    """Two nodes keep editing shared documents (one field each, plus a contested one) while the
    server goes away and comes back: each node's last value of its own field survives everywhere."""
    server = NatsServer(store_dir=tmp_path / "js")
    await server.start()
    try:
        a = await make_db(url=server.url, location="a", flush_interval=0.02)
        b = await make_db(url=server.url, location="b", flush_interval=0.02)
        keys = [str(Call.objects.using(a).add(channel_id=f"c-{i}").uuid) for i in range(50)]
        await a.flush()
        await eventually(lambda: len(Call.objects.using(b)) == 50, what="the adds on B")
        last: dict[str, dict[str, object]] = {"priority": {}, "note": {}}
        while_down = 0

        async def edit(db: Database, field: str, seed: int) -> None:
            nonlocal while_down
            rng = random.Random(seed)
            for i in range(1, 1001):
                key = rng.choice(keys)
                doc = Call.objects.using(db)[key]
                value: object = i if field == "priority" else f"{db.location}-{i}"
                setattr(doc, field, value)
                last[field][key] = value
                while_down += not server.running
                if i % 7 == 0:
                    doc.state = f"{db.location}-{i}"  # contested: must only converge
                await asyncio.sleep(0.002)

        async def outage() -> None:
            await asyncio.sleep(0.4)
            await server.stop()  # our own store_dir: kept
            await asyncio.sleep(0.7)
            await server.start()

        await asyncio.gather(edit(a, "priority", 1), edit(b, "note", 2), outage())
        assert while_down > 100  # many edits made while the server was away
        await asyncio.wait_for(asyncio.gather(a.flush(), b.flush()), 30)
        await eventually(lambda: dumps(a) == dumps(b), timeout=10, what="the nodes to agree")
        state = dumps(a)
        for key in keys:
            assert state[key]["priority"] == last["priority"].get(key, 0)
            assert state[key]["note"] == last["note"].get(key, "")
        fresh = await make_db(url=server.url, location="fresh")
        assert dumps(fresh) == state
        for db in (fresh, a, b):
            await asyncio.wait_for(db.stop(), 10)
    finally:
        await server.stop()


async def test_server_gone_for_good_keeps_serving_from_memory_and_stop_reports_what_was_not_written(
    make_db: DbFactory, tmp_path: Path
) -> None:
    server = NatsServer(store_dir=tmp_path / "js")
    await server.start()
    try:
        db = await make_db(url=server.url, flush_interval=0.05)
        doc = Call.objects.using(db).add(channel_id="c-1")
        await db.flush()
        await server.stop()
        doc.priority = 7  # uptime over consistency: local changes and queries go on
        assert [d.uuid for d in await Call.objects.using(db).filter(priority=7)] == [doc.uuid]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(db.flush(), 1.0)  # retried until acknowledged, not dropped
        assert doc.is_dirty
        t0 = time.monotonic()
        with pytest.raises(FlushError) as info:
            await db.stop(timeout=1.0)
        assert time.monotonic() - t0 < 5
        assert [(c, k) for c, k, _ in info.value.failures] == [("call", doc.uuid)]
    finally:
        await server.stop()


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A nats-server of this test's own, so it may be frozen; thawed and stopped afterwards.
    (Ask for it before ``make_db``: the databases stop first.)"""
    server = NatsServer(store_dir=tmp_path / "js")
    await server.start()
    try:
        yield server
    finally:
        if server.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGCONT)
        await server.stop()


def _process_state(pid: int) -> str:
    """The one-letter state of process ``pid`` (Linux ``/proc``)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def freeze(pid: int) -> None:
    """SIGSTOP our own server and wait until the kernel reports it stopped (the signal is
    asynchronous: a publish sent right after it could still be answered)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if _process_state(pid) in ("T", "t"):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"nats-server {pid} did not stop")


async def flush_given_up_while_frozen(db: Database, pid: int) -> None:
    """``db``'s flush gives up on our frozen server, which then thaws and stores what it was
    sent: the writes land, and ``db`` does not know."""
    await freeze(pid)
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(db.flush(), 0.5)
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("edit", ["update", "create", "delete"])
async def test_flush_cancelled_while_waiting_for_acks_keeps_the_changes(
    own_server: NatsServer, make_db: DbFactory, edit: str
) -> None:
    """``wait_for(db.flush(), t)`` or ``stop(timeout=t)`` giving up while publishes await their
    acks (a frozen server): the changes stay pending and dirty, ``stop`` names them, and once the
    server answers again they are written, not lost."""
    server = own_server
    pid = server.pid
    assert pid is not None
    a = await make_db(url=server.url, location="a", flush_interval=60)
    b = await make_db(url=server.url, location="b", flush_interval=60)
    objects = Call.objects.using(a)
    old = objects.add(channel_id="old", priority=1)
    await a.flush()
    await eventually(lambda: old.uuid in Call.objects.using(b), what="the document on B")
    if edit == "update":
        old.priority = 7
        doc = old
    elif edit == "create":
        doc = objects.add(channel_id="new", priority=3)
    else:
        await old.delete()
    await freeze(pid)  # our own server: it keeps the connections but answers nothing
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(a.flush(), 0.5)
        coll = a.collection(Call)
        assert coll.dirty_keys() == {old.uuid if edit != "create" else doc.uuid}
        if edit != "delete":
            assert doc.is_dirty
            assert not doc._odm_inflight  # not "in flight": nothing would ever settle it
        assert a._flush_handle is not None  # the background flush will write them
    finally:
        os.kill(pid, signal.SIGCONT)
    await asyncio.wait_for(a.flush(), 10)
    if edit == "update":
        await eventually(lambda: Call.objects.using(b)[old.uuid].priority == 7, what="the update on B")
    elif edit == "create":
        await eventually(lambda: doc.uuid in Call.objects.using(b), what="the create on B")
    else:
        await eventually(lambda: old.uuid not in Call.objects.using(b), what="the delete on B")
    assert dumps(a) == dumps(b)


async def test_stop_with_timeout_names_the_changes_whose_acks_never_came(
    own_server: NatsServer, make_db: DbFactory
) -> None:
    server = own_server
    pid = server.pid
    assert pid is not None
    a = await make_db(url=server.url, location="a", flush_interval=60)
    docs = [Call.objects.using(a).add(channel_id=f"c-{i}") for i in range(3)]
    await a.flush()
    docs[1].priority = 5
    await freeze(pid)
    try:
        with pytest.raises(FlushError) as info:
            await a.stop(timeout=0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert [(c, k) for c, k, _ in info.value.failures] == [("call", docs[1].uuid)]


@pytest.mark.parametrize("edited", [False, True], ids=["retried as it was", "edited before the retry"])
async def test_write_of_unknown_outcome_does_not_win_over_a_later_write_it_never_saw(
    own_server: NatsServer, make_db: DbFactory, edited: bool
) -> None:
    """A's flush gives up on a frozen server; its write lands when the server thaws, but A's
    watch is behind and B overwrites the field first, so A never sees its own write (the bucket
    keeps one revision a key). B's later value must win everywhere, and A's edit made since must
    still be written. On NATS a retry with a stale compare-and-set is refused before its write id
    is looked at, so this is the server's real order, not the in-memory store's."""
    server = own_server
    pid = server.pid
    assert pid is not None
    a = await make_db(url=server.url, location="a", flush_interval=60)
    b = await make_db(url=server.url, location="b", flush_interval=60)
    doc = Call.objects.using(a).add(channel_id="c", priority=1)
    await a.flush()
    key = doc.uuid
    assert key is not None
    await eventually(lambda: key in Call.objects.using(b), what="the document on B")
    coll = a.collection(Call)
    await coll.stop_watch()  # A's watch falls behind
    doc.priority = 7
    await flush_given_up_while_frozen(a, pid)
    remote = Call.objects.using(b)[key]
    await eventually(lambda: remote.priority == 7, what="A's write, landed after all, on B")
    remote.priority = 9
    await b.flush()
    if edited:
        doc.note = "edited since"
    coll.start_watch()  # only B's revision is left to see
    await eventually(lambda: doc._odm_rev == remote._odm_rev, what="A's watch to catch up")
    await asyncio.wait_for(a.flush(), 10)
    expected_note = "edited since" if edited else ""
    assert (doc.priority, doc.note) == (9, expected_note)
    assert not doc.is_dirty
    await eventually(lambda: remote.note == expected_note, what="the edit on B")
    assert remote.priority == 9
    fresh = await make_db(url=server.url, location="fresh")
    assert dumps(fresh) == dumps(a) == dumps(b)


async def test_a_delete_of_unknown_outcome_does_not_remove_a_later_recreate(
    own_server: NatsServer, make_db: DbFactory
) -> None:
    """A's delete lands when the frozen server thaws, after A's flush gave up on it; B sees it and
    creates the key again before A retries. The retry carries the same write id, so JetStream
    answers it as a duplicate and B's document stays, on every node."""
    server = own_server
    pid = server.pid
    assert pid is not None
    a = await make_db(url=server.url, location="a", flush_interval=60)
    b = await make_db(url=server.url, location="b", flush_interval=60)
    doc = Call.objects.using(a).add(channel_id="first")
    await a.flush()
    key = doc.uuid
    assert key is not None
    await eventually(lambda: key in Call.objects.using(b), what="the document on B")
    await doc.delete()
    await flush_given_up_while_frozen(a, pid)
    await eventually(lambda: key not in Call.objects.using(b), what="A's delete, landed after all, on B")
    Call.objects.using(b).add(Call(uuid=key, channel_id="again"))
    await b.flush()
    await asyncio.wait_for(a.flush(), 10)
    await eventually(lambda: key in Call.objects.using(a), what="B's create on A")
    assert Call.objects.using(a)[key].channel_id == "again"
    assert Call.objects.using(b)[key].channel_id == "again"
    fresh = await make_db(url=server.url, location="fresh")
    assert dumps(fresh) == dumps(a) == dumps(b)


async def test_writes_awaiting_acks_when_the_server_restarts_end_at_the_reconnect(
    own_server: NatsServer,
) -> None:
    """Publishes the old server never answered: once the client has reconnected their acks can
    never come, so they end as ConnectionLost then (the engine retries them), not after the
    whole ack timeout. A flush in progress during a restart used to stall for that timeout."""
    server = own_server
    async with patient_store(server) as (pid, _nc, bucket):
        await freeze(pid)
        started = time.monotonic()
        task = asyncio.create_task(bucket.write([WriteOp(f"k{i}", b"x", msg_id=f"w{i}") for i in range(5)]))
        await asyncio.sleep(0.2)  # sent, unanswered
        os.kill(pid, signal.SIGKILL)  # our own server, frozen: it never stored them
        await server.restart()
        results = await asyncio.wait_for(task, 20)
        took = time.monotonic() - started
        assert all(isinstance(r, ConnectionLost) for r in results), results
        assert took < 10, took  # the timeout is 30 s
        # The retry (same ids) lands once the client is back.
        retry = await bucket.write([WriteOp(f"k{i}", b"x", msg_id=f"w{i}") for i in range(5)])
        assert all(isinstance(r, int) for r in retry), retry


@contextlib.asynccontextmanager
async def patient_store(server: NatsServer) -> AsyncIterator[tuple[int, Client, Bucket]]:
    """``(server pid, connection, bucket)`` on a store with a 30 s timeout; the bucket holds
    ``a`` = ``b"1"`` at revision 1."""
    pid = server.pid
    assert pid is not None
    nc = await connect(server.url)
    store = NatsKVStore(nc, namespace="restart", timeout=30.0)
    try:
        bucket = await store.open_bucket("restart-patient", BucketConfig())
        assert await bucket.write([WriteOp("a", b"1", expected_revision=0)]) == [1]
        yield pid, nc, bucket
    finally:
        await store.close()
        await nc.close()


@pytest.mark.parametrize("what", ["direct get", "api request"])
async def test_requests_awaiting_an_answer_when_the_server_goes_end_with_the_connection(
    own_server: NatsServer, what: str
) -> None:
    """A request the old server never answered (a direct get, a JetStream API call) ends as
    ConnectionLost once its connection is lost, not after the whole timeout: nats-py would wait
    it out. A flush asking whether a stream exists, after a publish met the shutting-down
    server's "no responders", sat out those 5 s during a restart."""
    server = own_server
    async with patient_store(server) as (pid, nc, bucket):
        await freeze(pid)
        started = time.monotonic()
        if what == "direct get":
            task: asyncio.Task[object] = asyncio.create_task(bucket.get("a"))
        else:
            task = asyncio.create_task(bucket.purge_deletes())  # a stream info request first
        await asyncio.sleep(0.3)
        assert not task.done()  # sent, unanswered
        os.kill(pid, signal.SIGKILL)  # our own server, frozen
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(task, 20)
        took = time.monotonic() - started
        assert took < 5, took  # the timeout is 30 s
        await server.restart()
        await eventually(lambda: nc.is_connected, timeout=10, what="the client to reconnect")
        entry = await bucket.get("a")
        assert entry is not None
        assert entry.value == b"1"


async def test_a_request_awaiting_an_answer_when_its_connection_is_closed_ends_as_closed(
    own_server: NatsServer,
) -> None:
    """Closed by its owner, not lost: ``ConnectionClosed`` (not retried), at once."""
    async with patient_store(own_server) as (pid, nc, bucket):
        await freeze(pid)
        started = time.monotonic()
        task = asyncio.create_task(bucket.get("a"))
        await asyncio.sleep(0.3)
        assert not task.done()  # sent, unanswered
        await asyncio.wait_for(nc.close(), 10)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(task, 20)
        assert time.monotonic() - started < 5  # the timeout is 30 s


async def test_a_client_that_gave_up_reconnecting_is_named_as_such(
    own_server: NatsServer, brainless_namespace: str
) -> None:
    """nats-py closes its client after ``max_reconnect_attempts``: the flush's ConnectionClosed
    says so (not "closed by its owner"), and how to avoid it."""
    nc = await nats.connect(own_server.url, max_reconnect_attempts=1, reconnect_time_wait=0.1)
    db = Database(nc, namespace=brainless_namespace, documents=[Call])
    try:
        await db.start()
        doc = Call.objects.using(db).add(channel_id="c-1")
        await db.flush()
        await own_server.stop()
        await eventually(lambda: nc.is_closed, timeout=10)
        doc.priority = 7
        with pytest.raises(FlushError) as info:
            await asyncio.wait_for(db.flush(), 10)
        [(_c, key, exc)] = info.value.failures
        assert key == doc.uuid
        assert isinstance(exc, ConnectionClosed)
        assert "max_reconnect_attempts=-1" in str(exc)
        assert doc.is_dirty
        with pytest.raises(FlushError):
            await db.stop(timeout=5)
    finally:
        await nc.close()
