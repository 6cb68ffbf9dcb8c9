"""End to end through the public API on a real nats-server: persistence, layout, sync between nodes,
merge and convergence, events, dead letters, bad input.

Every ``Database`` here has its own connection (``make_db``), like separate processes would.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import statistics
import time
from typing import Any

import orjson
import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from pydantic import Field, ValidationError
from sync_helpers import Base, Call, Caller, DbFactory, QueueItem, dumps, eventually

from brainless_odm import (
    BucketNotFound,
    ConnectionClosed,
    Database,
    Document,
    DocumentConfig,
    FlushError,
    PayloadTooLarge,
    Registry,
)
from brainless_odm.engine.collection import Collection
from brainless_odm.store.nats import connect

pytestmark = pytest.mark.integration


def objects(db: Database) -> Any:
    return Call.objects.using(db)


async def stored(nats_client: Client, namespace: str, key: str) -> dict[str, Any]:
    """The stored JSON of ``key`` in the ``call`` bucket, read with plain nats-py."""
    kv = await nats_client.jetstream().key_value(f"{namespace}-call")
    entry = await kv.get(key)
    assert entry.value is not None
    return orjson.loads(entry.value)  # type: ignore[no-any-return]


# -- persistence and layout ------------------------------------------------------------------------


async def test_persistence_and_reload_with_working_indexes(make_db: DbFactory) -> None:
    a = await make_db(flush_interval=60)
    for i in range(60):
        objects(a).add(channel_id=f"c-{i}", queue_id=i % 4, state="ringing" if i % 3 == 0 else "waiting")
    first = await objects(a).get(channel_id="c-0")
    first.caller = Caller(number="+420 1", city="Brno")
    first.tags.append("vip")
    gone = await objects(a).get(channel_id="c-1")
    await a.flush()
    gone_key = gone.uuid
    await gone.delete()
    expected = dumps(a)
    await a.stop()

    b = await make_db()
    assert dumps(b) == expected
    assert gone_key not in objects(b)
    assert len(objects(b)) == 59
    # Indexes are built by the load: equality, `in` and unique lookups agree with a scan.
    ringing = {d.uuid for d in await objects(b).filter(state="ringing")}
    assert ringing == {k for k, v in expected.items() if v["state"] == "ringing"}
    assert len(ringing) == 20
    assert await objects(b).filter(queue_id__in=[1, 2]).count() == sum(
        1 for v in expected.values() if v["queue_id"] in (1, 2)
    )
    loaded = await objects(b).get(channel_id="c-0")
    assert loaded.caller == Caller(number="+420 1", city="Brno")
    assert loaded.tags == ["vip"]
    # A loaded document is tracked like any other: a change is written and reloads.
    loaded.state = "done"
    await b.stop()
    c = await make_db()
    assert (await objects(c).get(channel_id="c-0")).state == "done"
    assert [d.channel_id for d in await objects(c).filter(state="done")] == ["c-0"]


async def test_bucket_name_and_json_value_visible_to_nats_py(
    make_db: DbFactory, nats_client: Client, brainless_namespace: str
) -> None:
    a = await make_db(documents=(Call, QueueItem), location="prague-1", flush_interval=60)
    call = objects(a).add(channel_id="c-1", queue_id=3, caller=Caller(number="1"), tags=["x"])
    item = QueueItem.objects.using(a).add(name="q")
    await a.flush()

    js = nats_client.jetstream()
    for name in (f"{brainless_namespace}-call", f"{brainless_namespace}-queue_item"):
        info = await js.stream_info(f"KV_{name}")
        assert info.config.allow_direct is True, name
    assert call.uuid is not None
    value = await stored(nats_client, brainless_namespace, call.uuid)
    meta = value.pop("_odm")
    assert value == call.model_dump(mode="json", exclude={"uuid"})
    assert meta["loc"] == "prague-1"
    assert meta["ch"] == sorted(Call.__odm__.data_fields)  # a create changes every field
    assert isinstance(meta["w"], str)
    assert meta["w"]
    first_w = meta["w"]

    call.priority = 7
    await a.flush()
    value = await stored(nats_client, brainless_namespace, call.uuid)
    assert value["priority"] == 7
    assert value["_odm"]["ch"] == ["priority"]
    assert value["_odm"]["w"] != first_w

    kv = await js.key_value(f"{brainless_namespace}-queue_item")
    assert item.uuid is not None
    raw = orjson.loads((await kv.get(item.uuid)).value or b"")
    assert raw["name"] == "q"
    assert "uuid" not in raw  # the key is the uuid


# -- nodes seeing each other -----------------------------------------------------------------------


async def test_two_nodes_see_adds_updates_deletes_and_index_changes(make_db: DbFactory) -> None:
    a = await make_db()
    b = await make_db()
    doc = objects(a).add(channel_id="c-1", queue_id=1)
    key = doc.uuid
    await eventually(lambda: key in objects(b), what="the add on B")
    on_b = objects(b)[key]
    assert on_b is not doc
    assert on_b.model_dump() == doc.model_dump()
    assert (await objects(b).get(channel_id="c-1")).uuid == key

    doc.state = "ringing"
    doc.queue_id = 2
    await eventually(lambda: objects(b)[key].state == "ringing", what="the update on B")

    async def moved() -> bool:
        return (
            [d.uuid for d in await objects(b).filter(state="ringing")] == [key]
            and not await objects(b).filter(state="waiting").exists()
            and [d.uuid for d in await objects(b).filter(queue_id=2)] == [key]
            and not await objects(b).filter(queue_id=1).exists()
        )

    await eventually(moved, what="B's indexes to follow the update")

    # B changes it back; A's indexes follow too.
    on_b.state = "done"
    on_b.caller = Caller(number="7")
    await eventually(lambda: doc.state == "done" and doc.caller == Caller(number="7"), what="B's update on A")
    assert [d.uuid for d in await objects(a).filter(state="done")] == [key]
    assert not await objects(a).filter(state="ringing").exists()

    # Unique index follows a remote change: the old value is free again on A.
    on_b.channel_id = "c-renamed"
    await eventually(lambda: doc.channel_id == "c-renamed", what="the unique field change on A")
    assert await objects(a).find(channel_id="c-1") is None
    objects(a).add(channel_id="c-1")  # the freed value can be taken again

    assert objects(b).delete(key) is True
    await eventually(lambda: key not in objects(a), what="the delete on A")
    assert not await objects(a).filter(state="done").exists()
    assert await objects(a).find(channel_id="c-renamed") is None
    await eventually(lambda: len(objects(b)) == 1, what="A's second add on B")


async def test_three_nodes_see_each_other(make_db: DbFactory) -> None:
    nodes = [await make_db() for _ in range(3)]
    for n, db in enumerate(nodes):
        for i in range(30):
            objects(db).add(channel_id=f"n{n}-{i}", queue_id=n)
    await eventually(lambda: all(len(objects(db)) == 90 for db in nodes), what="every add on every node")
    for db in nodes:
        for n in range(3):
            assert await objects(db).filter(queue_id=n).count() == 30

    # Each node changes its own documents' state and deletes a third of the others' documents.
    for n, db in enumerate(nodes):
        await objects(db).filter(queue_id=n).update(state=f"by-{n}")
    for n, db in enumerate(nodes):
        victims = await objects(db).filter(queue_id=(n + 1) % 3).order_by("channel_id").limit(10)
        for v in victims:
            await v.delete()

    async def settled() -> bool:
        for db in nodes:
            if len(objects(db)) != 60:
                return False
            for n in range(3):
                if await objects(db).filter(state=f"by-{n}").count() != 20:
                    return False
        return True

    await eventually(settled, what="updates and deletes on every node")
    assert dumps(nodes[0]) == dumps(nodes[1]) == dumps(nodes[2])


# -- merge and convergence -------------------------------------------------------------------------


async def test_concurrent_different_field_edits_are_all_kept(make_db: DbFactory) -> None:
    nodes = [await make_db(flush_interval=60) for _ in range(3)]
    docs = [objects(nodes[0]).add(channel_id=f"c-{i}") for i in range(20)]
    await nodes[0].flush()
    keys = [d.uuid for d in docs]
    await eventually(lambda: all(len(objects(db)) == 20 for db in nodes), what="the adds everywhere")

    for round_ in range(5):
        # Every node edits another field of every document, all based on the same revision.
        for key in keys:
            objects(nodes[0])[key].priority = round_ + 1
            objects(nodes[1])[key].state = f"s{round_}"
            objects(nodes[2])[key].tags.append(f"t{round_}")
        await asyncio.gather(*(db.flush() for db in nodes))
        want = {"priority": round_ + 1, "state": f"s{round_}", "tags": [f"t{r}" for r in range(round_ + 1)]}

        def kept(db: Database, want: dict[str, Any] = want) -> bool:
            return all({f: getattr(objects(db)[k], f) for f in want} == want for k in keys)

        await eventually(lambda: all(kept(db) for db in nodes), what=f"every edit of round {round_}")
    fresh = await make_db()
    assert kept(fresh)
    assert dumps(fresh) == dumps(nodes[0])


async def test_same_field_edits_converge_over_many_rounds(
    make_db: DbFactory, nats_client: Client, brainless_namespace: str
) -> None:
    rng = random.Random(1234)
    nodes = [await make_db(flush_interval=60) for _ in range(3)]
    keys = [objects(nodes[0]).add(channel_id=f"c-{i}").uuid for i in range(12)]
    await nodes[0].flush()
    await eventually(lambda: all(len(objects(db)) == 12 for db in nodes), what="the adds everywhere")
    kv = await nats_client.jetstream().key_value(f"{brainless_namespace}-call")
    fields = ("queue_id", "state", "priority", "note")

    async def stored_state() -> dict[str, dict[str, Any]]:
        out = {}
        for k in keys:
            raw = orjson.loads((await kv.get(k)).value or b"")
            raw.pop("_odm")
            out[k] = raw
        return out

    for round_ in range(50):
        before = dumps(nodes[0])
        written: dict[tuple[str, str], set[Any]] = {}
        for n, db in enumerate(nodes):
            for key in rng.sample(keys, 6):
                name = rng.choice(fields)
                value: Any = f"r{round_}-n{n}" if name in ("state", "note") else rng.randrange(1000)
                setattr(objects(db)[key], name, value)
                written.setdefault((key, name), set()).add(value)
        if round_ % 2:
            await asyncio.gather(*(db.flush() for db in nodes))
        else:  # staggered: some nodes write on top of what the others already stored
            for db in rng.sample(nodes, 3):
                await db.flush()
        target = await stored_state()

        def converged(target: dict[str, dict[str, Any]] = target) -> bool:
            want = {k: {f: v[f] for f in fields} for k, v in target.items()}
            return all(
                {k: {f: getattr(objects(db)[k], f) for f in fields} for k in keys} == want for db in nodes
            )

        await eventually(converged, what=f"convergence in round {round_}")
        for key in keys:
            for name in fields:
                value = target[key][name]
                if (key, name) in written:
                    # The winner is one of the values written in this round...
                    assert value in written[(key, name)], (round_, key, name)
                else:
                    # ...and a field nobody touched kept its value.
                    assert value == before[key][name], (round_, key, name)
        assert not any(objects(db)[k].is_dirty for db in nodes for k in keys)

    fresh = await make_db()
    assert dumps(fresh) == dumps(nodes[0]) == dumps(nodes[1]) == dumps(nodes[2])
    # Indexes agree with the values on every node after all the merging.
    for db in (*nodes, fresh):
        for d in objects(db):
            assert d in await objects(db).filter(state=d.state, queue_id=d.queue_id)


async def test_concurrent_delete_wins_over_updates(make_db: DbFactory) -> None:
    a = await make_db(flush_interval=3600)
    b = await make_db(flush_interval=3600)
    docs = [objects(a).add(channel_id=f"c-{i}") for i in range(30)]
    await a.flush()
    keys = [d.uuid for d in docs]
    await eventually(lambda: len(objects(b)) == 30, what="the adds on B")
    for i, key in enumerate(keys[:20]):
        objects(b)[key].priority = 5  # B edits while A deletes
        if i % 2:
            objects(a)[key].state = "edited-here-too"
        objects(a).delete(key)
    # Half flushed together, half with B's edit written first.
    await asyncio.gather(a.flush(), b.flush())
    for key in keys[20:]:
        objects(b)[key].note = "b"
        objects(a).delete(key)
    await b.flush()
    await a.flush()
    await eventually(lambda: len(objects(b)) == 0, what="every delete on B")
    assert len(objects(a)) == 0
    fresh = await make_db()
    assert len(objects(fresh)) == 0


async def test_same_uuid_deleted_then_re_added_elsewhere(make_db: DbFactory) -> None:
    a = await make_db()
    b = await make_db()
    doc = objects(a).add(channel_id="c-1", priority=1)
    key = doc.uuid
    await eventually(lambda: key in objects(b), what="the add on B")
    await doc.delete()
    await eventually(lambda: key not in objects(b), what="the delete on B")
    again = objects(b).add(uuid=key, channel_id="c-1", priority=2)
    await eventually(lambda: key in objects(a), what="the re-added document on A")
    assert objects(a)[key].priority == 2
    assert not again.is_dirty
    fresh = await make_db()
    assert objects(fresh)[key].priority == 2


async def test_deleted_and_re_added_while_a_watch_was_behind_is_a_delete_for_it(make_db: DbFactory) -> None:
    """With one revision a key, the re-add purges the delete marker: a watch behind (or started
    again after a reconnect) sees only the new version. A's pending edit of the deleted document
    was written into the new one, and A reported an update, not a delete."""
    a = await make_db(flush_interval=3600)
    b = await make_db(flush_interval=3600)
    deleted: list[Call] = []
    objects(a).on_delete(deleted.append)
    doc = objects(a).add(channel_id="c-1", priority=1)
    key = doc.uuid or ""
    await a.flush()
    await eventually(lambda: key in objects(b), what="the add on B")
    coll = a.collection(Call)
    await coll.stop_watch()
    objects(b).delete(key)
    await b.flush()
    objects(b).add(uuid=key, channel_id="c-2")
    await b.flush()
    doc.note = "an edit of the deleted document"
    coll.start_watch()
    await eventually(lambda: deleted == [doc], what="A to see the delete")
    await a.flush()
    assert (objects(a)[key].channel_id, objects(a)[key].note) == ("c-2", "")
    fresh = await make_db()
    assert (objects(fresh)[key].channel_id, objects(fresh)[key].note) == ("c-2", "")


async def test_same_uuid_created_on_two_nodes_converges(make_db: DbFactory) -> None:
    a = await make_db(flush_interval=3600)
    b = await make_db(flush_interval=3600)
    for i in range(20):
        objects(a).add(uuid=f"k-{i}", channel_id=f"a-{i}", priority=1)
        objects(b).add(uuid=f"k-{i}", channel_id=f"b-{i}", state="from-b")
    await asyncio.gather(a.flush(), b.flush())
    await eventually(lambda: dumps(a) == dumps(b), what="both nodes to agree")
    for doc in objects(a):
        # One creation wins whole: no mix of the two documents' fields.
        assert (doc.channel_id[0], doc.priority, doc.state) in {("a", 1, "waiting"), ("b", 0, "from-b")}
    fresh = await make_db()
    assert dumps(fresh) == dumps(a)
    for db in (a, b, fresh):
        assert await objects(db).filter(state="from-b").count() == sum(
            1 for d in objects(db) if d.channel_id.startswith("b")
        )


async def test_in_place_mutation_and_nested_assignment_propagate(make_db: DbFactory) -> None:
    a = await make_db()
    b = await make_db()
    doc = objects(a).add(channel_id="c-1", caller=Caller(number="1"), tags=["a"])
    key = doc.uuid
    await eventually(lambda: key in objects(b), what="the add on B")
    remote = objects(b)[key]
    tag_events: list[tuple[Any, Any]] = []
    objects(b).on_field_change("tags", lambda d, f, o, n: tag_events.append((list(o), list(n))))

    doc.tags.append("vip")  # no explicit flush: the background flush writes it
    await eventually(lambda: remote.tags == ["a", "vip"], what="the appended tag on B")
    assert tag_events == [(["a"], ["a", "vip"])]
    assert doc.caller is not None
    doc.caller.city = "Brno"
    await eventually(lambda: remote.caller == Caller(number="1", city="Brno"), what="the nested assignment")
    doc.caller = Caller(number="2")
    await eventually(lambda: remote.caller == Caller(number="2"), what="the new nested model")
    # The new nested model is tracked too.
    doc.caller.city = "Praha"
    await eventually(lambda: remote.caller == Caller(number="2", city="Praha"), what="a change inside it")
    # And B's own in-place edit goes back.
    remote.tags.remove("a")
    await eventually(lambda: doc.tags == ["vip"], what="B's in-place removal on A")
    assert not doc.is_dirty
    assert not remote.is_dirty


async def test_local_in_place_change_events_carry_the_old_value(make_db: DbFactory) -> None:
    a = await make_db(flush_interval=3600)
    olds: list[dict[str, Any] | None] = []
    fields: list[tuple[Any, Any]] = []
    objects(a).on_change(lambda old, new: olds.append(old and old.model_dump()), local=True)
    objects(a).on_field_change("tags", lambda d, f, o, n: fields.append((o, list(n))), local=True)
    doc = objects(a).add(channel_id="c-1", tags=["a"])
    doc.tags.append("vip")
    assert fields == [(["a"], ["a", "vip"])]
    assert len(olds) == 2
    assert olds[1] is not None  # None means "a new document" (docs/events.md)
    assert olds[1]["tags"] == ["a"]


# -- load ------------------------------------------------------------------------------------------


async def test_20k_documents_load_completely_every_time(make_db: DbFactory) -> None:
    n = 20_000
    writer = await make_db(flush_interval=60)
    add = objects(writer).add
    for i in range(n):
        add(channel_id=f"c-{i}", queue_id=i % 10)
    t0 = time.perf_counter()
    assert await writer.flush() == n
    write_s = time.perf_counter() - t0
    await writer.stop()

    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        db = await make_db()
        times.append(time.perf_counter() - t0)
        assert len(objects(db)) == n
        assert await objects(db).filter(queue_id=3).count() == n // 10
        assert (await objects(db).get(channel_id=f"c-{n - 1}")).queue_id == (n - 1) % 10
        await db.stop()
    print(
        f"\n20k documents: flush {write_s:.2f}s ({n / write_s:,.0f} docs/s); "
        f"start()+load {', '.join(f'{t:.2f}s' for t in times)} (best {n / min(times):,.0f} docs/s)"
    )


# -- events ----------------------------------------------------------------------------------------


async def test_events_remote_and_local_with_old_and_new_values(
    make_db: DbFactory, caplog: pytest.LogCaptureFixture
) -> None:
    a = await make_db()
    b = await make_db()
    remote_changes: list[tuple[dict[str, Any] | None, dict[str, Any]]] = []
    remote_fields: list[tuple[str, str, Any, Any]] = []
    remote_deletes: list[str] = []
    local_changes: list[tuple[dict[str, Any] | None, dict[str, Any]]] = []
    local_fields: list[tuple[str, Any, Any]] = []
    a_remote_only: list[object] = []

    def boom(old: Call | None, new: Call) -> None:
        raise RuntimeError("callback failure")

    async def on_delete_async(doc: Call) -> None:
        await asyncio.sleep(0)
        remote_deletes.append(doc.channel_id)

    objects(b).on_change(boom)  # registered first: must not stop the others or the sync
    objects(b).on_change(lambda old, new: remote_changes.append((old and old.model_dump(), new.model_dump())))
    objects(b).on_field_change("state", lambda d, f, o, n: remote_fields.append((d.channel_id, f, o, n)))
    objects(b).on_delete(on_delete_async)
    objects(a).on_change(
        lambda old, new: local_changes.append((old and old.model_dump(), new.model_dump())), local=True
    )
    objects(a).on_field_change("state", lambda d, f, o, n: local_fields.append((f, o, n)), local=True)
    objects(a).on_change(
        lambda old, new: a_remote_only.append(new)
    )  # local=False: A's own changes do not fire
    local_deletes: list[str] = []
    objects(a).on_delete(lambda d: local_deletes.append(d.channel_id), local=True)

    with caplog.at_level(logging.ERROR):
        doc = objects(a).add(channel_id="c-1")
        # Local callbacks fire synchronously, at the change.
        assert local_changes == [(None, doc.model_dump())]
        await eventually(lambda: remote_changes, what="the remote add event")
        assert remote_changes == [(None, doc.model_dump())]

        doc.state = "ringing"
        assert local_fields == [("state", "waiting", "ringing")]
        old, new = local_changes[-1]
        assert old is not None
        assert (old["state"], new["state"]) == ("waiting", "ringing")
        await eventually(lambda: remote_fields, what="the remote field event")
        assert remote_fields == [("c-1", "state", "waiting", "ringing")]
        await eventually(lambda: len(remote_changes) == 2, what="the remote change event")
        old, new = remote_changes[1]
        assert old is not None
        assert (old["state"], new["state"]) == ("waiting", "ringing")
        assert new == doc.model_dump()

        # A field not listened to fires on_change but not on_field_change("state").
        doc.priority = 5
        await eventually(lambda: len(remote_changes) == 3, what="the priority change event")
        old, new = remote_changes[2]
        assert old is not None
        assert (old["priority"], new["priority"]) == (0, 5)
        assert len(remote_fields) == 1

        await doc.delete()
        assert local_deletes == ["c-1"]
        await eventually(lambda: remote_deletes == ["c-1"], what="the async remote delete event")

    assert a_remote_only == []
    assert sum("callback failure" in (r.exc_text or "") for r in caplog.records) == 3
    # B's own change does not fire B's (remote-only) callbacks, but A's.
    objects(b).add(channel_id="c-2")
    await eventually(lambda: len(a_remote_only) == 1, what="B's add as a remote event on A")
    assert len(remote_changes) == 3


# -- dead letters ----------------------------------------------------------------------------------


async def test_poison_entries_are_dead_lettered_and_can_be_requeued(
    make_db: DbFactory, nats_client: Client, brainless_namespace: str
) -> None:
    a = await make_db()
    good = objects(a).add(channel_id="good")
    await a.flush()
    await a.stop()
    kv = await nats_client.jetstream().key_value(f"{brainless_namespace}-call")
    await kv.put("not-json", b"\x00 not json {")
    bad_doc = orjson.dumps({"channel_id": "bad", "queue_id": "not a number"})
    await kv.put("not-valid", bad_doc)

    b = await make_db()
    c = await make_db()
    for db in (b, c):
        assert [d.uuid for d in objects(db)] == [good.uuid]
    letters = await eventually(
        lambda: _letters(b, {"not-json", "not-valid"}), what="both entries in the dead letters"
    )
    by_key = {dl.key: dl for dl in letters}
    assert {dl.collection for dl in letters} == {"call"}
    assert by_key["not-json"].value == b"\x00 not json {"
    assert by_key["not-valid"].value == bad_doc
    assert "queue_id" in by_key["not-valid"].error
    assert by_key["not-json"].error
    await eventually(lambda: _gone(kv, "not-json"), what="not-json removed from the bucket")
    await eventually(lambda: _gone(kv, "not-valid"), what="not-valid removed from the bucket")

    # Still invalid: nothing changes.
    with pytest.raises(ValidationError):
        await b.requeue_dead_letter(by_key["not-valid"])
    fixed = orjson.dumps({"channel_id": "bad", "queue_id": 4})
    doc = await b.requeue_dead_letter(by_key["not-valid"], fixed)
    assert isinstance(doc, Call)
    assert doc.uuid == "not-valid"
    assert (doc.channel_id, doc.queue_id) == ("bad", 4)
    await eventually(lambda: "not-valid" in objects(c), what="the requeued document on C")
    assert await objects(c).filter(queue_id=4).count() == 1
    assert [dl.key for dl in await b.dead_letters()] == ["not-json"]
    d = await make_db()
    assert {x.channel_id for x in objects(d)} == {"good", "bad"}


async def test_a_requeue_that_lands_while_another_document_fails_drops_its_letter(
    make_db: DbFactory, nats_client: Client, brainless_namespace: str
) -> None:
    b = await make_db(flush_interval=60)
    kv = await nats_client.jetstream().key_value(f"{brainless_namespace}-call")
    await kv.put("broken", b"\x00 not json")  # arrives over the watch: moved aside
    (letter,) = await eventually(lambda: _letters(b, {"broken"}), what="the dead letter")
    big = objects(b).add(channel_id="big", note="x" * (1024 * 1024 + 1))  # over the max payload
    with pytest.raises(FlushError) as err:
        await b.requeue_dead_letter(letter, orjson.dumps({"channel_id": "fixed"}))
    assert [k for _c, k, _e in err.value.failures] == [big.uuid]
    assert objects(b)["broken"].channel_id == "fixed"
    assert await b.dead_letters() == []
    assert orjson.loads((await kv.get("broken")).value)["channel_id"] == "fixed"
    objects(b).delete(big)


class Reading(Base):
    value: float = 0.0
    label: str = Field("", alias="Label")


async def test_nan_infinities_and_aliased_fields_load_back_from_nats(make_db: DbFactory) -> None:
    a = await make_db(documents=(Reading,))
    b = await make_db(documents=(Reading,))
    doc = Reading.objects.using(a).add(value=float("-inf"), Label="l")
    nan = Reading.objects.using(a).add(value=float("nan"))
    await a.flush()
    await eventually(lambda: doc.uuid in Reading.objects.using(b), what="the document on B")
    other = Reading.objects.using(b)[doc.uuid or ""]
    assert (other.value, other.label) == (float("-inf"), "l")
    fresh = await make_db(documents=(Reading,))
    loaded = Reading.objects.using(fresh)[nan.uuid or ""]
    assert loaded.value != loaded.value  # NaN, not null (which a float refuses: a dead letter)
    assert await fresh.dead_letters() == []


class Strict(Base):
    model_config = DocumentConfig(extra="forbid")
    at: datetime.datetime = Field(strict=True)
    big: int = 2**70 + 1
    raw: bytes = b"\x00\xff"


async def test_strict_forbid_classes_big_integers_and_binary_bytes_load_back_from_nats(
    make_db: DbFactory,
) -> None:
    # Written, then dead-lettered by every node that read it: an extra="forbid" class read its
    # stored JSON in Python mode (a strict datetime refuses a str), big integers went through a
    # float, and bytes that are not UTF-8 could not be written at all.
    when = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.timezone.utc)
    a = await make_db(documents=(Strict,))
    b = await make_db(documents=(Strict,))
    doc = Strict.objects.using(a).add(at=when)
    await a.flush()
    await eventually(lambda: doc.uuid in Strict.objects.using(b), what="the document on B")
    fresh = await make_db(documents=(Strict,))
    for db in (b, fresh):
        got = Strict.objects.using(db)[doc.uuid or ""]
        assert (got.at, got.big, got.raw) == (when, 2**70 + 1, b"\x00\xff")
        assert await db.dead_letters() == []


async def _letters(db: Database, keys: set[str]) -> list[Any]:
    letters = await db.dead_letters()
    return letters if {dl.key for dl in letters} == keys else []


async def _gone(kv: Any, key: str) -> bool:
    try:
        await kv.get(key)
    except KeyNotFoundError:  # KeyDeletedError too
        return True
    return False


async def test_poison_entry_arriving_live_is_dead_lettered(
    make_db: DbFactory, nats_client: Client, brainless_namespace: str
) -> None:
    a = await make_db()
    b = await make_db()
    doc = objects(a).add(channel_id="c-1")
    await eventually(lambda: doc.uuid in objects(b), what="the add on B")
    kv = await nats_client.jetstream().key_value(f"{brainless_namespace}-call")
    # A poison update of an existing document and a poison new one.
    assert doc.uuid is not None
    await kv.put(doc.uuid, b'{"channel_id": ["not", "a", "string"]}')
    await kv.put("live-bad", b"[1, 2]")

    letters = await eventually(
        lambda: _letters(a, {doc.uuid, "live-bad"}), what="the live poison in the dead letters"
    )
    assert all(dl.collection == "call" for dl in letters)
    await eventually(lambda: _gone(kv, "live-bad"), what="live-bad removed from the bucket")
    assert "live-bad" not in objects(a)
    assert "live-bad" not in objects(b)
    # The poison version replaced c-1 in the bucket: the nodes that held c-1 write their last good
    # version back over it, so c-1 survives everywhere, in the bucket too.
    uuid = doc.uuid

    async def restored() -> bool:
        try:
            entry = await kv.get(uuid)
        except KeyNotFoundError:
            return False
        return entry.value is not None and orjson.loads(entry.value).get("channel_id") == "c-1"

    await eventually(restored, what="c-1's last good version back in the bucket")
    assert objects(a)[uuid].channel_id == objects(b)[uuid].channel_id == "c-1"
    # The sync goes on.
    c2 = objects(b).add(channel_id="c-2")
    await eventually(lambda: c2.uuid in objects(a), what="a later add")
    # Requeue the new one, fixed, from A: B gets it.
    (new_letter,) = [dl for dl in letters if dl.key == "live-bad"]
    await a.requeue_dead_letter(new_letter, b'{"channel_id": "c-3"}')
    await eventually(lambda: "live-bad" in objects(b), what="the requeued document on B")
    assert objects(b)["live-bad"].channel_id == "c-3"


async def test_a_node_starting_on_an_unreadable_version_does_not_delete_what_others_restore(
    make_db: DbFactory, nats_client: Client, brainless_namespace: str
) -> None:
    # A node that starts while unreadable bytes are the latest version of a document (before the
    # nodes holding it wrote it back) moves them to its dead letters and removes them. That removal
    # was a plain delete marker: the holder's write-back met it as a delete, and the document was
    # gone everywhere, its last good version with it (the dead letter holds only the bad bytes).
    a = await make_db(flush_interval=3600)
    doc = objects(a).add(channel_id="precious", priority=3)
    await a.flush()
    uuid = doc.uuid
    assert uuid is not None
    kv = await nats_client.jetstream().key_value(f"{brainless_namespace}-call")
    await kv.put(uuid, b"\x00 not json")
    await eventually(lambda: objects(a)[uuid].is_dirty, what="a to mark its restore")
    c = await make_db(flush_interval=3600)  # loads the bytes: its dead letter, and the removal
    await eventually(lambda: _gone(kv, uuid), what="the bytes removed by c")
    assert uuid not in objects(c)
    await a.flush()  # a's last good version, over the removal's marker
    await eventually(lambda: uuid in objects(c), what="c to take the document back")
    assert (objects(c)[uuid].channel_id, objects(c)[uuid].priority) == ("precious", 3)
    assert objects(a)[uuid] is doc
    entry = await kv.get(uuid)
    assert entry.value is not None
    assert orjson.loads(entry.value)["channel_id"] == "precious"
    # A delete by a node is still a delete: a holds the document, c deletes it.
    objects(c).delete(objects(c)[uuid])
    await c.flush()
    await eventually(lambda: uuid not in objects(a), what="c's delete on a")


# -- stop, bad input, operator errors --------------------------------------------------------------


async def test_stop_flushes_pending_changes(make_db: DbFactory) -> None:
    a = await make_db(flush_interval=3600)
    docs = [objects(a).add(channel_id=f"c-{i}") for i in range(200)]
    await a.flush()
    for d in docs[:50]:
        d.priority = 9
    for d in docs[50:60]:
        await d.delete()
    for i in range(200, 230):
        objects(a).add(channel_id=f"c-{i}")
    assert any(d.is_dirty for d in docs[:50])
    expected = dumps(a)
    await a.stop()
    b = await make_db()
    assert dumps(b) == expected
    assert await objects(b).filter(priority=9).count() == 50


async def test_oversize_document_fails_alone_and_invalid_uuid_is_rejected(
    make_db: DbFactory, nats_client: Client, brainless_namespace: str
) -> None:
    with pytest.raises(ValidationError):
        Call(uuid="not a key!", channel_id="x")
    with pytest.raises(ValidationError):
        Call(uuid=".leading-dot", channel_id="x")

    a = await make_db(flush_interval=3600)
    with pytest.raises(ValidationError):
        objects(a).add(uuid="has space", channel_id="x")
    big = objects(a).add(channel_id="big", note="x" * (nats_client.max_payload + 10))
    small = [objects(a).add(channel_id=f"c-{i}") for i in range(20)]
    with pytest.raises(FlushError) as info:
        await asyncio.wait_for(a.flush(), 10)
    assert big.uuid is not None
    assert [(c, k) for c, k, _ in info.value.failures] == [("call", big.uuid)]
    assert isinstance(info.value.failures[0][2], PayloadTooLarge)
    assert big.uuid in str(info.value)
    assert big.is_dirty  # kept, to be retried

    b = await make_db()
    assert {d.channel_id for d in objects(b)} == {d.channel_id for d in small}
    big.note = "small now"
    assert await asyncio.wait_for(a.flush(), 10) == 1
    await eventually(lambda: big.uuid in objects(b), what="the fixed document on B")


async def test_bucket_deleted_while_running_fails_flush_clearly(
    make_db: DbFactory, nats_client: Client, brainless_namespace: str
) -> None:
    a = await make_db(flush_interval=3600)
    doc = objects(a).add(channel_id="c-1")
    await a.flush()
    await nats_client.jetstream().delete_key_value(f"{brainless_namespace}-call")

    doc.priority = 3
    objects(a).add(channel_id="c-2")
    t0 = time.monotonic()
    with pytest.raises(FlushError) as info:
        await asyncio.wait_for(a.flush(), 15)
    assert time.monotonic() - t0 < 10
    assert len(info.value.failures) == 2
    assert all(isinstance(exc, BucketNotFound) for _c, _k, exc in info.value.failures)
    assert f"{brainless_namespace}-call" in str(info.value)
    with pytest.raises(FlushError):
        await asyncio.wait_for(a.stop(), 15)


async def test_connection_closed_under_a_running_database_fails_flush_instead_of_hanging(
    nats_url: str, brainless_namespace: str
) -> None:
    nc = await connect(nats_url)
    db = await Database(nc, namespace=brainless_namespace, documents=[Call], flush_interval=3600).start()
    objects(db).add(channel_id="c-1")
    await nc.close()
    with pytest.raises(FlushError) as info:
        await asyncio.wait_for(db.flush(), 15)
    assert all(isinstance(exc, ConnectionClosed) for _c, _k, exc in info.value.failures)
    with pytest.raises(FlushError):
        await asyncio.wait_for(db.stop(), 15)


# -- latency ---------------------------------------------------------------------------------------


async def test_propagation_latency(make_db: DbFactory) -> None:
    a = await make_db(flush_interval=0)
    b = await make_db(flush_interval=0)
    doc = objects(a).add(channel_id="c-1")
    await eventually(lambda: doc.uuid in objects(b), what="the add on B")
    seen: dict[int, float] = {}
    objects(b).on_field_change("priority", lambda d, f, o, n: seen.setdefault(n, time.perf_counter()))
    lat = []
    for i in range(1, 201):
        t0 = time.perf_counter()
        doc.priority = i
        await eventually(lambda: i in seen, what=f"update {i} on B")  # noqa: B023  (awaited here)
        lat.append(seen[i] - t0)
    lat.sort()
    p50, p99 = statistics.median(lat), lat[int(len(lat) * 0.99) - 1]
    print(f"\npropagation A->B (flush_interval=0): p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")
    assert p99 < 1.0


async def test_entries_expiring_by_bucket_ttl_leave_every_node(
    nats_url: str, brainless_namespace: str
) -> None:
    reg = Registry()

    class Session(Document):
        model_config = DocumentConfig(registry=reg, bucket_ttl=1.0)
        name: str = ""

    made = []
    for location in ("a", "b"):
        nc = await connect(nats_url)
        db = Database(nc, namespace=brainless_namespace, location=location, documents=reg)
        made.append((await db.start(), nc))
    (a, _), (b, _) = made
    try:
        session = Session.objects.using(a).add(name="x")
        await a.flush()
        await eventually(lambda: session.uuid in Session.objects.using(b), what="the add on B")
        # The server writes a MaxAge delete marker when the entry ages out; both nodes apply it.
        await eventually(
            lambda: (
                session.uuid not in Session.objects.using(a) and session.uuid not in Session.objects.using(b)
            ),
            timeout=10,
            what="the expired session gone from both nodes",
        )
    finally:
        for db, nc in made:
            await db.stop()
            await nc.close()


async def test_a_stopped_node_applies_nothing_more(make_db: DbFactory) -> None:
    """Changes keep arriving while a node stops (its watch delivers from the connection's reader):
    once stop() returns, nothing is applied to its collection any more."""
    a = await make_db(flush_interval=0)
    b = await make_db()
    docs = [objects(a).add(channel_id=f"s-{i}") for i in range(50)]
    await a.flush()
    await eventually(lambda: len(objects(b)) == 50)
    held = list(objects(b))
    coll = b._collections[Call]

    async def keep_writing() -> None:
        for i in range(60):
            docs[i % 50].priority = i % 10
            objects(a).add(channel_id=f"s-new-{i}")
            await asyncio.sleep(0.002)

    writer = asyncio.create_task(keep_writing())
    await asyncio.sleep(0.03)
    await b.stop()
    applied = coll.applied
    keys = set(coll.docs)
    seen = {d.uuid: d.model_dump() for d in held}
    await writer
    await a.flush()
    await asyncio.sleep(0.3)  # time for any late delivery to (wrongly) arrive
    assert coll.applied == applied
    assert set(coll.docs) == keys
    assert {d.uuid: d.model_dump() for d in held} == seen
    assert all(d._odm_coll is None for d in held)
    assert len(objects(await make_db())) == 110  # the writes did land


class _HeldWrites:
    """A's bucket, whose writes wait for ``release``: before reaching the server (``before``: they
    never land, the flush gives up) or after (they land, their answers wait)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.hold: str | None = None
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, ops: Any) -> Any:
        if self.hold == "before":
            await self.release.wait()
        results = await self.inner.write(ops)
        if self.hold == "after":
            await self.release.wait()
        return results


async def _lost_write_then_remote_note(
    make_db: DbFactory,
) -> tuple[Database, Database, Call, Call, Collection[Call], _HeldWrites]:
    """A adds a call (B has it), then A's write of ``state="a"`` never lands and A gives up on it
    (its outcome unknown); B then sets the note to "b" and A's watch brings it."""
    a = await make_db(flush_interval=3600)
    b = await make_db(flush_interval=3600)
    doc = objects(a).add(channel_id="c-1", note="")
    key = doc.uuid or ""
    await a.flush()
    await eventually(lambda: key in objects(b), what="the add on B")
    remote = objects(b)[key]
    coll = a.collection(Call)
    held = _HeldWrites(coll.bucket)
    coll.bucket = held  # type: ignore[assignment]
    held.hold = "before"
    doc.state = "a"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(a.flush(), 0.3)
    held.hold = None
    assert coll.unknown
    remote.note = "b"
    await b.flush()
    await eventually(lambda: doc.note == "b", what="A to take B's note")
    return a, b, doc, remote, coll, held


async def test_repair_after_a_landed_probe_yields_to_a_later_acknowledged_change(make_db: DbFactory) -> None:
    """A's write of ``state`` never lands and A gives up on it; B then sets the note ("b"). A's
    next flush sends the lost write again (a probe), which lands now with the old note: A owes B's
    note back. Before A writes it, B changes the note again ("b2", acknowledged). A wrote "b" over
    it: it took the note it only had to put back for an edit of its own (found by a review with a
    frozen and restarted server)."""
    a, b, doc, remote, coll, held = await _lost_write_then_remote_note(make_db)
    key = doc.uuid or ""
    # As if A's watch had skipped a version (a restarted watch misses versions replaced meanwhile):
    # A cannot tell that its write did not land, so it sends it again to learn (a probe).
    coll.unknown_gap.add(key)
    doc.priority = 8  # an edit of A's: the next flush sends the lost write first
    held.release = asyncio.Event()
    held.hold = "after"
    flushing = asyncio.ensure_future(a.flush())
    try:
        await eventually(lambda: not coll.unknown, what="A to see its probe land")
        await eventually(lambda: remote.note == "", what="B to see the probe's stale note")
        remote.note = "b2"
        await b.flush()
        revision = remote._odm_rev
        await eventually(lambda: coll.applied >= revision, what="A's watch to bring B's note")
    finally:
        held.hold = None
        held.release.set()
        await flushing
    await a.flush()
    fresh = await make_db()
    stored = objects(fresh)[key]
    assert (stored.state, stored.note, stored.priority) == ("a", "b2", 8)
    await eventually(lambda: (doc.note, remote.priority) == ("b2", 8), what="A and B to converge")


async def test_lost_write_another_node_wrote_over_is_rewritten_without_a_probe(make_db: DbFactory) -> None:
    """A's write of ``state`` never lands and A gives up on it; B then sets the note, on the version
    A's write expected, and A's watch brings it. So A's write cannot have landed, nor ever will:
    A's next flush writes its state and its later edit as one new write, and B never sees its note
    undone (a probe would store the lost write's stale note first)."""
    a, b, doc, remote, coll, _ = await _lost_write_then_remote_note(make_db)
    key = doc.uuid or ""
    notes: list[tuple[str, str]] = []
    objects(b).on_field_change("note", lambda d, n, old, new: notes.append((old, new)))
    doc.priority = 8
    await a.flush()
    assert not coll.unknown
    fresh = await make_db()
    stored = objects(fresh)[key]
    assert (stored.state, stored.note, stored.priority) == ("a", "b", 8)
    await eventually(lambda: (remote.state, remote.priority) == ("a", 8), what="B to converge")
    assert notes == []
