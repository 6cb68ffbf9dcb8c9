"""A nested model inside a tuple field reports its in-place changes to its document only while
the tuple is the field's value: once replaced (by an assignment or a remote merge), changing it
through an old reference (``on_change``'s ``old``, a variable) must not mark the document dirty."""

from __future__ import annotations

from typing import Any

from helpers import DbFactory, wait_for
from pydantic import BaseModel, Field

from brainless_odm import Database, Document, DocumentConfig, MemoryStore, Registry

REG = Registry()


class Caller(BaseModel):
    number: str = "0"
    city: str | None = None


class Pairs(Document):
    model_config = DocumentConfig(registry=REG)
    tags: list[str] = Field(default_factory=list)  # a field callback wants it: the merge materializes
    pair: tuple[int, Caller] = (0, Caller())  # declared after tags: wrapped, then replaced


async def remote_change_with_old(
    make_db: DbFactory,
) -> tuple[Pairs, Pairs, Any, Database, Database]:
    """a changes both fields of a document b holds raw; b's on_change got ``old``. Returns a's
    document, b's, that ``old``, a and b."""
    store = MemoryStore()
    a = await make_db(Pairs, store=store, location="a", flush_interval=60)
    b = await make_db(Pairs, store=store, location="b", flush_interval=60)
    olds: list[Any] = []
    on_b = Pairs.objects.using(b)
    on_b.on_change(lambda old, new: olds.append(old) if old is not None else None)
    on_b.on_field_change("tags", lambda d, f, o, n: None)
    doc = Pairs.objects.using(a).add(tags=["t"], pair=(1, Caller(number="1")))
    await a.flush()
    key = doc.uuid or ""
    await wait_for(lambda: key in on_b, what="b to get the document")
    remote = on_b[key]
    assert remote._odm_raw  # never read on b
    doc.tags = ["u"]
    doc.pair = (2, Caller(number="2"))
    await a.flush()
    await wait_for(lambda: olds, what="the change event on b")
    (old,) = olds
    return doc, remote, old, a, b


async def test_mutating_old_does_not_mark_the_document_dirty(make_db: DbFactory) -> None:
    _doc, remote, old, _a, _b = await remote_change_with_old(make_db)
    assert old.pair == (1, Caller(number="1"))
    assert not remote.is_dirty
    old.pair[1].city = "Brno"  # a change to the old document only...
    assert remote.pair == (2, Caller(number="2"))
    assert not remote.is_dirty, remote.dirty_fields  # ...reported to the live document


async def test_mutating_old_does_not_undo_a_later_remote_write(make_db: DbFactory) -> None:
    doc, remote, old, a, b = await remote_change_with_old(make_db)
    old.pair[1].city = "Brno"  # the application scribbles on old (e.g. to build a diff)
    doc.pair = (3, Caller(number="3"))
    await a.flush()
    await wait_for(lambda: remote._odm_rev == doc._odm_rev, what="b to see a's second write")
    await b.flush()
    await wait_for(lambda: doc._odm_rev == remote._odm_rev, what="a to see b's write")
    assert remote.pair[0] == 3
    assert doc.pair[0] == 3


async def test_a_replaced_tuple_no_longer_reports_to_the_document(make_db: DbFactory) -> None:
    db = await make_db(Pairs, store=MemoryStore(), location="a", flush_interval=60)
    doc = Pairs.objects.using(db).add(pair=(1, Caller(number="1")))
    await db.flush()
    held = doc.pair
    doc.pair = (2, Caller(number="2"))
    await db.flush()
    held[1].city = "Brno"
    assert not doc.is_dirty
    doc.pair[1].city = "Praha"  # the current value still reports
    assert doc.dirty_fields == {"pair"}
