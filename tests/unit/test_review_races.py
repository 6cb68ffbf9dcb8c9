"""Adversarial review: interleavings of local edits, in-flight writes, the watch and conflicts.

Nodes are ``Database`` objects sharing one ``MemoryStore``. Interleavings are made deterministic by
giving one node's collection a gated bucket: its ``write``/``get`` reach the store at once but hand
their results back only when the test opens the gate (a slow ack / slow read on the network).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

import pytest
from helpers import DbFactory, wait_for

from brainless_odm import Database, Document, DocumentConfig, FlushError, Indexed, MemoryStore, Registry
from brainless_odm.engine.collection import _ROUND
from brainless_odm.exceptions import ConnectionLost, StoreError
from brainless_odm.store.base import Entry, WriteOp, WriteResult

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Ticket(Base):
    state: Annotated[str, Indexed()] = "new"
    team: Annotated[str, Indexed()] = "t0"
    note: str = ""
    priority: int = 0


Nodes = tuple[Database, Database, MemoryStore]


class Gated:
    """A bucket whose writes/reads are applied at once but answered only when the gate opens."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate_writes = False
        self.unapplied = False  # hold writes before they reach the store (nothing lands)
        self.gate_gets = False
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _hold(self) -> None:
        self.waiting.set()
        await self.release.wait()

    async def write(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        if self.gate_writes and self.unapplied:
            await self._hold()
        results: list[WriteResult] = await self.inner.write(ops)
        if self.gate_writes and not self.unapplied:
            await self._hold()
        return results

    async def get(self, key: str) -> Entry | None:
        entry: Entry | None = await self.inner.get(key)
        if self.gate_gets:
            await self._hold()
        return entry


def gate(db: Database, cls: type[Document] = Ticket) -> Gated:
    coll = db.collection(cls)
    g = Gated(coll.bucket)
    coll.bucket = g
    return g


@pytest.fixture
async def nodes(make_db: DbFactory) -> Nodes:
    store = MemoryStore()
    a = await make_db(Ticket, store=store, location="a", flush_interval=60)
    b = await make_db(Ticket, store=store, location="b", flush_interval=60)
    return a, b, store


async def shared(a: Database, b: Database, **fields: Any) -> tuple[Ticket, Ticket]:
    doc = Ticket.objects.using(a).add(**fields)
    await a.flush()
    key = doc.uuid or ""
    await wait_for(lambda: key in Ticket.objects.using(b), what="the document to reach b")
    return doc, Ticket.objects.using(b)[key]


def stored(store: MemoryStore, key: str) -> Ticket | None:
    entry = store.bucket("test-ticket")._latest.get(key)
    if entry is None or not entry.value:
        return None
    return Ticket.model_validate_json(entry.value)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


# -- bugs ----------------------------------------------------------------------------------------


async def test_same_field_written_on_top_of_our_unacked_write_converges(nodes: Nodes) -> None:
    a, b, store = nodes
    doc, remote = await shared(a, b)
    g = gate(a)
    g.gate_writes = True

    doc.state = "a"
    flush_a = asyncio.create_task(a.flush())
    await asyncio.wait_for(g.waiting.wait(), 2)  # stored at r2, ack not yet back at a
    await wait_for(lambda: remote.state == "a", what="b to see a's write")
    remote.state = "b"
    await b.flush()  # CAS on a's revision: succeeds, last write
    await settle()  # a's watch delivers the echo, then b's write
    g.release.set()
    await flush_a

    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert ticket.state == "b"
    assert remote.state == "b"
    # Expected: a follows b's later write. Actual: a keeps "a" forever (b's entry was merged while
    # "state" was still in flight, so it was skipped; the ack then clears the protection).
    await wait_for(lambda: doc.state == "b", timeout=0.5, what="a to converge on b's value")


async def test_conflict_resolved_after_remote_delete_leaves_no_index_entry(nodes: Nodes) -> None:
    a, b, _ = nodes
    doc, remote = await shared(a, b)
    key = doc.uuid or ""
    coll = a.collection(Ticket)

    await coll.stop_watch()  # a's watch lags behind (resumed below from `applied`)
    doc.note = "a"  # a's edit, CAS on r1
    remote.team = "t1"
    await b.flush()  # r2: a's write will conflict
    g = gate(a)
    g.gate_gets = True
    flush_a = asyncio.create_task(a.flush())
    await asyncio.wait_for(g.waiting.wait(), 2)  # a read the latest (r2, team t1), answer not back
    coll.start_watch()
    remote.team = "t2"
    await b.flush()  # r3
    await remote.delete()
    await b.flush()  # r4: delete
    try:
        await wait_for(lambda: key not in coll.docs, what="a to apply the delete")
        assert tuple(coll.indexes["team"].holders("t1")) == ()
    finally:
        g.release.set()
        await flush_a

    assert key not in coll.docs
    # Expected: no index entry for a document a no longer holds. Actual: team index maps t1 -> key.
    assert tuple(coll.indexes["team"].holders("t1")) == ()


class SlowWatch:
    """A bucket whose watch hands each entry over only once ``flowing`` is set (a watch behind)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.flowing = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def watch(self, after: int) -> AsyncIterator[Entry]:
        async for entry in self.inner.watch(after):
            await self.flowing.wait()
            yield entry


async def slow_watch(coll: Any) -> SlowWatch:
    """Restart ``coll``'s watch on a SlowWatch: it hands nothing over until ``flowing`` is set."""
    await coll.stop_watch()
    slow = SlowWatch(coll.bucket)
    coll.bucket = slow
    coll.start_watch()
    await settle()
    return slow


async def test_a_version_older_than_our_acknowledged_delete_does_not_bring_it_back(nodes: Nodes) -> None:
    # The tombstone check, which no other test (test_sync_model included) failed without.
    a, b, store = nodes
    doc, remote = await shared(a, b)
    key = doc.uuid or ""
    coll = a.collection(Ticket)
    slow = await slow_watch(coll)
    remote.note = "b"
    await b.flush()  # r2: a's watch has it, not handed over yet
    await doc.delete()
    await a.flush()  # r3: a's delete, acknowledged before its watch hands r2 over
    seen: list[Any] = []
    Ticket.objects.using(a).on_change(lambda old, new: seen.append(new.uuid))
    slow.flowing.set()
    await settle()
    assert key not in coll.docs
    assert seen == []  # not even for a moment
    assert stored(store, key) is None
    await wait_for(lambda: key not in Ticket.objects.using(b), what="b to apply the delete")


async def test_a_conflict_with_an_unreadable_version_waits_for_the_watch_to_reach_it(nodes: Nodes) -> None:
    # Found by test_sync_model: b's write conflicted with an unreadable version its watch had not
    # reached, and b wrote its stale document back over it, bringing back what a had deleted
    # before the unreadable version landed. b must first learn what came before it.
    a, b, store = nodes
    doc, remote = await shared(a, b, note="v1")
    key = doc.uuid or ""
    coll = b.collection(Ticket)
    slow = await slow_watch(coll)
    await doc.delete()
    await a.flush()  # r2: the delete, which b's watch has not handed over
    await a.collection(Ticket).stop_watch()  # (else a moves r3 aside and deletes the key itself)
    await store.bucket("test-ticket").put_raw(key, b"not json")  # r3
    remote.note = "b's edit"
    flush_b = asyncio.create_task(b.flush())  # conflict: the latest is r3, unreadable
    await asyncio.sleep(0.1)
    assert not flush_b.done()  # it waits for its watch
    slow.flowing.set()  # r2, then r3
    await asyncio.wait_for(flush_b, 5)
    await settle()
    assert key not in Ticket.objects.using(b)  # the delete won
    assert key not in Ticket.objects.using(a)
    assert stored(store, key) is None


async def test_unflushed_add_of_same_uuid_is_not_overwritten_by_watch(nodes: Nodes) -> None:
    a, b, store = nodes
    mine = Ticket.objects.using(a).add(Ticket(uuid="same-key", note="from a", priority=1))
    Ticket.objects.using(b).add(Ticket(uuid="same-key", note="from b", priority=2))
    await b.flush()
    await settle()  # a's watch applies b's create over a's pending one
    assert await a.flush() == 1  # a's add: acknowledged, so written last

    ticket = stored(store, "same-key")
    assert ticket is not None
    # Expected (as when the same race is met as a CAS conflict, see _resolve): a's add counts as a
    # change of every field and, written last, wins. Actual: a writes b's values; a's add is lost.
    assert (ticket.note, ticket.priority) == ("from a", 1)
    assert (mine.note, mine.priority) == ("from a", 1)


async def test_same_uuid_conflict_on_write_keeps_the_last_writer(nodes: Nodes) -> None:
    """The same race met as a CAS conflict (both writes under way) is merged as documented."""
    a, b, store = nodes
    Ticket.objects.using(a).add(Ticket(uuid="k2", note="from a", priority=1))
    Ticket.objects.using(b).add(Ticket(uuid="k2", note="from b", priority=2))
    await asyncio.gather(b.flush(), a.flush())
    ticket = stored(store, "k2")
    assert ticket is not None
    await wait_for(
        lambda: Ticket.objects.using(a)["k2"].note == ticket.note == Ticket.objects.using(b)["k2"].note,
        what="convergence on the last write",
    )


# -- checked and found correct (regression tests) ------------------------------------------------


async def test_remote_write_between_write_and_ack_keeps_both_fields(nodes: Nodes) -> None:
    a, b, store = nodes
    doc, remote = await shared(a, b)
    g = gate(a)
    g.gate_writes = True
    doc.state = "a"
    flush_a = asyncio.create_task(a.flush())
    await asyncio.wait_for(g.waiting.wait(), 2)
    await wait_for(lambda: remote.state == "a", what="b to see a's write")
    remote.priority = 7
    await b.flush()
    await settle()
    doc.note = "during"  # local edit while the write is in flight
    g.release.set()
    await flush_a
    await a.flush()
    await wait_for(lambda: remote.note == "during", what="a's second write to reach b")
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert (ticket.state, ticket.priority, ticket.note) == ("a", 7, "during")
    assert (doc.state, doc.priority, doc.note) == ("a", 7, "during")
    assert not doc.is_dirty


async def test_local_edit_during_inflight_write_is_not_lost_by_echo(nodes: Nodes) -> None:
    a, b, store = nodes
    doc, remote = await shared(a, b)
    g = gate(a)
    g.gate_writes = True
    doc.state = "one"
    flush_a = asyncio.create_task(a.flush())
    await asyncio.wait_for(g.waiting.wait(), 2)
    doc.state = "two"  # same field again, while "one" is in flight
    await settle()  # the echo of "one" arrives
    assert doc.state == "two"
    g.release.set()
    await flush_a
    assert doc.is_dirty
    await a.flush()
    await wait_for(lambda: remote.state == "two", what="the second value to reach b")
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert ticket.state == "two"


async def test_delete_racing_update_delete_wins_everywhere(nodes: Nodes) -> None:
    a, b, store = nodes
    doc, remote = await shared(a, b)
    key = doc.uuid or ""
    remote.priority = 9
    await doc.delete()
    await asyncio.gather(b.flush(), a.flush())
    await wait_for(lambda: key not in Ticket.objects.using(b), what="the delete to win on b")
    await settle()
    assert key not in Ticket.objects.using(a)
    assert stored(store, key) is None
    assert await Ticket.objects.using(b).filter(team="t0").count() == 0


async def test_update_then_remote_delete_drops_local_edits(nodes: Nodes) -> None:
    a, b, store = nodes
    doc, remote = await shared(a, b)
    key = doc.uuid or ""
    await remote.delete()
    await b.flush()
    doc.note = "late"
    await a.flush()
    await settle()
    assert key not in Ticket.objects.using(a)
    assert stored(store, key) is None
    assert a.collection(Ticket).indexes["state"].holders("new") == ()


async def test_readd_of_deleted_uuid_survives_on_both_nodes(nodes: Nodes) -> None:
    a, b, store = nodes
    doc, _remote = await shared(a, b, note="v1")
    key = doc.uuid or ""
    await doc.delete()
    await a.flush()
    await wait_for(lambda: key not in Ticket.objects.using(b), what="the delete to reach b")
    again = Ticket.objects.using(a).add(Ticket(uuid=key, note="v2"))
    await a.flush()
    await wait_for(lambda: key in Ticket.objects.using(b), what="the re-add to reach b")
    await settle()
    assert Ticket.objects.using(b)[key].note == "v2"
    assert Ticket.objects.using(a)[key] is again
    assert not again.is_dirty
    ticket = stored(store, key)
    assert ticket is not None
    assert ticket.note == "v2"


async def test_readd_before_delete_is_written_overwrites(nodes: Nodes) -> None:
    a, b, store = nodes
    doc, remote = await shared(a, b, note="v1", priority=3)
    key = doc.uuid or ""
    await doc.delete()
    again = Ticket.objects.using(a).add(Ticket(uuid=key, note="v2"))
    await a.flush()
    await wait_for(lambda: remote.note == "v2", what="the overwrite to reach b")
    assert remote.priority == 0
    assert Ticket.objects.using(a)[key] is again
    assert not again.is_dirty
    ticket = stored(store, key)
    assert ticket is not None
    assert (ticket.note, ticket.priority) == ("v2", 0)


async def deleted_readded_deleted(a: Database, b: Database) -> str:
    """A document both nodes hold, deleted on a, re-added there under its uuid before that delete
    was written, and deleted again (nothing flushed since the first delete); its key."""
    doc, _remote = await shared(a, b, note="v1")
    key = doc.uuid or ""
    await doc.delete()
    Ticket.objects.using(a).add(Ticket(uuid=key, note="v2"))
    assert Ticket.objects.using(a).delete(key)
    return key


async def test_deleting_a_document_readded_before_its_delete_was_written_deletes_it(nodes: Nodes) -> None:
    # Found by test_sync_model: the re-added document had never been written (revision 0), so
    # deleting it sent nothing, and the version the first delete was for stayed everywhere else.
    a, b, store = nodes
    key = await deleted_readded_deleted(a, b)
    await a.flush()
    assert stored(store, key) is None
    await wait_for(lambda: key not in Ticket.objects.using(b), what="the delete to reach b")


async def test_after_that_delete_an_unwritten_add_of_the_key_deleted_sends_nothing(nodes: Nodes) -> None:
    # The mark the fix above leaves must go once the delete is stored: else a later add of the
    # uuid, deleted before it was written, sent a delete too, and removed what b created meanwhile.
    a, b, store = nodes
    key = await deleted_readded_deleted(a, b)
    await a.flush()  # the delete, stored
    await a.collection(Ticket).stop_watch()  # a does not see what b does next
    Ticket.objects.using(b).add(Ticket(uuid=key, note="b's"))
    await b.flush()
    Ticket.objects.using(a).add(Ticket(uuid=key, note="v3"))
    assert Ticket.objects.using(a).delete(key)  # never written: nothing to delete
    await a.flush()
    ticket = stored(store, key)
    assert ticket is not None
    assert ticket.note == "b's"


class LostDeletes:
    """The deletes of the first write never reach the store; answered as a lost connection (the
    engine retries them)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        self.calls += 1
        if self.calls > 1:
            results: list[WriteResult] = await self.inner.write(ops)
            return results
        return [
            ConnectionLost("no publish ack") if op.value is None else (await self.inner.write([op]))[0]
            for op in ops
        ]


async def test_deleting_a_document_readded_while_its_delete_was_lost_deletes_it(nodes: Nodes) -> None:
    a, b, store = nodes
    doc, _remote = await shared(a, b, note="v1")
    key = doc.uuid or ""
    g = gate(a)
    g.gate_writes = g.unapplied = True
    await doc.delete()
    flush_a = asyncio.create_task(a.flush())
    await asyncio.wait_for(g.waiting.wait(), 2)  # the delete is on its way
    Ticket.objects.using(a).add(Ticket(uuid=key, note="v2"))
    assert Ticket.objects.using(a).delete(key)
    g.inner = LostDeletes(g.inner)
    g.gate_writes = False
    g.release.set()  # ... and is lost: it never landed
    await asyncio.wait_for(flush_a, 5)
    await a.flush()
    assert stored(store, key) is None
    await wait_for(lambda: key not in Ticket.objects.using(b), what="the delete to reach b")


async def test_readd_while_delete_in_flight(nodes: Nodes) -> None:
    a, b, store = nodes
    doc, _remote = await shared(a, b, note="v1")
    key = doc.uuid or ""
    g = gate(a)
    g.gate_writes = True
    await doc.delete()
    flush_a = asyncio.create_task(a.flush())
    await asyncio.wait_for(g.waiting.wait(), 2)
    again = Ticket.objects.using(a).add(Ticket(uuid=key, note="v2"))
    await settle()  # the watch brings the delete marker: the re-added document must stay
    assert Ticket.objects.using(a)[key] is again
    g.gate_writes = False
    g.release.set()
    await flush_a
    await a.flush()
    await wait_for(lambda: key in Ticket.objects.using(b), what="the re-add to reach b")
    assert Ticket.objects.using(b)[key].note == "v2"
    ticket = stored(store, key)
    assert ticket is not None
    assert ticket.note == "v2"


async def test_delete_while_write_in_flight_is_written_after_it(nodes: Nodes) -> None:
    a, b, store = nodes
    doc, _remote = await shared(a, b)
    key = doc.uuid or ""
    g = gate(a)
    g.gate_writes = True
    doc.note = "x"
    flush_a = asyncio.create_task(a.flush())
    await asyncio.wait_for(g.waiting.wait(), 2)
    await doc.delete()
    g.gate_writes = False
    g.release.set()
    await flush_a
    await a.flush()
    assert stored(store, key) is None
    await wait_for(lambda: key not in Ticket.objects.using(b), what="the delete to reach b")


async def test_flush_covers_change_made_while_background_flush_runs(make_db: DbFactory) -> None:
    store = MemoryStore()
    a = await make_db(Ticket, store=store, location="a", flush_interval=0)
    doc = Ticket.objects.using(a).add()
    g = gate(a)
    g.gate_writes = True
    await asyncio.wait_for(g.waiting.wait(), 2)  # the background flush is writing the create
    doc.note = "later"
    g.gate_writes = False
    flush = asyncio.create_task(a.flush())
    await settle()
    assert not flush.done()  # waits for the running round
    g.release.set()
    await flush
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert ticket.note == "later"


async def test_poison_entry_restore_does_not_erase_acknowledged_edit(nodes: Nodes) -> None:
    a, b, store = nodes
    doc, _remote = await shared(a, b, note="good")
    key = doc.uuid or ""
    doc.priority = 5  # pending at a
    await store.bucket("test-ticket").put_raw(key, b'{"priority": "not a number"}')
    await settle()
    await a.flush()  # a's restore, with a's edit: acknowledged
    await b.flush()  # b restores its last good version too (CAS conflict, then merged)
    await wait_for(lambda: len(b.collection(Ticket).docs) == 1, what="b to keep the document")
    await settle()
    ticket = stored(store, key)
    assert ticket is not None
    assert (ticket.note, ticket.priority) == ("good", 5)
    assert key in Ticket.objects.using(b)
    assert [d.key for d in await a.dead_letters()] == [key]


async def test_an_unwritten_add_meeting_an_unreadable_version_of_its_key_is_still_written(
    nodes: Nodes,
) -> None:
    # Found by test_sync_model: both nodes add the same uuid, then something unreadable lands under
    # it before either wrote. a's add was taken for a mere restore of the last good version (it has
    # no edited fields: a create is not field by field), so b's landing first discarded it.
    a, b, store = nodes
    Ticket.objects.using(b).add(Ticket(uuid="same", note="from b"))
    mine = Ticket.objects.using(a).add(Ticket(uuid="same", note="from a", priority=7))
    await store.bucket("test-ticket").put_raw("same", b"not json")
    await settle()
    await b.flush()  # b's create, over the unreadable version
    await settle()
    await a.flush()  # a's create is the later write: it wins, as without the unreadable version
    await settle()
    ticket = stored(store, "same")
    assert ticket is not None
    assert (ticket.note, ticket.priority) == ("from a", 7)
    assert Ticket.objects.using(a)["same"] is mine
    await wait_for(lambda: Ticket.objects.using(b)["same"].note == "from a", what="b to take a's create")


async def test_an_unwritten_add_survives_another_node_removing_unreadable_bytes_under_its_key(
    nodes: Nodes,
) -> None:
    # Found by the model test on nats-server: a adds a uuid nobody else holds, then something
    # unreadable lands under it before a wrote. b, which holds no such document, moves the bytes
    # to its dead letters and removes them (a delete marker). a took that marker for a delete of
    # its document (it held the unreadable revision as the one it was made on) and dropped the
    # add: never written, gone without an error.
    a, _b, store = nodes
    mine = Ticket.objects.using(a).add(Ticket(uuid="fresh", note="from a", priority=7))
    await store.bucket("test-ticket").put_raw("fresh", b"not json")
    await settle()  # b's dead letter removes the bytes; a applies that marker too
    assert store.bucket("test-ticket")._latest["fresh"].value in (b"", None)
    assert Ticket.objects.using(a)["fresh"] is mine
    await a.flush()
    await settle()
    ticket = stored(store, "fresh")
    assert ticket is not None
    assert (ticket.note, ticket.priority) == ("from a", 7)


async def test_a_stored_document_survives_a_starting_node_removing_unreadable_bytes_over_it(
    make_db: DbFactory,
) -> None:
    # A node that starts while unreadable bytes are a document's latest version (before the nodes
    # holding it wrote it back) moves them to its dead letters and removes them. The removal was a
    # plain delete marker: the holder's write-back met it as a delete, and the document was gone on
    # every node, its last good version with it.
    store = MemoryStore()
    a = await make_db(Ticket, store=store, location="a", flush_interval=3600)
    doc = Ticket.objects.using(a).add(note="precious", priority=3)
    await a.flush()
    key = doc.uuid or ""
    await store.bucket("test-ticket").put_raw(key, b"not json")
    await settle()
    c = await make_db(Ticket, store=store, location="c", flush_interval=3600)
    await settle()
    removal = store.bucket("test-ticket")._latest[key]
    assert (removal.operation.value, removal.removes) == ("DEL", removal.revision - 1)
    assert key not in Ticket.objects.using(c)
    assert Ticket.objects.using(a)[key] is doc
    await a.flush()
    await settle()
    ticket = stored(store, key)
    assert ticket is not None
    assert (ticket.note, ticket.priority) == ("precious", 3)
    assert Ticket.objects.using(c)[key].note == "precious"
    # Another node's delete of it is still a delete.
    Ticket.objects.using(c).delete(key)
    await c.flush()
    await settle()
    assert key not in Ticket.objects.using(a)


class Strict(Document):
    """``ticket`` as a node with other classes reads it: a field the others do not write."""

    model_config = DocumentConfig(registry=Registry(), collection="ticket")
    note: str = ""
    required: int


async def test_a_version_one_node_cannot_read_and_removes_is_a_delete_for_the_nodes_reading_it(
    make_db: DbFactory,
) -> None:
    # A rolling upgrade: a node whose classes cannot read a version moves it to its dead letters
    # and removes it. For the nodes that read it, that removal is a delete (as before removal
    # markers named their revision); written back, the other node would remove it again, forever.
    store = MemoryStore()
    a = await make_db(Ticket, store=store, location="a", flush_interval=3600)
    strict = await make_db(Strict, store=store, location="strict", flush_interval=3600)
    doc = Ticket.objects.using(a).add(note="new shape")
    await a.flush()
    await settle()
    key = doc.uuid or ""
    assert [d.key for d in await strict.dead_letters()] == [key]
    removal = store.bucket("test-ticket")._latest[key]
    assert removal.operation.value == "DEL"
    assert key not in Ticket.objects.using(a)
    await a.flush()
    await settle()
    assert store.bucket("test-ticket")._latest[key] is removal  # nothing written back


async def test_an_edit_made_after_an_unreadable_version_arrived_survives_another_restore(
    nodes: Nodes,
) -> None:
    # Found by test_sync_model: every field of a's document was marked to restore the last good
    # version; an edit made after that stayed "restore only", so b's restore landing first undid it.
    # (test_sync_memory has the same for an in-place edit.)
    a, b, store = nodes
    doc, _remote = await shared(a, b, note="good")
    await store.bucket("test-ticket").put_raw(doc.uuid or "", b"not json")
    await settle()  # both nodes mark the last good version to be written back
    doc.note = "edited after"
    await b.flush()  # b's restore lands first
    await settle()
    await a.flush()  # a's edit is rebased on it, and written
    await settle()
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert ticket.note == "edited after"
    await wait_for(lambda: Ticket.objects.using(b)[doc.uuid or ""].note == "edited after", what="b")


async def test_a_second_unreadable_version_does_not_turn_the_restore_into_edits(nodes: Nodes) -> None:
    # Found by test_sync_model: two unreadable versions in a row. At the second, the fields a's
    # first restore had marked counted as edits of a's, so when b's restore (carrying b's edit)
    # landed first, a wrote its whole last good version over it and undid b's edit.
    a, b, store = nodes
    doc, remote = await shared(a, b, note="good")
    key = doc.uuid or ""
    await store.bucket("test-ticket").put_raw(key, b"not json")
    await store.bucket("test-ticket").put_raw(key, b"not json either")
    await settle()
    remote.note = "b's edit"
    await b.flush()  # b's restore, with its edit, lands first
    await settle()
    await a.flush()
    await settle()
    ticket = stored(store, key)
    assert ticket is not None
    assert ticket.note == "b's edit"
    assert doc.note == "b's edit"


async def test_a_restore_that_another_node_made_first_writes_nothing(nodes: Nodes) -> None:
    # Found by test_sync_model: once b's restore has replaced the unreadable version, a's own
    # restore has nothing left to write; it used to store a version changing nothing.
    a, b, store = nodes
    doc, _remote = await shared(a, b, note="good")
    key = doc.uuid or ""
    await store.bucket("test-ticket").put_raw(key, b"not json")
    await settle()
    assert await b.flush() == 1  # b's restore
    await settle()
    revision = store.bucket("test-ticket")._revision
    assert await a.flush() == 0
    assert store.bucket("test-ticket")._revision == revision
    assert doc._odm_rev == revision
    assert not doc.dirty_fields


@pytest.mark.parametrize("answer", ["conflict", "none", "none before"])
async def test_a_restore_in_flight_when_another_version_replaces_the_unreadable_one_is_not_resent(
    nodes: Nodes, answer: str
) -> None:
    # Found by test_sync_model: b's restore was awaiting its answer when a's version reached b.
    # Its compare-and-set failed ("conflict"), or its answer never came ("none": the flush was
    # given up, before a's version came or after), and b sent its restore again: as edits over
    # a's edit, or as a probe that lands.
    a, b, store = nodes
    doc, remote = await shared(a, b, note="good")
    key = doc.uuid or ""
    await store.bucket("test-ticket").put_raw(key, b"not json")
    await settle()
    g = gate(b)
    g.gate_writes = g.unapplied = True
    flush_b = asyncio.ensure_future(b.flush())
    await g.waiting.wait()  # b's restore is sent, not stored yet
    if answer == "none before":
        flush_b.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flush_b
        g.gate_writes = g.unapplied = False
        assert b.collection(Ticket).unknown
    doc.note = "a's edit"
    await a.flush()  # a's restore, with its edit
    revision = doc._odm_rev
    await wait_for(lambda: remote._odm_rev == revision, what="a's version to reach b")
    if answer == "conflict":
        g.gate_writes = g.unapplied = False
        g.release.set()
        await flush_b
    elif answer == "none":
        flush_b.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flush_b
        g.gate_writes = g.unapplied = False
    await flush_twice(b)
    assert store.bucket("test-ticket")._revision == revision
    ticket = stored(store, key)
    assert ticket is not None
    assert ticket.note == "a's edit"
    assert remote.note == "a's edit"
    assert not remote.dirty_fields


async def test_watch_restart_resumes_after_applied(nodes: Nodes) -> None:
    a, b, _store = nodes
    doc, remote = await shared(a, b)
    coll = b.collection(Ticket)
    await coll.stop_watch()
    doc.priority = 1
    await a.flush()
    doc.priority = 2
    await a.flush()
    coll.start_watch()
    await wait_for(lambda: remote.priority == 2, what="b to catch up")
    assert remote._odm_rev == doc._odm_rev


# -- large flushes go in overlapping rounds ---------------------------------------------------------

MANY = 2 * _ROUND + 300  # three rounds, the last one short


async def test_a_flush_of_many_rounds_writes_every_document_once(nodes: Nodes) -> None:
    a, b, store = nodes
    docs = [Ticket.objects.using(a).add(priority=i) for i in range(MANY)]
    g = gate(a)
    calls: list[int] = []
    inner_write = g.write

    async def counting(ops: Sequence[WriteOp]) -> list[WriteResult]:
        calls.append(len(ops))
        return await inner_write(ops)

    g.write = counting  # type: ignore[method-assign]
    assert await a.flush() == MANY
    assert sorted(calls) == [300, _ROUND, _ROUND]
    assert not any(d.is_dirty for d in docs)
    assert store.bucket("test-ticket")._revision == MANY
    await wait_for(lambda: len(Ticket.objects.using(b)) == MANY, what="every document on b")
    assert {d.uuid: d.priority for d in Ticket.objects.using(b)} == {d.uuid: d.priority for d in docs}


@pytest.mark.parametrize("echo", [True, False], ids=["echo seen", "echo missed"])
async def test_a_flush_of_many_rounds_cancelled_midway_puts_back_what_it_took(
    nodes: Nodes, echo: bool
) -> None:
    a, b, store = nodes
    coll = a.collection(Ticket)
    if not echo:
        await coll.stop_watch()  # a cannot tell which of its writes landed
    docs = [Ticket.objects.using(a).add(priority=i) for i in range(MANY)]
    g = gate(a)
    g.gate_writes = True  # the first rounds land in the store, their acks are held
    flush = asyncio.create_task(a.flush())
    await asyncio.wait_for(g.waiting.wait(), 2)
    await settle()
    landed = store.bucket("test-ticket")._revision
    assert 0 < landed < MANY
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    g.gate_writes = False
    g.release.set()
    stored_keys = set(store.bucket("test-ticket")._latest)
    assert len(stored_keys) == landed
    assert not any(d._odm_inflight for d in docs)  # none is left "in flight" for ever
    if echo:
        # The watch echoed the rounds that landed: a knows they are stored.
        assert coll.dirty_keys() == {d.uuid for d in docs} - stored_keys
    else:
        assert coll.dirty_keys() == {d.uuid for d in docs}
        assert set(coll.unknown) == stored_keys
        coll.start_watch()
    assert {d.uuid for d in docs if d.is_dirty} <= coll.dirty_keys()
    await a.flush()
    await settle()
    assert not any(d.is_dirty for d in docs)
    # Landed writes retried with their write ids are deduplicated, not written twice.
    assert store.bucket("test-ticket")._revision == MANY
    await wait_for(lambda: len(Ticket.objects.using(b)) == MANY, what="every document on b")
    assert {d.uuid: d.priority for d in Ticket.objects.using(b)} == {d.uuid: d.priority for d in docs}


# -- writes of unknown outcome (flush cancelled, ack lost) -----------------------------------------
async def flush_given_up(db: Database, g: Gated) -> None:
    """``wait_for(db.flush(), 0.2)`` timing out while ``g`` holds the acks (the writes reach the
    store); the gate is open again afterwards."""
    g.gate_writes = True
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(db.flush(), 0.2)
    finally:
        g.gate_writes = False
        g.release.set()


async def test_cancelled_write_whose_echo_came_is_not_retried_over_a_later_remote_write(nodes: Nodes) -> None:
    a, b, store = nodes
    doc, remote = await shared(a, b)
    g = gate(a)
    doc.state = "a"
    await flush_given_up(a, g)  # landed, and its echo came: a knows it landed
    await wait_for(lambda: remote.state == "a", what="b to see a's write")
    remote.state = "b"
    await b.flush()
    await settle()
    await a.flush()
    await settle()
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert ticket.state == "b"
    await wait_for(lambda: doc.state == "b", timeout=1, what="a to converge on b's value")
    assert not a.collection(Ticket).dirty_keys()


async def test_write_of_unknown_outcome_edited_since_does_not_overwrite_a_later_remote_write(
    nodes: Nodes,
) -> None:
    """The flush gives up before the ack and a misses the echo (the bucket keeps one revision a
    key, and b writes on top first). a edits another field: its retry must learn that the first
    write landed, take b's later value of ``state`` and write only the new edit."""
    a, b, store = nodes
    doc, remote = await shared(a, b)
    coll = a.collection(Ticket)
    await coll.stop_watch()  # the echo comes late (a frozen server)
    g = gate(a)
    doc.state = "a"
    doc.note = "kept"
    await flush_given_up(a, g)
    assert doc.dirty_fields == {"state", "note"}
    doc.note = "edited since"  # a real edit, still to be written
    await wait_for(lambda: remote.state == "a", what="b to see a's write")
    remote.state = "b"
    await b.flush()
    coll.start_watch()  # only b's revision is left to see
    await settle()
    await a.flush()
    await settle()
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert (ticket.state, ticket.note) == ("b", "edited since")
    assert (doc.state, doc.note) == ("b", "edited since")
    assert not doc.is_dirty
    await wait_for(lambda: remote.note == "edited since", what="b to see the later edit")
    assert remote.state == "b"


async def test_write_of_unknown_outcome_retried_unedited_takes_a_later_remote_write(nodes: Nodes) -> None:
    """As above without the edit: the retry is the first write again, and the server answers it
    as a duplicate (a revision below the one it expected). a's copy takes b's later value of
    ``state``, which it had kept out while the write was unknown."""
    a, b, store = nodes
    doc, remote = await shared(a, b)
    coll = a.collection(Ticket)
    await coll.stop_watch()
    g = gate(a)
    doc.state = "a"
    await flush_given_up(a, g)
    await wait_for(lambda: remote.state == "a", what="b to see a's write")
    remote.state = "b"
    await b.flush()
    coll.start_watch()
    await wait_for(lambda: coll.shadow, what="a to merge b's revision while unknown")
    assert doc.state == "a"  # kept: a cannot tell yet whether its write came first
    revision = store.bucket("test-ticket")._revision
    await a.flush()
    await settle()
    assert store.bucket("test-ticket")._revision == revision  # nothing written again
    assert doc.state == "b"
    assert not doc.is_dirty
    assert not coll.unknown
    assert not coll.shadow
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert ticket.state == "b"


async def test_probe_of_a_write_that_never_landed_then_writes_the_edits(nodes: Nodes) -> None:
    """The held write never reached the store: the probe stores it now (it is the earlier
    change), then the edit made since follows."""
    a, b, store = nodes
    doc, remote = await shared(a, b)
    g = gate(a)
    g.gate_writes = g.unapplied = True
    doc.state = "a"
    doc.note = "kept"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(a.flush(), 0.2)
    g.gate_writes = g.unapplied = False
    g.release.set()
    await settle()
    coll = a.collection(Ticket)
    assert coll.unknown
    doc.note = "edited since"
    await a.flush()
    await settle()
    assert not coll.unknown
    assert not doc.is_dirty
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert (ticket.state, ticket.note) == ("a", "edited since")
    await wait_for(lambda: remote.note == "edited since", what="b to see the edit")
    assert remote.state == "a"


async def held_write_then_remote_note(
    a: Database, b: Database, note: str, *, gap: bool = True
) -> tuple[Ticket, Ticket]:
    """a's write of state "a" never reaches the store and its outcome is unknown (the flush gave
    up); then b changes the note to "b" and a merges it. With ``gap``, a's watch is as if it had
    skipped a version meanwhile (the bucket keeps one a key; a watch started again misses those
    replaced): a cannot tell its write did not land, and its next flush probes."""
    doc, remote = await shared(a, b, note=note)
    g = gate(a)
    g.gate_writes = g.unapplied = True
    doc.state = "a"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(a.flush(), 0.2)
    g.gate_writes = g.unapplied = False
    g.release.set()
    await settle()
    assert a.collection(Ticket).unknown
    remote.note = "b"
    await b.flush()
    await wait_for(lambda: doc.note == "b", what="a to merge b's note")
    if gap:
        a.collection(Ticket).unknown_gap.add(doc.uuid or "")
    return doc, remote


async def test_write_of_unknown_outcome_another_node_wrote_over_is_written_without_a_probe(
    nodes: Nodes,
) -> None:
    """b's version was made on the one a's held write expected, and a's watch saw every version
    since: a's write cannot have landed, nor ever will. a writes its state and its later edit as
    one new write: no version ever carries the held write's stale note (b never sees its note
    undone, not even for a moment), and the id of the held write is never sent again."""
    a, b, store = nodes
    doc, remote = await held_write_then_remote_note(a, b, "", gap=False)
    coll = a.collection(Ticket)
    held_id = coll.unknown[doc.uuid or ""][0]
    seen: list[tuple[str, str]] = []
    Ticket.objects.using(b).on_field_change("note", lambda d, n, old, new: seen.append((old, new)))
    sent: list[str | None] = []
    inner = coll.bucket

    class Recording:
        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

        async def write(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
            sent.extend(op.msg_id for op in ops)
            results: list[WriteResult] = await inner.write(ops)
            return results

    coll.bucket = Recording()  # type: ignore[assignment]
    doc.priority = 8
    await flush_twice(a)
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert (ticket.state, ticket.note, ticket.priority) == ("a", "b", 8)
    assert held_id not in sent
    assert len(sent) == 1
    await wait_for(lambda: (remote.state, remote.priority) == ("a", 8), what="b to converge")
    assert seen == []
    assert not coll.unknown
    assert not doc.is_dirty


async def test_write_resent_and_settled_by_its_echo_is_known_to_have_landed(nodes: Nodes) -> None:
    """a's write lands, its ack is lost and its echo late; a sends it again (same bytes, same id);
    the echo comes while that retry is on its way, and the retry is refused (its compare-and-set
    is older). The echo settled it: nothing about it is unknown any more, so a later edit of a's
    is a plain write, not the old write sent again over b's later change."""
    a, b, store = nodes
    doc, remote = await shared(a, b)
    coll = a.collection(Ticket)
    await coll.stop_watch()
    g = gate(a)
    g.gate_writes = True  # stored, the ack held
    doc.state = "a"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(a.flush(), 0.2)
    g.gate_writes = False
    g.release.set()
    await settle()
    assert coll.unknown
    g.release = asyncio.Event()
    g.waiting.clear()
    g.gate_writes = True  # the retry: answered (a conflict) only once the echo is in
    retry = asyncio.ensure_future(a.flush())
    await g.waiting.wait()
    coll.start_watch()
    await wait_for(lambda: doc.is_dirty is False and coll.applied >= store_revision(a), what="the echo")
    g.gate_writes = False
    g.release.set()
    await retry
    await settle()
    assert not coll.unknown
    seen: list[tuple[str, str]] = []
    Ticket.objects.using(b).on_field_change("note", lambda d, n, old, new: seen.append((old, new)))
    await wait_for(lambda: remote.state == "a", what="b to see a's state")
    remote.note = "b"
    await b.flush()
    await wait_for(lambda: doc.note == "b", what="a to merge b's note")
    doc.priority = 3
    await flush_twice(a)
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert (ticket.state, ticket.note, ticket.priority) == ("a", "b", 3)
    await wait_for(lambda: remote.priority == 3, what="b to converge")
    assert seen == []


async def flush_twice(db: Database) -> None:
    """The probe, then the write of what is left after it."""
    for _ in range(2):
        await db.flush()
        await settle()


async def test_probe_landing_now_does_not_undo_a_remote_change_merged_meanwhile(nodes: Nodes) -> None:
    """The held write (state) never reached the store; b changes another field (note) and a
    merges it. The probe stores the held write's bytes now, with the old note: a writes its
    note again over it, so b's change survives everywhere."""
    a, b, store = nodes
    doc, remote = await held_write_then_remote_note(a, b, "")
    await flush_twice(a)
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert (ticket.state, ticket.note) == ("a", "b")
    await wait_for(lambda: (remote.state, remote.note) == ("a", "b"), what="b to converge")
    assert not doc.is_dirty


def store_revision(db: Database) -> int:
    revision: int = db.collection(Ticket).bucket._revision  # type: ignore[union-attr]
    return revision


async def probe_landing_then(a: Database, b: Database, remote_edit: Any, *, watching: bool) -> Ticket:
    """``held_write_then_remote_note``, an edit of a's (priority), then the probe lands on top with
    the old note: a owes the note b had set ("b") back. Before a's next write, b makes
    ``remote_edit`` (acknowledged); a learns of it by its watch, or (not ``watching``) only by
    its next write's conflict. Then a's flush ends."""
    doc, remote = await held_write_then_remote_note(a, b, "")
    coll = a.collection(Ticket)
    doc.priority = 8  # a's own edit since: the next flush probes
    g = gate(a)
    g.gate_writes = True  # the probe is stored, its ack held
    flushing = asyncio.ensure_future(a.flush())
    await wait_for(lambda: not coll.unknown, what="a to see its probe land (the echo)")
    assert doc.dirty_fields == {"note", "priority"}
    await wait_for(lambda: remote.note == "", what="b to see the probe's stale note")
    if not watching:
        await coll.stop_watch()
    remote_edit(remote)
    await b.flush()
    try:
        if watching:
            revision = store_revision(b)
            await wait_for(lambda: coll.applied >= revision, what="a's watch to bring b's change")
    finally:
        g.gate_writes = False
        g.release.set()
        await flushing
    await a.flush()
    await settle()
    if not watching:
        coll.start_watch()
    return doc


@pytest.mark.parametrize("watching", [True, False], ids=["watch", "conflict"])
async def test_repair_after_a_probe_yields_to_a_later_change_of_the_field(
    nodes: Nodes, watching: bool
) -> None:
    """b's later change is of the note: a's repair was no edit of a's, so b's note wins. (a
    wrote "b" over it: the repaired fields counted as a's own edits.)"""
    a, b, store = nodes
    doc = await probe_landing_then(a, b, lambda r: setattr(r, "note", "b2"), watching=watching)
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert (ticket.state, ticket.note, ticket.priority) == ("a", "b2", 8)
    assert (doc.note, doc.is_dirty) == ("b2", False)


@pytest.mark.parametrize("watching", [True, False], ids=["watch", "conflict"])
async def test_repair_after_a_probe_keeps_fields_a_later_change_left(nodes: Nodes, watching: bool) -> None:
    """b's later change is of another field: it carries the probe's stale note over, so a still
    writes b's earlier note back."""
    a, b, store = nodes
    doc = await probe_landing_then(a, b, lambda r: setattr(r, "team", "t2"), watching=watching)
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert (ticket.state, ticket.note, ticket.team, ticket.priority) == ("a", "b", "t2", 8)
    assert (doc.note, doc.team, doc.is_dirty) == ("b", "t2", False)


async def test_probe_landing_now_stores_an_edit_equal_to_its_stale_value(nodes: Nodes) -> None:
    """As above, but a's note is then edited back to the value the held write's bytes carry
    (a case test_sync_model met): the probe stores it, and every node takes the probe's whole
    value, so nothing is left to write."""
    a, b, store = nodes
    doc, remote = await held_write_then_remote_note(a, b, "old")
    doc.note = "old"  # the value the held write's bytes carry
    await flush_twice(a)
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert (ticket.state, ticket.note) == ("a", "old")
    await wait_for(lambda: (remote.state, remote.note) == ("a", "old"), what="b to take a's note")
    assert not doc.is_dirty


async def test_create_of_unknown_outcome_deleted_elsewhere_stays_deleted(nodes: Nodes) -> None:
    """a's create landed but a never learnt it (ack held, echo missed); b deletes it. a must
    not keep (or write back) a document the bucket no longer has."""
    a, b, store = nodes
    coll = a.collection(Ticket)
    await coll.stop_watch()
    g = gate(a)
    doc = Ticket.objects.using(a).add(state="a")
    key = doc.uuid or ""
    await flush_given_up(a, g)
    assert coll.unknown
    await wait_for(lambda: key in Ticket.objects.using(b), what="b to see the create")
    Ticket.objects.using(b).delete(key)
    await b.flush()
    coll.start_watch()
    await settle()
    await a.flush()
    await settle()
    await a.flush()
    await settle()
    assert stored(store, key) is None
    assert key not in Ticket.objects.using(a)


async def test_write_of_unknown_outcome_settled_by_its_echo(nodes: Nodes) -> None:
    """The echo arrives after the flush gave up: the fields it stored are clean again."""
    a, _b, store = nodes
    doc = Ticket.objects.using(a).add()
    await a.flush()
    coll = a.collection(Ticket)
    await coll.stop_watch()
    g = gate(a)
    doc.state = "a"
    await flush_given_up(a, g)
    assert doc.dirty_fields == {"state"}
    coll.start_watch()
    await wait_for(lambda: not doc.is_dirty, what="the echo to settle it")
    assert not coll.unknown
    assert not coll.dirty_keys()
    revision = store.bucket("test-ticket")._revision
    assert await a.flush() == 0
    assert store.bucket("test-ticket")._revision == revision


@pytest.mark.parametrize("what", ["update", "create"])
async def test_retry_of_a_landed_write_learns_it_landed_without_the_echo(nodes: Nodes, what: str) -> None:
    """No echo (the watch is stopped): the retry's compare-and-set is refused, since the first
    attempt landed (JetStream checks it before the duplicate window), and the stored version
    shows our write id. Nothing is written a second time and nothing is left dirty."""
    a, _b, store = nodes
    coll = a.collection(Ticket)
    doc = Ticket.objects.using(a).add() if what == "update" else None
    await a.flush()
    await coll.stop_watch()
    g = gate(a)
    if doc is None:
        doc = Ticket.objects.using(a).add(state="a")
    else:
        doc.state = "a"
    await flush_given_up(a, g)
    revision = store.bucket("test-ticket")._revision
    assert doc.is_dirty or doc._odm_rev == 0
    assert await a.flush() == 1
    assert store.bucket("test-ticket")._revision == revision  # not written twice
    assert not doc.is_dirty
    assert doc._odm_rev == revision
    assert not coll.dirty_keys()
    assert not coll.unknown
    assert await a.flush() == 0


async def test_probe_found_landed_by_its_conflict_counts_the_document_once(nodes: Nodes) -> None:
    """Watch stopped, the held write landed, the document edited since: the probe is refused
    (stale compare-and-set), the stored version is ours, then the edit is written. One document."""
    a, _b, store = nodes
    coll = a.collection(Ticket)
    doc = Ticket.objects.using(a).add()
    await a.flush()
    await coll.stop_watch()
    g = gate(a)
    doc.state = "a"
    await flush_given_up(a, g)
    doc.note = "edited since"
    assert await a.flush() == 1
    assert not doc.is_dirty
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert (ticket.state, ticket.note) == ("a", "edited since")


async def test_cancelled_create_deleted_before_its_echo_stays_deleted(nodes: Nodes) -> None:
    a, b, store = nodes
    coll = a.collection(Ticket)
    await coll.stop_watch()
    g = gate(a)
    doc = Ticket.objects.using(a).add(state="x")
    key = doc.uuid or ""
    await flush_given_up(a, g)
    assert stored(store, key) is not None  # it landed; a does not know
    await doc.delete()
    await a.flush()
    coll.start_watch()
    await settle()
    await a.flush()
    await settle()
    assert key not in Ticket.objects.using(a)
    assert stored(store, key) is None
    await wait_for(lambda: key not in Ticket.objects.using(b), what="b to drop it")


@pytest.mark.parametrize("watch", ["caught up", "behind"])
async def test_a_delete_of_unknown_outcome_does_not_remove_a_later_recreate(nodes: Nodes, watch: str) -> None:
    """a's delete landed but its ack was lost; b saw it and created the key again. a's retry is a
    duplicate (same write id): b's document stays, and a ends up holding it too, whether a's watch
    passed b's create while the delete was pending (and set it aside) or reaches it afterwards."""
    a, b, store = nodes
    doc, _remote = await shared(a, b, state="first")
    key = doc.uuid or ""
    coll = a.collection(Ticket)
    await coll.stop_watch()  # a sees neither the echo of its delete nor b's create yet
    g = gate(a)
    await doc.delete()
    await flush_given_up(a, g)
    assert stored(store, key) is None  # it landed; a does not know
    await wait_for(lambda: key not in Ticket.objects.using(b), what="b to see the delete")
    Ticket.objects.using(b).add(Ticket(uuid=key, state="again"))
    await b.flush()
    if watch == "caught up":
        coll.start_watch()
        await settle()
        assert key not in Ticket.objects.using(a)  # set aside: a's delete is still pending
    await a.flush()
    if watch == "behind":
        coll.start_watch()
    await settle()
    ticket = stored(store, key)
    assert ticket is not None
    assert ticket.state == "again"
    await wait_for(lambda: key in Ticket.objects.using(a), timeout=1, what="a to hold b's create")
    assert Ticket.objects.using(a)[key].state == "again"
    assert not a.collection(Ticket).dirty_keys()
    assert Ticket.objects.using(b)[key].state == "again"


async def landed_delete_then_recreated_elsewhere(
    a: Database, b: Database, store: MemoryStore
) -> tuple[str, Any]:
    """a's delete lands with its ack lost; b re-creates the key; a's watch (caught up) sets it aside."""
    doc, _remote = await shared(a, b, state="first")
    key = doc.uuid or ""
    coll = a.collection(Ticket)
    g = gate(a)
    await doc.delete()
    await flush_given_up(a, g)
    assert stored(store, key) is None
    await wait_for(lambda: key not in Ticket.objects.using(b), what="b to see the delete")
    Ticket.objects.using(b).add(Ticket(uuid=key, state="again"))
    await b.flush()
    await settle()
    assert key in coll.set_aside
    assert key in coll.deletes
    return key, coll


async def test_readd_then_delete_of_a_set_aside_key_deletes_it_everywhere(nodes: Nodes) -> None:
    """add() of the re-used uuid takes the set-aside version as the one it overwrites, so deleting
    the re-added document sends a real delete (it is stored, as b's create), and every node drops it."""
    a, b, store = nodes
    key, coll = await landed_delete_then_recreated_elsewhere(a, b, store)
    again = Ticket.objects.using(a).add(Ticket(uuid=key, state="mine"))
    assert again._odm_rev  # rebased on b's create
    await again.delete()
    await a.flush()
    await settle()
    assert stored(store, key) is None
    assert not coll.dirty_keys()
    assert not coll.set_aside
    assert key not in Ticket.objects.using(a)
    await wait_for(lambda: key not in Ticket.objects.using(b), what="b to drop it")


class FailingDeletes:
    """Deletes answered with a permanent StoreError (e.g. JetStream storage exceeded)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        return [
            StoreError("insufficient resources") if op.value is None else (await self.inner.write([op]))[0]
            for op in ops
        ]


async def test_a_retried_delete_failing_for_good_leaves_the_set_aside_create_in_place(nodes: Nodes) -> None:
    a, b, store = nodes
    key, coll = await landed_delete_then_recreated_elsewhere(a, b, store)
    coll.bucket = FailingDeletes(coll.bucket)
    with pytest.raises(FlushError):
        await a.flush()
    coll.bucket = coll.bucket.inner
    await settle()
    assert not coll.deletes
    assert not coll.set_aside
    assert stored(store, key) is not None
    await wait_for(lambda: key in Ticket.objects.using(a), timeout=1, what="a to hold b's create")


async def test_readd_of_a_set_aside_key_overwrites_the_create(nodes: Nodes) -> None:
    a, b, store = nodes
    key, _coll = await landed_delete_then_recreated_elsewhere(a, b, store)
    again = Ticket.objects.using(a).add(Ticket(uuid=key, state="mine"))
    await a.flush()
    await settle()
    ticket = stored(store, key)
    assert ticket is not None
    assert ticket.state == "mine"
    await wait_for(lambda: Ticket.objects.using(b)[key].state == "mine", timeout=1)
    assert Ticket.objects.using(a)[key] is again
    assert not again.is_dirty


async def test_readd_after_a_cancelled_create_and_its_delete_is_stored(nodes: Nodes) -> None:
    a, _b, store = nodes
    g = gate(a)
    doc = Ticket.objects.using(a).add(state="x")
    key = doc.uuid or ""
    await flush_given_up(a, g)
    await doc.delete()
    await a.flush()
    await wait_for(lambda: stored(store, key) is None, what="the delete")
    again = Ticket.objects.using(a).add(Ticket(uuid=key, state="x"))  # the same bytes as the create
    await a.flush()
    await settle()
    assert Ticket.objects.using(a)[key] is again
    assert not again.is_dirty
    assert stored(store, key) is not None


async def test_stop_timeout_names_writes_the_background_flush_holds(make_db: DbFactory) -> None:
    a = await make_db(Ticket, store=MemoryStore(), location="a", flush_interval=0.01)
    g = gate(a)
    docs = [Ticket.objects.using(a).add(priority=i) for i in range(3)]
    await a.flush()
    g.gate_writes = g.unapplied = True  # the server stops answering
    docs[1].priority = 5
    await asyncio.wait_for(g.waiting.wait(), 2)  # the background flush has taken it
    try:
        with pytest.raises(FlushError) as info:
            await a.stop(timeout=0.2)
    finally:
        g.release.set()
    assert [(c, k) for c, k, _ in info.value.failures] == [("ticket", docs[1].uuid)]


class Blob(Base):
    n: int = 0
    data: Any = None


async def test_a_document_that_cannot_be_encoded_fails_alone(make_db: DbFactory) -> None:
    a = await make_db(Blob, store=MemoryStore(), location="a", flush_interval=60)
    objects = Blob.objects.using(a)
    good = [objects.add(n=i) for i in range(5)]
    bad = objects.add(n=99)
    await a.flush()
    for d in good:
        d.n += 100
    bad.data = object()  # valid for Any, not serialisable
    coll = a.collection(Blob)
    with pytest.raises(FlushError) as info:
        await coll.db.flush()
    assert [(c, k) for c, k, _ in info.value.failures] == [("blob", bad.uuid)]
    assert not any(d.is_dirty for d in good)
    assert bad.is_dirty
    assert not bad._odm_inflight
    bad.data = {"now": "serialisable"}
    assert await a.flush() == 1
    assert not bad.is_dirty


class Lossy:
    """The first write is stored but its ack 'times out' (``ConnectionLost``, as NatsBucket does
    after its timeout), once released; later writes pass."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        self.calls += 1
        results: list[WriteResult] = await self.inner.write(ops)
        if self.calls == 1:
            self.waiting.set()
            await self.release.wait()
            return [ConnectionLost("no publish ack") if isinstance(r, int) else r for r in results]
        return results


async def test_an_ack_lost_after_the_echo_came_is_a_write_that_landed(nodes: Nodes) -> None:
    a, b, store = nodes
    doc, remote = await shared(a, b)
    coll = a.collection(Ticket)
    lossy = Lossy(coll.bucket)
    coll.bucket = lossy
    doc.state = "a"
    flush = asyncio.create_task(a.flush())
    try:
        await asyncio.wait_for(lossy.waiting.wait(), 2)  # stored; the echo reaches a
        await wait_for(lambda: remote.state == "a", what="b to see a's write")
        remote.state = "b"
        await b.flush()
        await wait_for(lambda: doc.state == "b", what="a to take b's later write")
    finally:
        lossy.release.set()  # then a's ack 'times out'
    await flush
    assert not doc.is_dirty  # it landed: nothing to write again
    assert lossy.calls == 1
    remote.state = "c"
    await b.flush()
    await wait_for(lambda: doc.state == "c", what="a to follow b")
    await a.flush()
    ticket = stored(store, doc.uuid or "")
    assert ticket is not None
    assert ticket.state == "c"


async def test_stop_timeout_names_writes_an_application_flush_holds(make_db: DbFactory) -> None:
    a = await make_db(Ticket, store=MemoryStore(), location="a", flush_interval=60)
    docs = [Ticket.objects.using(a).add(priority=i) for i in range(3)]
    await a.flush()
    g = gate(a)
    g.gate_writes = g.unapplied = True  # the server stops answering
    docs[1].priority = 5
    user = asyncio.create_task(a.flush())  # a request handler awaiting its write, say
    await asyncio.wait_for(g.waiting.wait(), 2)
    try:
        with pytest.raises(FlushError) as info:
            await a.stop(timeout=0.2)
    finally:
        g.release.set()
        user.cancel()
        await asyncio.gather(user, return_exceptions=True)
    assert [(c, k) for c, k, _ in info.value.failures] == [("ticket", docs[1].uuid)]


async def test_stop_timeout_also_names_what_failed_in_its_flush(make_db: DbFactory) -> None:
    a = await make_db(Blob, store=MemoryStore(), location="a", flush_interval=60)
    objects = Blob.objects.using(a)
    good, bad = objects.add(n=1), objects.add(n=2)
    await a.flush()
    g = gate(a, Blob)
    g.gate_writes = g.unapplied = True
    good.n = 10
    bad.data = object()  # valid for Any, not serialisable
    try:
        with pytest.raises(FlushError) as info:
            await a.stop(timeout=0.3)
    finally:
        g.release.set()
    assert {k for _, k, _ in info.value.failures} == {good.uuid, bad.uuid}


@pytest.mark.parametrize("watching", [True, False], ids=["watch", "conflict"])
async def test_deleted_and_created_again_under_the_same_uuid_is_a_delete_and_a_new_document(
    nodes: Nodes, watching: bool
) -> None:
    """b deletes a document and creates another under its uuid (a uuid derived from a value),
    while a edits the old one and a's watch is behind: the bucket keeps one revision a key, so
    a never sees the delete marker. a's edit was written into the new document, and a reported
    an update instead of a delete (found on a real nats-server)."""
    a, b, store = nodes
    deleted: list[Ticket] = []
    changes: list[tuple[Ticket | None, Ticket]] = []
    Ticket.objects.using(a).on_delete(deleted.append)
    Ticket.objects.using(a).on_change(lambda old, new: changes.append((old, new)))
    doc, remote = await shared(a, b, note="old")
    key = doc.uuid or ""
    coll = a.collection(Ticket)
    await coll.stop_watch()
    Ticket.objects.using(b).delete(remote)
    await b.flush()
    Ticket.objects.using(b).add(uuid=key, note="new")
    await b.flush()
    doc.priority = 5  # an edit of the deleted document
    if watching:
        coll.start_watch()
        await wait_for(lambda: coll.docs.get(key) is not doc, what="a to see it")
    await a.flush()
    await settle()
    if not watching:
        coll.start_watch()
    await wait_for(lambda: key in Ticket.objects.using(a), what="a to hold the new document")
    fresh = Ticket.objects.using(a)[key]
    assert fresh is not doc
    assert (fresh.note, fresh.priority) == ("new", 0)
    ticket = stored(store, key)
    assert ticket is not None
    assert (ticket.note, ticket.priority) == ("new", 0)
    assert deleted == [doc]
    assert [(old, new.note) for old, new in changes] == [(None, "new")]
