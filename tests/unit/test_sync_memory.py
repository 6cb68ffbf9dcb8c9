"""Two or three Databases sharing one MemoryStore behave like nodes sharing one NATS server."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

import orjson
import pytest
from helpers import DbFactory, wait_for
from pydantic import BaseModel, Field

from brainless_odm import Database, Document, DocumentConfig, Indexed, MemoryStore, Registry

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Caller(BaseModel):
    number: str
    city: str | None = None


class Call(Base):
    channel_id: str = ""
    state: Annotated[str, Indexed()] = "waiting"
    priority: int = 0
    caller: Caller | None = None
    tags: list[str] = Field(default_factory=list)


Nodes = tuple[Database, Database, MemoryStore]


@pytest.fixture
async def nodes(make_db: DbFactory) -> Nodes:
    store = MemoryStore()
    a = await make_db(Call, store=store, location="a", flush_interval=60)
    b = await make_db(Call, store=store, location="b", flush_interval=60)
    return a, b, store


async def shared_doc(a: Database, b: Database, **fields: Any) -> tuple[Call, Call]:
    doc = Call.objects.using(a).add(**fields)
    await a.flush()
    key = doc.uuid or ""
    await wait_for(lambda: key in Call.objects.using(b), what="the document to reach b")
    return doc, Call.objects.using(b)[key]


async def test_add_update_delete_propagate(nodes: Nodes) -> None:
    a, b, _ = nodes
    doc, remote = await shared_doc(a, b, channel_id="x", tags=["t"], caller=Caller(number="1"))
    assert remote is not doc
    assert remote.model_dump() == doc.model_dump()
    assert not remote.is_dirty

    doc.priority = 3
    doc.tags.append("u")
    assert doc.caller is not None
    doc.caller.city = "Brno"
    await a.flush()
    await wait_for(lambda: remote.priority == 3, what="the update to reach b")
    assert remote.tags == ["t", "u"]
    assert remote.caller == Caller(number="1", city="Brno")
    assert not remote.is_dirty

    await Call.objects.using(a).filter(channel_id="x").update(state="done")
    await a.flush()
    await wait_for(lambda: remote.state == "done", what="update() to reach b")
    assert await Call.objects.using(b).filter(state="done") == [remote]

    await doc.delete()
    await a.flush()
    await wait_for(lambda: remote.uuid not in Call.objects.using(b), what="the delete to reach b")


async def test_remote_values_stay_tracked(nodes: Nodes) -> None:
    a, b, _ = nodes
    doc, remote = await shared_doc(a, b, tags=["t"], caller=Caller(number="1"))
    doc.tags = ["new"]
    await a.flush()
    await wait_for(lambda: remote.tags == ["new"], what="the change to reach b")
    remote.tags.append("more")
    assert remote.dirty_fields == {"tags"}
    await b.flush()
    await wait_for(lambda: doc.tags == ["new", "more"], what="b's change to reach a")


async def test_concurrent_edits_of_different_fields_are_all_kept(nodes: Nodes) -> None:
    a, b, _ = nodes
    doc, remote = await shared_doc(a, b)
    doc.priority = 7
    remote.state = "talking"
    remote.tags.append("b-tag")
    await asyncio.gather(a.flush(), b.flush())
    for d in (doc, remote):
        await wait_for(
            lambda d=d: (d.priority, d.state, d.tags) == (7, "talking", ["b-tag"]),  # type: ignore[misc]
            what="both edits everywhere",
        )
        assert not d.is_dirty


async def test_sequential_edits_of_different_fields_are_all_kept(nodes: Nodes) -> None:
    a, b, _ = nodes
    doc, remote = await shared_doc(a, b)
    doc.priority = 7
    remote.state = "talking"  # b has not seen a's write when it writes its own
    await a.flush()
    await b.flush()
    for d in (doc, remote):
        await wait_for(lambda d=d: (d.priority, d.state) == (7, "talking"), what="both edits")  # type: ignore[misc]


async def test_concurrent_edits_of_one_field_converge(nodes: Nodes, make_db: DbFactory) -> None:
    a, b, store = nodes
    doc, remote = await shared_doc(a, b)
    doc.priority = 1
    remote.priority = 2
    await asyncio.gather(a.flush(), b.flush())
    bucket = store.bucket("test-call")

    async def settled() -> bool:
        entry = await bucket.get(doc.uuid or "")
        assert entry is not None
        stored = Call.model_validate_json(entry.value).priority
        return doc.priority == remote.priority == stored and not doc.is_dirty and not remote.is_dirty

    await wait_for(settled, what="one value everywhere")
    assert doc.priority in (1, 2)
    c = await make_db(Call, store=store, location="c")
    assert Call.objects.using(c)[doc.uuid or ""].priority == doc.priority


async def test_concurrent_edits_of_one_field_converge_with_sequential_flushes(nodes: Nodes) -> None:
    a, b, _ = nodes
    doc, remote = await shared_doc(a, b)
    doc.state = "a-state"
    remote.state = "b-state"
    await a.flush()
    await b.flush()
    await wait_for(lambda: doc.state == remote.state, what="convergence")
    assert doc.state in ("a-state", "b-state")


async def test_a_remote_delete_wins_over_local_pending_edits(nodes: Nodes) -> None:
    a, b, store = nodes
    doc, remote = await shared_doc(a, b)
    remote.priority = 5  # pending on b (flush_interval is long)
    remote.tags.append("x")
    await doc.delete()
    await a.flush()
    await wait_for(lambda: remote.uuid not in Call.objects.using(b), what="the delete to reach b")
    await b.flush()
    entry = await store.bucket("test-call").get(doc.uuid or "")
    assert entry is not None
    assert entry.value == b""  # still deleted
    assert len(Call.objects.using(b)) == 0


async def test_a_remote_delete_wins_over_a_local_edit_flushed_after_it(nodes: Nodes) -> None:
    a, b, store = nodes
    doc, remote = await shared_doc(a, b)
    await doc.delete()
    await a.flush()
    remote.priority = 5  # b has not applied the delete yet, or has: either way it must lose
    await b.flush()
    await wait_for(lambda: remote.uuid not in Call.objects.using(b), what="the delete to win on b")
    entry = await store.bucket("test-call").get(doc.uuid or "")
    assert entry is not None
    assert entry.value == b""
    assert doc.uuid not in Call.objects.using(a)


async def test_an_in_place_edit_after_an_unreadable_version_survives_another_restore(nodes: Nodes) -> None:
    # The in-place twin of test_review_races' assignment case: an unreadable version marks every
    # field of both nodes' documents to restore the last good one; a's edit made after that is an
    # edit, and b's restore landing first must not undo it.
    a, b, store = nodes
    doc, remote = await shared_doc(a, b, tags=["t"])
    await store.bucket("test-call").put_raw(doc.uuid or "", b"not json")
    await wait_for(lambda: a.collection(Call).restoring and b.collection(Call).restoring, what="both")
    doc.tags.append("edited after")
    await b.flush()  # b's restore lands first
    await wait_for(lambda: not a.collection(Call).restoring, what="a to rebase on b's restore")
    await a.flush()
    await wait_for(lambda: remote.tags == ["t", "edited after"], what="b to take a's edit")
    entry = await store.bucket("test-call").get(doc.uuid or "")
    assert entry is not None
    assert orjson.loads(entry.value)["tags"] == ["t", "edited after"]


async def test_a_fresh_database_loads_what_others_wrote(nodes: Nodes, make_db: DbFactory) -> None:
    a, b, store = nodes
    Call.objects.using(a).add(channel_id="from-a")
    Call.objects.using(b).add(channel_id="from-b")
    await asyncio.gather(a.flush(), b.flush())
    c = await make_db(Call, store=store, location="c")
    assert sorted(d.channel_id for d in Call.objects.using(c)) == ["from-a", "from-b"]


# -- events ----------------------------------------------------------------------------------------
async def test_events_fire_for_remote_changes_with_old_and_new(nodes: Nodes) -> None:
    a, b, _ = nodes
    changes: list[tuple[Any, Any]] = []
    deletes: list[Call] = []
    fields: list[tuple[str, str, Any, Any]] = []
    on_b = Call.objects.using(b)
    on_b.on_change(lambda old, new: changes.append((None if old is None else old.model_dump(), new)))
    on_b.on_delete(deletes.append)
    on_b.on_field_change("state", lambda d, f, o, n: fields.append((d.uuid, f, o, n)))

    doc, remote = await shared_doc(a, b, channel_id="e")
    await wait_for(lambda: changes, what="the add event")
    assert changes[0][0] is None
    assert changes[0][1] is remote

    doc.state = "talking"
    doc.priority = 2
    await a.flush()
    await wait_for(lambda: fields, what="the field event")
    assert fields == [(doc.uuid, "state", "waiting", "talking")]
    await wait_for(lambda: len(changes) == 2, what="the change event")
    old, new = changes[1]
    assert (old["state"], old["priority"]) == ("waiting", 0)
    assert new is remote
    assert (new.state, new.priority) == ("talking", 2)

    doc.priority = 3  # not the watched field
    await a.flush()
    await wait_for(lambda: len(changes) == 3, what="the second change event")
    assert len(fields) == 1

    await doc.delete()
    await a.flush()
    await wait_for(lambda: deletes, what="the delete event")
    assert deletes == [remote]


@pytest.mark.parametrize("field_listener", [False, True])
async def test_the_old_document_of_a_remote_change_is_detached(nodes: Nodes, field_listener: bool) -> None:
    """``old`` is built from containers nobody else holds (the replaced ones, the remote's equal
    ones) when the document was never read: it must still be a copy of what the document was,
    sharing nothing with the document, a field callback's ``old``, or a locally edited field."""
    a, b, _ = nodes
    changes: list[tuple[Call, Call]] = []
    field_olds: list[Any] = []
    on_b = Call.objects.using(b)
    on_b.on_change(lambda old, new: changes.append((old, new)) if old is not None else None)
    if field_listener:
        on_b.on_field_change("tags", lambda d, f, o, n: field_olds.append(o))
    doc, remote = await shared_doc(a, b, channel_id="d", tags=["t"], caller=Caller(number="1"))
    remote.channel_id = "edited on b"  # protected on b until written
    doc.tags = ["t", "u"]
    doc.priority = 5
    await a.flush()
    await wait_for(lambda: changes, what="the change event")
    ((old, new),) = changes
    assert new is remote
    assert (old.channel_id, old.priority, old.tags, old.caller) == (
        "edited on b",
        0,
        ["t"],
        Caller(number="1"),
    )
    assert (new.channel_id, new.priority, new.tags) == ("edited on b", 5, ["t", "u"])
    assert old.tags is not new.tags
    assert old.caller is not new.caller
    if field_listener:
        assert field_olds == [["t"]]
        assert field_olds[0] is not old.tags
    new.tags.append("v")
    assert new.caller is not None
    new.caller.city = "Brno"
    assert (old.tags, old.caller) == (["t"], Caller(number="1"))
    old.tags.append("x")
    assert new.tags == ["t", "u", "v"]
    assert remote.is_dirty


async def test_local_changes_fire_only_with_local_true(nodes: Nodes) -> None:
    a, _, _ = nodes
    remote_only: list[Any] = []
    local: list[Any] = []
    on_a = Call.objects.using(a)
    on_a.on_change(lambda old, new: remote_only.append(new))
    on_a.on_delete(remote_only.append)
    on_a.on_field_change("state", lambda *args: remote_only.append(args))
    on_a.on_change(
        lambda old, new: local.append(("change", None if old is None else old.state, new.state)), local=True
    )
    on_a.on_field_change("state", lambda d, f, o, n: local.append(("field", o, n)), local=True)
    on_a.on_delete(lambda d: local.append(("delete", d.state)), local=True)
    doc = on_a.add(channel_id="l")
    doc.state = "talking"
    await doc.delete()
    await a.flush()
    assert remote_only == []
    assert local == [
        ("change", None, "waiting"),
        ("field", "waiting", "talking"),
        ("change", "waiting", "talking"),
        ("delete", "talking"),
    ]


async def test_class_level_callbacks_hear_every_database(nodes: Nodes) -> None:
    a, b, _ = nodes
    heard: list[str] = []

    def cb(old: Call | None, new: Call) -> None:
        heard.append(new.channel_id)

    Call.objects.on_change(cb, local=True)
    try:
        Call.objects.using(a).add(channel_id="on-a")
        Call.objects.using(b).add(channel_id="on-b")
    finally:
        assert Call.objects.off(cb)
    assert heard == ["on-a", "on-b"]
    assert not Call.objects.off(cb)


async def test_async_callbacks_are_awaited(nodes: Nodes) -> None:
    a, b, _ = nodes
    done: list[tuple[str, Any, Any]] = []

    async def on_field(doc: Call, field: str, old: Any, new: Any) -> None:
        await asyncio.sleep(0)
        done.append((field, old, new))

    Call.objects.using(b).on_field_change("priority", on_field)
    doc, _ = await shared_doc(a, b)
    doc.priority = 4
    await a.flush()
    await wait_for(lambda: done, what="the async callback")
    assert done == [("priority", 0, 4)]


async def test_a_raising_callback_is_logged_and_sync_continues(
    nodes: Nodes, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, _ = nodes
    seen: list[int] = []

    def bad(old: Call | None, new: Call) -> None:
        raise RuntimeError("callback exploded")

    async def bad_async(doc: Call, field: str, old: Any, new: Any) -> None:
        raise RuntimeError("async callback exploded")

    on_b = Call.objects.using(b)
    on_b.on_change(bad)
    on_b.on_field_change("priority", bad_async)
    on_b.on_field_change("priority", lambda d, f, o, n: seen.append(n))
    with caplog.at_level(logging.ERROR):
        doc, remote = await shared_doc(a, b)
        for p in (1, 2, 3):
            doc.priority = p
            await a.flush()
            await wait_for(lambda p=p: remote.priority == p, what=f"priority {p} on b")  # type: ignore[misc]
        await wait_for(lambda: "async callback exploded" in caplog.text, what="the async failure log")
    assert seen == [1, 2, 3]
    assert "callback exploded" in caplog.text
    # b still syncs and writes
    remote.state = "from-b"
    await b.flush()
    await wait_for(lambda: doc.state == "from-b", what="b's write to reach a")


async def test_on_field_change_of_an_unknown_field_is_refused(nodes: Nodes) -> None:
    a, _, _ = nodes
    from brainless_odm import QueryError

    with pytest.raises(QueryError):
        Call.objects.using(a).on_field_change("nope", lambda *args: None)


async def test_local_in_place_change_events_carry_the_old_value(nodes: Nodes) -> None:
    a, _, _ = nodes
    changes: list[tuple[Any, Any]] = []
    fields: list[tuple[Any, Any]] = []
    on_a = Call.objects.using(a)
    doc = on_a.add(channel_id="ip", tags=["t"])
    on_a.on_change(lambda old, new: changes.append((old, list(new.tags))), local=True)
    on_a.on_field_change("tags", lambda d, f, o, n: fields.append((o, list(n))), local=True)
    doc.tags.append("u")
    assert fields == [(["t"], ["t", "u"])]
    ((old, new_tags),) = changes
    assert old is not None, "an in-place change was reported like an add"
    assert (old.tags, new_tags) == (["t"], ["t", "u"])
