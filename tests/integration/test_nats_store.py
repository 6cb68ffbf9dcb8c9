"""NatsKVStore against a real nats-server: the KVStore semantics of brainless_odm.store.base."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from brainless_odm.exceptions import (
    BucketNotFound,
    ConnectionClosed,
    ConnectionLost,
    InvalidKey,
    PayloadTooLarge,
    StoreError,
)
from brainless_odm.store.base import (
    HEADER_ROOM,
    MAX_MSG_ID,
    Bucket,
    BucketConfig,
    Conflict,
    Entry,
    KVStore,
    Operation,
    WriteOp,
)
from brainless_odm.store.memory import MemoryBucket, MemoryStore
from brainless_odm.store.nats import NatsBucket, NatsKVStore, NatsWatch, connect, refused_credentials
from brainless_odm.testing import NatsServer, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(nats_client: Client, brainless_namespace: str) -> AsyncIterator[NatsKVStore]:
    s = NatsKVStore(nats_client, namespace=brainless_namespace)
    yield s
    await s.close()


@pytest.fixture
async def bucket(store: NatsKVStore, brainless_namespace: str) -> NatsBucket:
    return await store.open_bucket(f"{brainless_namespace}-call", BucketConfig())


async def _wait_for(predicate: object, timeout: float, what: str) -> None:
    """Poll ``predicate()`` until true or fail after ``timeout`` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def _revision(result: object) -> int:
    assert isinstance(result, int), result
    return result


async def test_protocols_and_bucket_visible_to_nats_py(
    store: NatsKVStore, bucket: NatsBucket, nats_client: Client, brainless_namespace: str
) -> None:
    assert isinstance(store, KVStore)
    assert isinstance(bucket, Bucket)
    name = f"{brainless_namespace}-call"
    assert bucket.name == name
    assert await store.list_buckets() == [name]

    js = nats_client.jetstream()
    info = await js.stream_info(f"KV_{name}")
    assert info.config.allow_direct is True
    kv = await js.key_value(name)
    rev = _revision((await bucket.write([WriteOp("abc", b'{"a": 1}')]))[0])
    got = await kv.get("abc")
    assert (got.value, got.revision) == (b'{"a": 1}', rev)

    # Opening again (another node) reuses it; a different config only warns.
    again = await NatsKVStore(nats_client, namespace=brainless_namespace).open_bucket(
        name, BucketConfig(history=5)
    )
    assert (await again.get("abc")) == Entry("abc", b'{"a": 1}', rev)
    assert await store.delete_bucket(name) is True
    assert await store.delete_bucket(name) is False
    assert await store.list_buckets() == []


async def test_a_namespace_does_not_list_the_buckets_of_a_longer_one(
    nats_client: Client, brainless_namespace: str
) -> None:
    # "ns" and "ns-staging": the bucket "ns-staging-call" is the collection "call" of the second
    # namespace, never a collection "staging-call" of the first (collection names have no "-").
    short = NatsKVStore(nats_client, namespace=brainless_namespace)
    longer = NatsKVStore(nats_client, namespace=f"{brainless_namespace}-staging")
    mine = f"{brainless_namespace}-call"
    theirs = f"{brainless_namespace}-staging-call"
    for store, name in ((short, mine), (longer, theirs)):
        await store.open_bucket(name, BucketConfig())
    try:
        assert await short.list_buckets() == [mine]
        assert await longer.list_buckets() == [theirs]
    finally:
        for store, name in ((short, mine), (longer, theirs)):
            await store.delete_bucket(name)


async def test_put_get_and_compare_and_set(bucket: NatsBucket) -> None:
    assert await bucket.get("k1") is None
    r1, r2 = await bucket.write([WriteOp("k1", b"a", expected_revision=0), WriteOp("k2", b"b")])
    rev1 = _revision(r1)
    assert _revision(r2) == rev1 + 1
    assert await bucket.get("k1") == Entry("k1", b"a", rev1)

    # Update on a stale revision, and create on an existing key, both conflict.
    rev1b = _revision((await bucket.write([WriteOp("k1", b"a2", expected_revision=rev1)]))[0])
    stale, exists, ok = await bucket.write(
        [
            WriteOp("k1", b"a3", expected_revision=rev1),
            WriteOp("k2", b"b2", expected_revision=0),
            WriteOp("k1", b"a4", expected_revision=rev1b),
        ]
    )
    assert stale == Conflict("k1", rev1)
    assert exists == Conflict("k2", 0)
    rev_ok = _revision(ok)
    assert await bucket.get("k1") == Entry("k1", b"a4", rev_ok)


async def test_delete_marker_revision_is_usable_for_cas(bucket: NatsBucket) -> None:
    rev = _revision((await bucket.write([WriteOp("d", b"x")]))[0])
    del_rev = _revision((await bucket.write([WriteOp("d", None, expected_revision=rev)]))[0])
    marker = await bucket.get("d")
    assert marker == Entry("d", b"", del_rev, Operation.DELETE)
    # Re-creating a deleted key: 0 conflicts (it was written), the marker's revision succeeds.
    zero, good = await bucket.write(
        [WriteOp("d", b"y", expected_revision=0), WriteOp("d", b"y", expected_revision=del_rev)]
    )
    assert zero == Conflict("d", 0)
    assert await bucket.get("d") == Entry("d", b"y", _revision(good))


async def test_msg_id_deduplicates(bucket: NatsBucket) -> None:
    first = await bucket.write([WriteOp("m", b"1", msg_id="flush-1-m")])
    again = await bucket.write([WriteOp("m", b"1", msg_id="flush-1-m")])
    assert first == again
    entry = await bucket.get("m")
    assert entry is not None
    assert entry.revision == first[0]


@pytest.mark.parametrize("kind", ["nats", "memory"])
async def test_compare_and_set_is_checked_before_the_duplicate_window(bucket: NatsBucket, kind: str) -> None:
    """The engine relies on this order on both stores: a retry of a landed compare-and-set write
    with the same id is a conflict; with the expected revision brought up to date it is a
    duplicate, reported with the first write's revision."""
    b: Bucket = bucket if kind == "nats" else await MemoryStore().open_bucket("b", BucketConfig())
    first = _revision((await b.write([WriteOp("k", b"1", expected_revision=0, msg_id="w1")]))[0])
    assert await b.write([WriteOp("k", b"1", expected_revision=0, msg_id="w1")]) == [Conflict("k", 0)]
    assert await b.write([WriteOp("k", b"1", expected_revision=first, msg_id="w1")]) == [first]
    assert await b.write([WriteOp("k", b"1", msg_id="w1")]) == [first]
    later = _revision((await b.write([WriteOp("k", b"2", expected_revision=first, msg_id="w2")]))[0])
    assert await b.write([WriteOp("k", b"1", expected_revision=later, msg_id="w1")]) == [first]
    entry = await b.get("k")
    assert entry is not None
    assert (entry.revision, entry.value) == (later, b"2")


async def test_load_20k_complete_every_time(
    nats_client: Client, bucket: NatsBucket, brainless_namespace: str
) -> None:
    n = 20_000
    ops: list[WriteOp] = []
    expected: dict[str, bytes] = {}
    for i in range(n):
        key = f"doc-{i:05d}"
        value = b'{"i": %d, "pad": "%s"}' % (i, b"x" * 80)
        ops.append(WriteOp(key, value))
        expected[key] = value
        if i % 7 == 6:  # interleaved deletes of earlier keys
            gone = f"doc-{i - 3:05d}"
            ops.append(WriteOp(gone, None))
            expected.pop(gone)
    results = await bucket.write(ops)
    assert all(isinstance(r, int) for r in results)
    last = max(_revision(r) for r in results)
    for _ in range(3):
        fresh = NatsKVStore(nats_client, namespace=brainless_namespace)
        b = await fresh.open_bucket(bucket.name, BucketConfig())
        t0 = time.perf_counter()
        snap = await b.load()
        elapsed = time.perf_counter() - t0
        print(f"load: {len(snap.entries)} entries in {elapsed:.3f}s = {len(snap.entries) / elapsed:,.0f}/s")
        assert snap.revision == last
        assert {e.key: e.value for e in snap.entries} == expected
        await fresh.close()


async def test_load_empty_bucket_returns_at_once(bucket: NatsBucket) -> None:
    snap = await asyncio.wait_for(bucket.load(), 2)
    assert (snap.entries, snap.revision) == ([], 0)
    # Only markers left: still complete, nothing live.
    await bucket.write([WriteOp("a", b"1")])
    await bucket.write([WriteOp("a", None)])
    snap = await asyncio.wait_for(bucket.load(), 3)
    assert (snap.entries, snap.revision) == ([], 2)


async def test_watch_puts_deletes_purges_in_order(
    store: NatsKVStore, nats_client: Client, brainless_namespace: str
) -> None:
    # history > 1: with history=1 the server drops a superseded put before a late watch reads it.
    bucket = await store.open_bucket(f"{brainless_namespace}-hist", BucketConfig(history=10))
    watch = bucket.watch(0)
    assert isinstance(watch, contextlib.AbstractAsyncContextManager)
    async with watch:
        await bucket.write([WriteOp("a", b"1"), WriteOp("b", b"2"), WriteOp("a", None)])
        got = [await asyncio.wait_for(anext(watch), 3) for _ in range(3)]
        # A purge (here an operator's, through plain nats-py) rolls up the key's history, so it is
        # written once the watch has seen the put it removes.
        kv = await nats_client.jetstream().key_value(bucket.name)
        await kv.purge("b")
        got.append(await asyncio.wait_for(anext(watch), 3))
    assert [(e.key, e.operation, e.revision) for e in got] == [
        ("a", Operation.PUT, 1),
        ("b", Operation.PUT, 2),
        ("a", Operation.DELETE, 3),
        ("b", Operation.PURGE, 4),
    ]
    assert got[0].value == b"1"
    assert got[2].value == b""


async def test_nothing_missed_between_load_and_watch(store: NatsKVStore, brainless_namespace: str) -> None:
    # Full history, so every revision the writer made is still there to be checked for.
    bucket = await store.open_bucket(f"{brainless_namespace}-race", BucketConfig(history=64))
    stop = asyncio.Event()
    written: list[int] = []

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            batch = [WriteOp(f"k{(i + j) % 300}", b"%d" % (i + j)) for j in range(20)]
            batch.append(WriteOp(f"k{i % 300}", None))
            written.extend(_revision(r) for r in await bucket.write(batch))
            i += 21

    task = asyncio.create_task(writer())
    await _wait_for(lambda: len(written) > 500, 10, "the writer to start")
    snap = await bucket.load()
    state = {e.key: e for e in snap.entries if e.revision <= snap.revision}
    seen: list[int] = []
    async with bucket.watch(snap.revision) as watch:
        await _wait_for(lambda: len(written) > 3000, 20, "more writes")
        stop.set()
        await task
        final = max(written)
        async for entry in watch:
            seen.append(entry.revision)
            if entry.operation is Operation.PUT:
                state[entry.key] = entry
            else:
                state.pop(entry.key, None)
            if entry.revision >= final:
                break
    assert seen == sorted(set(seen)), "watch out of order or duplicated"
    assert seen == [r for r in sorted(written) if r > snap.revision]
    reloaded = await bucket.load()
    assert {e.key: e for e in reloaded.entries} == state


async def test_payload_too_large_does_not_break_the_batch(bucket: NatsBucket) -> None:
    big = b"x" * (1024 * 1024 + 1)
    ok1, bad, ok2 = await bucket.write([WriteOp("a", b"1"), WriteOp("huge", big), WriteOp("b", b"2")])
    assert isinstance(bad, PayloadTooLarge)
    assert "huge" in str(bad)
    assert bad.size == len(big)
    assert bad.limit == bucket.max_value_size
    assert _revision(ok2) == _revision(ok1) + 1
    assert await bucket.get("huge") is None


async def test_bucket_max_value_size_is_enforced(store: NatsKVStore, brainless_namespace: str) -> None:
    small = await store.open_bucket(f"{brainless_namespace}-small", BucketConfig(max_value_size=2048))
    assert small.max_value_size <= 2048
    ok, bad = await small.write([WriteOp("a", b"y" * 100), WriteOp("b", b"y" * 4000)])
    _revision(ok)
    assert isinstance(bad, PayloadTooLarge)


async def test_invalid_keys(bucket: NatsBucket) -> None:
    results = await bucket.write(
        [
            WriteOp("has space", b"x"),
            WriteOp(".lead", b"x"),
            WriteOp("trail.", b"x"),
            WriteOp("ok.a/b=c_d-e", b"x"),
        ]
    )
    assert all(isinstance(r, InvalidKey) for r in results[:3])
    _revision(results[3])
    with pytest.raises(InvalidKey):
        await bucket.get("a*b")


async def test_bucket_deleted_by_operator(bucket: NatsBucket, nats_client: Client) -> None:
    await bucket.write([WriteOp("a", b"1")])
    await nats_client.jetstream().delete_key_value(bucket.name)
    t0 = time.monotonic()
    results = await asyncio.wait_for(bucket.write([WriteOp("a", b"2"), WriteOp("b", b"3")]), 10)
    assert all(isinstance(r, BucketNotFound) for r in results), results
    assert time.monotonic() - t0 < 3
    with pytest.raises(BucketNotFound):
        await bucket.get("a")
    with pytest.raises(BucketNotFound):
        await bucket.load()


async def test_connect_to_dead_port_fails_fast() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(ConnectionLost, match=f"127.0.0.1:{port}"):
        await connect(f"nats://127.0.0.1:{port}", timeout=1.0)
    assert time.monotonic() - t0 < 5


async def test_refused_credentials_are_not_a_dead_server() -> None:
    async with NatsServer(extra_args=["--user", "u", "--pass", "secret"]) as server:
        for wrong in ({"user": "u", "password": "wrong"}, {}):
            t0 = time.monotonic()
            with pytest.raises(ConnectionLost, match=r"refused the connection.*Authorization Violation") as e:
                await connect(server.url, timeout=1.0, **wrong)
            assert time.monotonic() - t0 < 5
            assert refused_credentials(e.value)
        nc = await connect(server.url, timeout=1.0, user="u", password="secret")
        await nc.close()
    with pytest.raises(ConnectionLost, match="cannot connect") as dead:
        await connect(server.url, timeout=0.5, user="u", password="wrong")
    assert not refused_credentials(dead.value)


async def test_credentials_without_the_nkeys_package_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # nats-py imports nkeys only once connecting: a bare ModuleNotFoundError from inside nats-py.
    monkeypatch.setitem(sys.modules, "nkeys", None)  # as if it were not installed
    creds = tmp_path / "user.creds"
    creds.write_text("not checked before nkeys is\n")
    with pytest.raises(ImportError, match=r"brainless-odm\[nkeys\]"):
        await connect(f"nats://127.0.0.1:{free_port()}", timeout=0.5, user_credentials=str(creds))
    with pytest.raises(ImportError, match="nkeys package"):
        await connect(f"nats://127.0.0.1:{free_port()}", timeout=0.5, nkeys_seed_str="SUA...")


async def test_server_restart_mid_writes(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path / "js")
    await server.start()
    nc = await connect(server.url)
    try:
        store = NatsKVStore(nc, namespace="rs", timeout=1.0)
        bucket = await store.open_bucket("rs-call", BucketConfig())
        acked: dict[str, int] = {}
        lost: list[str] = []
        stop = asyncio.Event()

        async def writer() -> None:
            i = 0
            while not stop.is_set():
                op = WriteOp(f"k{i}", b"%d" % i, msg_id=f"w-{i}")
                (result,) = await bucket.write([op])
                if isinstance(result, ConnectionLost):
                    lost.append(op.key)  # retry the same op (same msg_id): idempotent
                    await asyncio.sleep(0.05)
                    continue
                acked[op.key] = _revision(result)
                i += 1

        delivered: dict[str, float] = {}

        async def watcher() -> None:
            last = 0
            async with bucket.watch(0) as w:
                async for entry in w:
                    assert entry.revision > last
                    last = entry.revision
                    delivered[entry.key] = time.monotonic()

        wtask = asyncio.create_task(writer())
        vtask = asyncio.create_task(watcher())
        await _wait_for(lambda: len(acked) >= 200 and len(delivered) >= 200, 10, "writes before the outage")

        await server.stop()  # our own store_dir: kept
        await _wait_for(lambda: bool(lost), 10, "a write failing with ConnectionLost")
        before = len(acked)
        await server.start()
        restarted = time.monotonic()
        await _wait_for(lambda: len(acked) >= before + 200, 15, "writes after the restart")
        resumed_key = f"k{before}"
        await _wait_for(lambda: resumed_key in delivered, 5, "the watch to resume")
        assert delivered[resumed_key] - restarted < 3.0
        stop.set()
        await wtask
        await _wait_for(lambda: set(acked) <= set(delivered), 5, "the watch to deliver every acked write")
        vtask.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await vtask
        snap = await bucket.load()
        assert {e.key: e.revision for e in snap.entries} == acked
        await store.close()
    finally:
        await nc.close()
        await server.stop()


async def test_bucket_without_direct_get_still_works(
    store: NatsKVStore, nats_client: Client, brainless_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"{brainless_namespace}-legacy"
    await nats_client.jetstream().create_key_value(bucket=name, direct=False)  # nats-py's default
    bucket = await store.open_bucket(name, BucketConfig())
    assert "allow_direct" in caplog.text  # reported, not changed behind the operator's back
    rev = _revision((await bucket.write([WriteOp("k", b"v")]))[0])
    assert await bucket.get("k") == Entry("k", b"v", rev)
    del_rev = _revision((await bucket.write([WriteOp("k", None)]))[0])
    assert await bucket.get("k") == Entry("k", b"", del_rev, Operation.DELETE)
    assert await bucket.get("never") is None


async def test_settings_a_single_server_refuses_are_named(
    store: NatsKVStore, brainless_namespace: str
) -> None:
    """replicas > 1 on one nats-server: the server refuses to create the bucket, and the error
    names the bucket and its settings (it was the raw API error of the stream). A MemoryStore takes
    it and keeps one copy (tests/unit/test_memory_store.py)."""
    name = f"{brainless_namespace}-r3"
    with pytest.raises(StoreError) as refused:
        await store.open_bucket(name, BucketConfig(replicas=3))
    assert str(refused.value) == (
        f"bucket {name!r}: the server refused to create it with history=1, replicas=3, "
        "storage='file', max_value_size=None, ttl=None: replicas > 1 not supported in non-clustered "
        "mode (err_code 10074)"
    )
    assert name not in await store.list_buckets()


def test_server_marker_headers_map_to_operations() -> None:
    from brainless_odm.store.nats import _entry_kind

    assert _entry_kind(None) == (Operation.PUT, None)
    assert _entry_kind({"KV-Operation": "DEL"}) == (Operation.DELETE, None)
    assert _entry_kind({"KV-Operation": "PURGE"}) == (Operation.PURGE, None)
    assert _entry_kind({"Nats-Marker-Reason": "MaxAge"}) == (Operation.PURGE, "MaxAge")
    assert _entry_kind({"Nats-Marker-Reason": "Purge"}) == (Operation.PURGE, "Purge")
    assert _entry_kind({"Nats-Marker-Reason": "Remove"}) == (Operation.DELETE, "Remove")


async def test_break_out_of_watch_unsubscribes(bucket: NatsBucket, nats_client: Client) -> None:
    await bucket.write([WriteOp("a", b"1")])
    subs_before = len(nats_client._subs)
    async for _entry in bucket.watch(0):
        assert len(nats_client._subs) == subs_before + 1
        break
    js = nats_client.jetstream()
    stream = f"KV_{bucket.name}"
    await _wait_for(lambda: len(nats_client._subs) == subs_before, 3, "the watch subscription to go")
    deadline = time.monotonic() + 3
    while (await js.stream_info(stream)).state.consumer_count:
        assert time.monotonic() < deadline, "consumer not deleted"
        await asyncio.sleep(0.05)


# -- the same semantics on both stores ----------------------------------------------------------
#
# Each test below runs against a real nats-server and against MemoryStore: the in-memory store is
# the one unit tests and `Database(None)` use, so where it differs from NATS tests pass there and
# applications fail on the server (or the other way round).


@pytest.fixture(params=["nats", "memory"])
async def any_store(request: pytest.FixtureRequest, store: NatsKVStore) -> KVStore:
    return store if request.param == "nats" else MemoryStore()


async def test_keys_are_checked_alike(any_store: KVStore, brainless_namespace: str) -> None:
    bucket = await any_store.open_bucket(f"{brainless_namespace}-keys", BucketConfig())
    # Empty tokens ("a..b") are no subject the server accepts: nats-py published it and waited for
    # an ack that never came. A key over ~4 KB overflows the server's control line, which closes
    # the connection for good: both are refused before anything is sent.
    bad = ["a..b", ".a", "a.", "", "a b", "a*b", "a>b", "é", "k" * 1025, "k" * 5000]
    results = await asyncio.wait_for(bucket.write([WriteOp(k, b"v") for k in bad]), 2)
    for key, result in zip(bad, results, strict=True):
        assert isinstance(result, InvalidKey), (key[:20], result)
        with pytest.raises(InvalidKey):
            await bucket.get(key)
    assert "at most 1024 characters" in str(results[-1])
    assert len(str(results[-1])) < 200  # a 5000-character key is not repeated in the message
    good = ["a.b.c", "-/_=", "k" * 1024]
    ok = await bucket.write([WriteOp(k, b"v") for k in good])
    assert all(isinstance(r, int) for r in ok), ok
    for key in good:
        assert await bucket.get(key) is not None
    assert sorted(e.key for e in (await bucket.load()).entries) == sorted(good)


async def test_bucket_names_are_checked_alike(any_store: KVStore, brainless_namespace: str) -> None:
    for name in (f"{brainless_namespace}-a.b", f"{brainless_namespace}-a b", "", "é", "a>"):
        with pytest.raises(InvalidKey, match="not a valid NATS KV bucket name"):
            await any_store.open_bucket(name, BucketConfig())
        # Deleting one too: NATS put it in a request subject (nats-py's BadSubjectError for a
        # space, a ConnectionLost after the timeout for a dot, False for others); memory said False.
        with pytest.raises(InvalidKey, match="not a valid NATS KV bucket name"):
            await asyncio.wait_for(any_store.delete_bucket(name), 1)
    with pytest.raises(InvalidKey, match="NATS allows at most 252"):
        await any_store.delete_bucket("b" * 253)


async def test_msg_ids_are_checked_alike(any_store: KVStore, brainless_namespace: str) -> None:
    name = f"{brainless_namespace}-ids"
    bucket = await any_store.open_bucket(name, BucketConfig())
    bad = ["", "has space", "x" * 257, "tab\there", "é"]
    results = await bucket.write([WriteOp(f"k{i}", b"v", msg_id=m) for i, m in enumerate(bad)])
    for i, result in enumerate(results):
        assert type(result) is StoreError, result
        assert str(result) == (f"{name}/k{i}: msg_id must be 1-256 printable ASCII characters without spaces")
    assert all([await bucket.get(f"k{i}") is None for i in range(len(bad))])
    # An empty id used to dedupe unrelated writes to other keys in memory.
    again = await bucket.write([WriteOp("other", b"v", msg_id="")])
    assert type(again[0]) is StoreError
    ok = await bucket.write([WriteOp("a", b"v", msg_id="x" * 256), WriteOp("b", b"v", msg_id="!~")])
    assert all(isinstance(r, int) for r in ok), ok


async def test_value_size_limits_alike(any_store: KVStore, brainless_namespace: str) -> None:
    """A value of exactly the bucket's max_value_size fits, with the largest headers a write
    sends (a 256-character msg id and an expected revision); one byte more does not, with the
    same error on both stores. (NATS used to keep 512 bytes of a configured size for headers, so a
    bucket_max_value_size up to 512 refused every write.)"""
    default = await any_store.open_bucket(f"{brainless_namespace}-default", BucketConfig())
    assert default.max_value_size == 1024 * 1024 - HEADER_ROOM  # the test server's max payload: 1 MiB
    for limit in (1, 300, 1000, 1024 * 1024 - HEADER_ROOM):
        name = f"{brainless_namespace}-max{limit}"
        cfg = BucketConfig(max_value_size=limit) if limit < 1024 * 1024 - HEADER_ROOM else BucketConfig()
        bucket = await any_store.open_bucket(name, cfg)
        assert bucket.max_value_size == limit
        msg_id = "m" * MAX_MSG_ID
        fits, too_big = await bucket.write(
            [
                WriteOp("k", b"x" * limit, expected_revision=0, msg_id=msg_id),
                WriteOp("big", b"x" * (limit + 1), expected_revision=0, msg_id="other"),
            ]
        )
        rev = _revision(fits)
        assert isinstance(too_big, PayloadTooLarge)
        assert str(too_big) == f"{name}/big: value is {limit + 1} bytes, the limit is {limit} bytes"
        assert (too_big.size, too_big.limit) == (limit + 1, limit)
        # A delete carries one header more (and no value).
        _revision(
            (await bucket.write([WriteOp("k", None, expected_revision=rev, msg_id="d" * MAX_MSG_ID)]))[0]
        )


async def test_reopen_warns_only_on_real_differences(
    store: NatsKVStore, nats_client: Client, brainless_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    configs = (BucketConfig(max_value_size=1000), BucketConfig(), BucketConfig(ttl=2.5, history=3))
    for i, cfg in enumerate(configs):
        name = f"{brainless_namespace}-re{i}"
        await store.open_bucket(name, cfg)
        again = await NatsKVStore(nats_client, namespace=brainless_namespace).open_bucket(name, cfg)
        assert again.max_value_size == (cfg.max_value_size or 1024 * 1024 - HEADER_ROOM)
    assert "different settings" not in caplog.text
    # A bucket made elsewhere with max_msg_size = 1000 holds values of 1000 - HEADER_ROOM bytes
    # with our headers: a real difference, reported.
    name = f"{brainless_namespace}-made"
    await nats_client.jetstream().create_key_value(bucket=name, max_value_size=1000, direct=True)
    made = await store.open_bucket(name, BucketConfig(max_value_size=1000))
    assert made.max_value_size == 1000 - HEADER_ROOM
    assert f"max_msg_size=1000 (wanted {1000 + HEADER_ROOM})" in caplog.text


async def _purge(bucket: Bucket, nats_client: Client) -> Callable[[str], Awaitable[object]]:
    """``kv.purge`` of ``bucket``'s store: MemoryBucket has it, on NATS an operator's through nats-py."""
    if isinstance(bucket, NatsBucket):
        kv = await nats_client.jetstream().key_value(bucket.name)
        return kv.purge
    assert isinstance(bucket, MemoryBucket)
    return bucket.purge


async def _replay(bucket: Bucket, after: int) -> list[tuple[str, int, Operation]]:
    """What ``watch(after)`` yields until it has nothing more for a moment."""
    got: list[tuple[str, int, Operation]] = []
    watch = bucket.watch(after)
    try:
        while True:
            try:
                entry = await asyncio.wait_for(anext(watch), 0.3)
            except asyncio.TimeoutError:
                return got
            got.append((entry.key, entry.revision, entry.operation))
    finally:
        aclose = getattr(watch, "aclose", None)
        if aclose is not None:
            await aclose()


async def test_watch_replays_every_retained_revision(
    any_store: KVStore, nats_client: Client, brainless_namespace: str
) -> None:
    """With history > 1 a watch replays every revision the bucket retains (up to ``history`` a
    key), in revision order; memory used to replay only the latest one of each key."""
    put, dele, purge = Operation.PUT, Operation.DELETE, Operation.PURGE
    bucket = await any_store.open_bucket(f"{brainless_namespace}-h3", BucketConfig(history=3))
    await bucket.write(
        [WriteOp("a", b"1"), WriteOp("a", b"2"), WriteOp("b", b"1"), WriteOp("b", None), WriteOp("c", b"1")]
    )
    await bucket.write([WriteOp("a", b"3"), WriteOp("a", b"4")])  # a keeps 2, 6 and 7
    assert await _replay(bucket, 0) == [
        ("a", 2, put),
        ("b", 3, put),
        ("b", 4, dele),
        ("c", 5, put),
        ("a", 6, put),
        ("a", 7, put),
    ]
    assert await _replay(bucket, 4) == [("c", 5, put), ("a", 6, put), ("a", 7, put)]
    # A purge leaves only its marker.
    await (await _purge(bucket, nats_client))("a")
    assert await _replay(bucket, 0) == [("b", 3, put), ("b", 4, dele), ("c", 5, put), ("a", 8, purge)]
    # get() and load() stay "the latest of each key".
    snap = await bucket.load()
    assert ([(e.key, e.revision) for e in snap.entries], snap.revision) == ([("c", 5)], 8)
    latest = await bucket.get("b")
    assert latest is not None
    assert (latest.revision, latest.operation) == (4, dele)
    # history=1 keeps the latest only.
    single = await any_store.open_bucket(f"{brainless_namespace}-h1", BucketConfig())
    await single.write([WriteOp("a", b"1"), WriteOp("a", b"2"), WriteOp("b", b"1")])
    assert await _replay(single, 0) == [("a", 2, put), ("b", 3, put)]


async def test_ttl_expires_entries_with_a_marker(
    any_store: KVStore, nats_client: Client, brainless_namespace: str
) -> None:
    """An entry older than the bucket's ttl is removed; where it was its key's latest (a put or a
    delete marker) a PURGE marker with reason "MaxAge" takes its place (the watch delivers it),
    itself removed a ttl later; a purge marker goes without one. The duplicate window is the
    ttl. Memory used to keep everything forever."""
    bucket = await any_store.open_bucket(f"{brainless_namespace}-ttl", BucketConfig(ttl=1.0, history=3))
    purge = await _purge(bucket, nats_client)
    watch = bucket.watch(0)
    got: list[Entry] = []

    async def collect() -> None:
        async for entry in watch:
            got.append(entry)

    task = asyncio.create_task(collect())
    try:
        first = await bucket.write(
            [WriteOp("a", b"1"), WriteOp("a", b"2"), WriteOp("d", b"1"), WriteOp("d", None)]
        )
        assert first == [1, 2, 3, 4]
        await purge("p")  # 5
        dup = await bucket.write([WriteOp("m", b"1", msg_id="once")])  # 6
        assert await bucket.write([WriteOp("m", b"1", msg_id="once")]) == dup
        await _wait_for(lambda: len(got) >= 9, 5, "the MaxAge markers")
        assert [(e.key, e.revision, e.operation, e.reason) for e in got[6:]] == [
            ("a", 7, Operation.PURGE, "MaxAge"),
            ("d", 8, Operation.PURGE, "MaxAge"),
            ("m", 9, Operation.PURGE, "MaxAge"),
        ]
        assert all(e.value == b"" for e in got[6:])
        marker = await bucket.get("a")
        assert marker is not None
        assert (marker.operation, marker.reason) == (Operation.PURGE, "MaxAge")
        assert await bucket.get("p") is None  # the purge marker expired without a trace
        assert (await bucket.load()).entries == []
        # The duplicate window was the ttl: the same msg id is a new write now.
        again = _revision((await bucket.write([WriteOp("m2", b"1", msg_id="once")]))[0])
        assert again > 9
        # The marker goes too, and the key reads as never written.
        deadline = time.monotonic() + 5
        while await bucket.get("a") is not None:
            assert time.monotonic() < deadline, "the MaxAge marker was not removed"
            await asyncio.sleep(0.05)
        assert _revision((await bucket.write([WriteOp("a", b"new", expected_revision=0)]))[0]) > again
        assert not any(e.key == "a" and e.reason for e in got[9:])  # no marker for a marker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        aclose = getattr(watch, "aclose", None)
        if aclose is not None:
            await aclose()


async def test_a_recreated_bucket_is_the_same_to_old_handles(
    any_store: KVStore, store: NatsKVStore, nats_client: Client, brainless_namespace: str
) -> None:
    """A bucket handle addresses its bucket by name: deleted, it fails with BucketNotFound (its
    watch too, where memory ended it quietly), whose message is the same on both stores;
    created again (by anyone), the old handle reads and writes the new bucket, whose revisions
    start again. Memory's old handle stayed dead."""
    other = NatsKVStore(nats_client, namespace=brainless_namespace) if any_store is store else any_store
    name = f"{brainless_namespace}-again"
    gone_message = f"bucket {name!r} does not exist: it was deleted (opening it again creates it)"
    bucket = await any_store.open_bucket(name, BucketConfig())
    assert await bucket.write([WriteOp("a", b"1"), WriteOp("b", b"1")]) == [1, 2]
    watch = bucket.watch(2)
    pending = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.3)  # the watch is running
    assert await other.delete_bucket(name) is True
    assert await other.delete_bucket(name) is False
    with pytest.raises(BucketNotFound) as ended:
        await asyncio.wait_for(pending, 5)
    assert str(ended.value) == gone_message
    aclose = getattr(watch, "aclose", None)
    if aclose is not None:
        await aclose()
    gone, bad = await bucket.write([WriteOp("a", b"2"), WriteOp("a b", b"2")])
    assert isinstance(gone, BucketNotFound)
    assert str(gone) == gone_message
    assert isinstance(bad, InvalidKey)  # what is wrong with the op itself comes first (memory: not)
    with pytest.raises(InvalidKey):
        await bucket.get("a b")
    with pytest.raises(BucketNotFound, match=f"^{re.escape(gone_message)}$"):
        await bucket.get("a")
    with pytest.raises(BucketNotFound, match=f"^{re.escape(gone_message)}$"):
        await bucket.load()
    with pytest.raises(BucketNotFound, match=f"^{re.escape(gone_message)}$"):
        await anext(bucket.watch(0))
    with pytest.raises(BucketNotFound, match=f"^{re.escape(gone_message)}$"):
        await bucket.purge_deletes()
    assert name not in await any_store.list_buckets()

    fresh = await other.open_bucket(name, BucketConfig(history=2))
    assert await fresh.write([WriteOp("z", b"1")]) == [1]
    assert await bucket.write([WriteOp("a", b"3", expected_revision=0)]) == [2]
    assert await bucket.get("z") == Entry("z", b"1", 1)
    assert await bucket.get("b") is None
    snap = await bucket.load()
    assert (sorted(e.key for e in snap.entries), snap.revision) == (["a", "z"], 2)
    assert [(k, r) for k, r, _op in await _replay(bucket, 0)] == [("z", 1), ("a", 2)]
    assert name in await any_store.list_buckets()


async def test_ttl_with_history_forgets_superseded_markers(
    any_store: KVStore, brainless_namespace: str
) -> None:
    """A MaxAge marker superseded by a new write (history > 1 keeps it as an older revision) goes
    a ttl after it was written, like any entry (its own TTL of a second does not keep it longer)."""
    bucket = await any_store.open_bucket(f"{brainless_namespace}-ttlh", BucketConfig(ttl=0.5, history=5))
    purge = Operation.PURGE

    async def latest() -> tuple[int, Operation] | None:
        entry = await bucket.get("a")
        return None if entry is None else (entry.revision, entry.operation)

    await bucket.write([WriteOp("a", b"1")])
    deadline = time.monotonic() + 5
    while await latest() != (2, purge):
        assert time.monotonic() < deadline, "no MaxAge marker"
        await asyncio.sleep(0.01)
    assert await bucket.write([WriteOp("a", b"2", expected_revision=2)]) == [3]
    while await latest() != (4, purge):
        assert time.monotonic() < deadline, "no second MaxAge marker"
        await asyncio.sleep(0.01)
    assert await _replay(bucket, 0) == [("a", 4, purge)]


async def test_ttl_markers_come_on_time_with_nobody_reading(
    any_store: KVStore, brainless_namespace: str
) -> None:
    """Each entry expires about a ttl after its own write, with no read or write to prompt it:
    a watcher alone gets the markers (the memory store's timer must not wait for a later marker's
    deadline)."""
    bucket = await any_store.open_bucket(f"{brainless_namespace}-ontime", BucketConfig(ttl=1.0))
    arrived: dict[str, float] = {}
    watch = bucket.watch(0)

    async def collect() -> None:
        async for entry in watch:
            if entry.reason == "MaxAge":
                arrived[entry.key] = time.monotonic()

    task = asyncio.create_task(collect())
    try:
        written = {}
        for key in ("a", "b", "c"):
            await bucket.write([WriteOp(key, b"1")])
            written[key] = time.monotonic()
            await asyncio.sleep(0.5)
        await _wait_for(lambda: len(arrived) == 3, 5, "three MaxAge markers")
        late = {k: round(arrived[k] - written[k] - 1.0, 2) for k in written}
        assert all(-0.05 < v < 0.4 for v in late.values()), late  # NATS checks expiry every ~0.25 s
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        aclose = getattr(watch, "aclose", None)
        if aclose is not None:
            await aclose()


async def test_a_closed_store_fails_every_call_and_leaves_nothing_running(
    any_store: KVStore, store: NatsKVStore, nats_client: Client, brainless_namespace: str
) -> None:
    """close() is final on both stores: a running watch ends with ConnectionClosed, and every later
    call of the store or its buckets fails with it (a bad key is still named as such) without
    subscribing or starting anything again. NATS re-subscribed its ack inbox for a write after
    close() and started a consumer and a monitor task for a watch; memory went on as if open."""
    name = f"{brainless_namespace}-closing"
    bucket = await any_store.open_bucket(name, BucketConfig())
    assert await bucket.write([WriteOp("a", b"1")]) == [1]
    subs = len(nats_client._subs)
    watch = bucket.watch(0)
    assert (await asyncio.wait_for(anext(watch), 5)).key == "a"
    pending = asyncio.ensure_future(anext(watch))
    tasks = asyncio.all_tasks()
    await any_store.close()
    closed = f"bucket {name!r}: the store was closed; nothing more goes through it (use a new one)"
    with pytest.raises(ConnectionClosed, match=f"^{re.escape(closed)}$"):
        await asyncio.wait_for(pending, 5)
    aclose = getattr(watch, "aclose", None)
    if aclose is not None:
        await aclose()

    ok_key, bad_key = await bucket.write([WriteOp("a", b"2"), WriteOp("a b", b"2")])
    assert isinstance(ok_key, ConnectionClosed)
    assert str(ok_key) == f"{name}/a: the store was closed; nothing more goes through it (use a new one)"
    assert isinstance(bad_key, InvalidKey)
    for call in (bucket.get("a"), bucket.load(), bucket.purge_deletes(), anext(bucket.watch(0))):
        with pytest.raises(ConnectionClosed, match=f"^{re.escape(closed)}$"):
            await asyncio.wait_for(call, 5)
    later = bucket.watch(0)
    if isinstance(later, NatsWatch):
        with pytest.raises(ConnectionClosed):
            await later.__aenter__()
    for store_call in (any_store.open_bucket(name, BucketConfig()), any_store.delete_bucket(name)):
        with pytest.raises(ConnectionClosed, match=f"^{re.escape(closed)}$"):
            await store_call
    with pytest.raises(ConnectionClosed, match=r"^the store was closed"):
        await any_store.list_buckets()
    assert len(nats_client._subs) <= subs - (1 if any_store is store else 0)  # the ack inbox went
    assert asyncio.all_tasks() <= tasks  # no watch monitor (or anything else) started since
    if isinstance(bucket, NatsBucket):
        assert (bucket._ack_sub, bucket._watches) == (None, set())
        assert await NatsKVStore(nats_client, namespace=brainless_namespace).delete_bucket(name)


async def test_a_write_and_a_watch_racing_with_close_leave_nothing_behind(
    store: NatsKVStore, nats_client: Client, brainless_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write subscribing its ack inbox and a watch starting its consumer while close() runs: both
    end with ConnectionClosed, and neither subscription nor the watch's monitor task outlives the
    close (each used to be set up after close() had looked for it)."""
    bucket = await store.open_bucket(f"{brainless_namespace}-race-close", BucketConfig())
    await bucket.write([WriteOp("a", b"1")])
    await bucket.close()  # the ack inbox goes: the next write subscribes it again
    bucket = await store.open_bucket(f"{brainless_namespace}-race-close", BucketConfig())
    subs = len(nats_client._subs)
    tasks = asyncio.all_tasks()
    subscribing = asyncio.Event()
    subscribe = nats_client.subscribe

    async def slow_subscribe(*args: Any, **kwargs: Any) -> Any:
        subscribing.set()
        await asyncio.sleep(0.2)  # close() runs meanwhile
        return await subscribe(*args, **kwargs)

    monkeypatch.setattr(nats_client, "subscribe", slow_subscribe)
    write = asyncio.ensure_future(bucket.write([WriteOp("a", b"2")]))
    watch = bucket.watch(0)
    first = asyncio.ensure_future(anext(watch))
    await asyncio.wait_for(subscribing.wait(), 5)
    await store.close()
    (result,) = await asyncio.wait_for(write, 5)
    assert isinstance(result, ConnectionClosed), result
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(first, 5)
    await watch.aclose()
    monkeypatch.undo()
    assert len(nats_client._subs) == subs
    # nats-py's unsubscribe cancels a subscription's task without awaiting it: it must end soon.
    extra = asyncio.all_tasks() - tasks - {asyncio.current_task()}
    if extra:
        await asyncio.wait(extra, timeout=2)
    assert [t for t in extra if not t.done()] == []
    assert (bucket._ack_sub, bucket._watches) == (None, set())
    assert await NatsKVStore(nats_client, namespace=brainless_namespace).delete_bucket(bucket.name)


async def test_a_watch_ahead_of_the_bucket_starts_after_its_revision(
    any_store: KVStore, brainless_namespace: str
) -> None:
    """watch(after) yields nothing at or below ``after``, also when the bucket has not reached it
    yet (as after it was created again under a running node): a NATS consumer starts at
    after + 1, memory passed every live entry on."""
    bucket = await any_store.open_bucket(f"{brainless_namespace}-ahead", BucketConfig())
    assert await bucket.write([WriteOp("a", b"1")]) == [1]
    watch = bucket.watch(5)
    try:
        pending = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0.3)  # the watch is running
        assert await bucket.write([WriteOp(f"k{i}", b"1") for i in range(2, 10)]) == list(range(2, 10))
        got = [await asyncio.wait_for(pending, 5)]
        got += [await asyncio.wait_for(anext(watch), 5) for _ in range(3)]
        assert [(e.key, e.revision) for e in got] == [("k6", 6), ("k7", 7), ("k8", 8), ("k9", 9)]
    finally:
        aclose = getattr(watch, "aclose", None)
        if aclose is not None:
            await aclose()


async def test_load_lists_keys_in_revision_order(any_store: KVStore, brainless_namespace: str) -> None:
    """A snapshot lists each key's latest entry in revision order on both stores (a database
    loads its documents in that order, so ``all()`` without ``order_by`` is the same on both);
    memory listed keys in the order they were first written."""
    bucket = await any_store.open_bucket(f"{brainless_namespace}-order", BucketConfig(history=3))
    await bucket.write(
        [WriteOp("a", b"1"), WriteOp("b", b"1"), WriteOp("c", b"1"), WriteOp("a", b"2"), WriteOp("b", None)]
    )
    await bucket.write([WriteOp("d", b"1"), WriteOp("b", b"3"), WriteOp("c", None)])
    snap = await bucket.load()
    assert [(e.key, e.revision) for e in snap.entries] == [("a", 4), ("d", 6), ("b", 7)]


async def test_reopening_with_other_settings_warns_and_keeps_the_bucket(
    any_store: KVStore,
    store: NatsKVStore,
    nats_client: Client,
    brainless_namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another node opening a bucket with other settings (a new version of a class) uses it as it
    is, and both stores say so in a warning; memory kept the bucket silently."""
    other = NatsKVStore(nats_client, namespace=brainless_namespace) if any_store is store else any_store
    name = f"{brainless_namespace}-settings"
    await any_store.open_bucket(name, BucketConfig(ttl=5.0))
    await other.open_bucket(name, BucketConfig(ttl=5.0))
    assert "different settings" not in caplog.text
    again = await other.open_bucket(name, BucketConfig(history=5, ttl=5.0))
    assert f"bucket {name} exists with different settings, using it as it is: " in caplog.text
    assert await again.write([WriteOp("a", b"1"), WriteOp("a", b"2")]) == [1, 2]
    assert [r for _k, r, _op in await _replay(again, 0)] == [2]  # still history=1


async def test_a_watch_its_owner_closes_while_it_starts_just_ends(
    bucket: NatsBucket, nats_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aclose() while ``async with`` starts the watch: the start ends quietly, iterating ends, and
    the consumer's subscription is gone (the start must not raise StopAsyncIteration at the owner)."""
    subs = len(nats_client._subs)
    subscribing = asyncio.Event()
    subscribe = nats_client.subscribe

    async def slow_subscribe(*args: Any, **kwargs: Any) -> Any:
        subscribing.set()
        await asyncio.sleep(0.2)
        return await subscribe(*args, **kwargs)

    monkeypatch.setattr(nats_client, "subscribe", slow_subscribe)
    watch = bucket.watch(0)
    entering = asyncio.ensure_future(watch.__aenter__())
    await asyncio.wait_for(subscribing.wait(), 5)
    await watch.aclose()
    assert await asyncio.wait_for(entering, 5) is watch
    with pytest.raises(StopAsyncIteration):
        await anext(watch)
    monkeypatch.undo()
    assert len(nats_client._subs) == subs
    assert bucket._watches == set()


async def test_purge_deletes_drops_old_markers(any_store: KVStore, brainless_namespace: str) -> None:
    bucket = await any_store.open_bucket(f"{brainless_namespace}-purge", BucketConfig())
    await bucket.write([WriteOp("a", b"1"), WriteOp("b", b"2")])
    await bucket.write([WriteOp("a", None)])
    await bucket.purge_deletes(older_than=3600)  # recent markers are kept
    marker = await bucket.get("a")
    assert marker is not None
    assert marker.operation is Operation.DELETE
    await bucket.purge_deletes(older_than=0)
    assert await bucket.get("a") is None
    assert (await bucket.get("b")) is not None
    assert isinstance((await bucket.write([WriteOp("a", b"new", expected_revision=0)]))[0], int)
