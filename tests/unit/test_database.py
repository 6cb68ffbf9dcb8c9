"""Database lifecycle, default binding, module-level convenience, dead letters, oversize documents."""

from __future__ import annotations

import asyncio
from fractions import Fraction
from typing import Any

import orjson
import pytest
from helpers import DbFactory, wait_for
from pydantic import Field, ValidationError

import brainless_odm
from brainless_odm import (
    Database,
    DatabaseError,
    Document,
    DocumentConfig,
    FlushError,
    InvalidKey,
    MemoryStore,
    NotBoundError,
    PayloadTooLarge,
    Registry,
)
from brainless_odm.database import MAX_NAMESPACE
from brainless_odm.store.base import BucketConfig, Entry
from brainless_odm.store.memory import MemoryBucket

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Note(Base):
    text: str = ""
    n: int = 0


class Other(Base):
    x: int = 0


class Unbound(Base):
    y: int = 0


# -- lifecycle -------------------------------------------------------------------------------------
async def test_start_flush_stop() -> None:
    store = MemoryStore()
    db = Database(store, namespace="life", documents=[Note])
    assert not db.started
    assert await db.start() is db
    assert db.started
    objects = Note.objects.using(db)
    a = objects.add(text="a")
    objects.add(text="b")
    assert await db.flush() == 2
    assert await db.flush() == 0
    a.n = 1
    await db.stop()  # flushes
    assert not db.started
    assert store.bucket("life-note") is not None
    async with Database(store, namespace="life", documents=[Note]) as again:
        loaded = Note.objects.using(again)
        assert len(loaded) == 2
        assert loaded[a.uuid or ""].n == 1
        assert not loaded[a.uuid or ""].is_dirty


async def test_async_with_starts_and_stops() -> None:
    async with Database(None, documents=[Note]) as db:
        assert db.started
        Note.objects.using(db).add(text="x")
    assert not db.started
    with pytest.raises(DatabaseError):
        Note.objects.using(db).add(text="y")
    with pytest.raises(DatabaseError):
        await db.flush()


async def test_start_twice_is_a_database_error(make_db: DbFactory) -> None:
    db = await make_db(Note)
    with pytest.raises(DatabaseError, match="already"):
        await db.start()
    await db.stop()
    await db.stop()  # idempotent
    with pytest.raises(DatabaseError):
        await db.start()


async def test_flush_before_start_is_a_database_error() -> None:
    db = Database(None, documents=[Note])
    with pytest.raises(DatabaseError):
        await db.flush()
    with pytest.raises(DatabaseError):
        Note.objects.using(db).add(text="x")
    await db.stop()


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="namespace"):
        Database(None, namespace="a.b")
    with pytest.raises(ValueError, match="location"):
        Database(None, location="")
    with pytest.raises(ValueError, match="flush_interval"):
        Database(None, flush_interval=-1)


def test_bad_constructor_arguments_are_refused_when_the_database_is_built() -> None:
    # Each of these was accepted, and failed at start() or later (or with an unrelated TypeError).
    with pytest.raises(TypeError, match="flush_interval must be a number"):
        Database(None, flush_interval="abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="flush_interval must be a number"):
        Database(None, flush_interval=True)
    for bad in (float("nan"), float("inf"), -0.5):
        with pytest.raises(ValueError, match="flush_interval must be a finite number >= 0"):
            Database(None, flush_interval=bad)
    assert Database(None, flush_interval=0).flush_interval == 0
    assert Database(None, flush_interval=Fraction(1, 4)).flush_interval == 0.25  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="namespace has 300 characters"):
        Database(None, namespace="a" * 300)
    Database(None, namespace="a" * MAX_NAMESPACE)
    with pytest.raises(ValueError, match="namespace"):
        Database(None, namespace=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="location"):
        Database(None, location="\ud800")
    with pytest.raises(ValueError, match="location"):
        Database(None, location=None)  # type: ignore[arg-type]


def test_documents_must_be_concrete_document_classes() -> None:
    for bad in ([int], [Document], [Note, "Other"]):
        with pytest.raises(TypeError, match="documents must be Document subclasses"):
            Database(None, documents=bad)  # type: ignore[arg-type]
    for not_iterable in (5, "Note", Note):
        with pytest.raises(TypeError, match="documents must be an iterable of Document classes"):
            Database(None, documents=not_iterable)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Base is abstract"):
        Database(None, documents=[Base])


async def test_documents_can_be_a_generator() -> None:
    async with Database(None, documents=(c for c in (Note, Other))) as db:
        assert set(db.documents) == {Note, Other}


def test_documents_whose_bucket_names_are_too_long() -> None:
    class LongName(Document):
        model_config = DocumentConfig(collection="c" * 100, registry=Registry())

    with pytest.raises(ValueError, match="LongName's bucket name"):
        Database(None, namespace="n" * 160, documents=[LongName])
    Database(None, namespace="n" * 150, documents=[LongName])  # 251 characters


async def test_a_bucket_name_nats_would_refuse_is_refused_by_the_memory_store_too() -> None:
    store = MemoryStore()
    with pytest.raises(InvalidKey, match="at most 252"):
        await store.open_bucket("b" * 253, BucketConfig())
    await store.open_bucket("b" * 252, BucketConfig())


async def test_a_class_not_served_by_the_database(make_db: DbFactory) -> None:
    db = await make_db(Note)
    with pytest.raises(DatabaseError, match="not one of"):
        Other.objects.using(db).add(x=1)


async def test_documents_can_be_a_registry() -> None:
    async with Database(None, documents=REG) as db:
        assert set(db.documents) == {Note, Other, Unbound}


# -- binding ---------------------------------------------------------------------------------------
async def test_not_bound_error_says_what_to_do() -> None:
    with pytest.raises(NotBoundError) as err:
        Unbound.objects.add(y=1)
    msg = str(err.value)
    assert "Unbound" in msg
    assert "start" in msg
    assert "using" in msg
    with pytest.raises(NotBoundError):
        await Unbound.objects.filter(y=1)
    with pytest.raises(NotBoundError):
        len(Unbound.objects)


async def test_default_binding_is_the_first_started_not_stopped_database(make_db: DbFactory) -> None:
    first = await make_db(Other)
    second = await make_db(Other)
    assert Other.objects.database is first
    doc = Other.objects.add(x=1)
    assert doc in Other.objects.using(first)
    assert doc not in Other.objects.using(second)
    assert Other.objects.using(second).database is second
    await first.stop()
    assert Other.objects.database is second
    await second.stop()
    with pytest.raises(NotBoundError):
        _ = Other.objects.database


async def test_a_database_not_yet_started_is_not_bound(make_db: DbFactory) -> None:
    later = await make_db(Other, start=False)
    with pytest.raises(NotBoundError):
        Other.objects.add(x=1)
    await later.start()
    assert Other.objects.database is later


async def test_module_level_setup_flush_stop() -> None:
    db = await brainless_odm.setup(None, namespace="mod", location="here", documents=[Other])
    try:
        assert brainless_odm.get_database() is db
        assert db.location == "here"
        with pytest.raises(DatabaseError):
            await brainless_odm.setup(None, documents=[Other])
        doc = Other.objects.add(x=5)
        assert await brainless_odm.flush() == 1
        assert not doc.is_dirty
        assert Other.objects.database is db
    finally:
        await brainless_odm.stop()
    await brainless_odm.stop()  # twice is fine
    assert not db.started
    with pytest.raises(NotBoundError):
        Other.objects.add(x=1)
    with pytest.raises(DatabaseError):
        await brainless_odm.flush()


# -- dead letters ----------------------------------------------------------------------------------
@pytest.mark.parametrize("nc", ["nats://127.0.0.1:4222", 4222, object()])
def test_something_other_than_a_client_is_a_type_error_at_once(nc: object) -> None:
    with pytest.raises(TypeError, match=r"nats\.connect"):
        Database(nc, documents=[Note])


async def test_poison_value_goes_to_dead_letters_and_the_collection_still_loads(
    make_db: DbFactory,
) -> None:
    store = MemoryStore()
    await store.open_bucket("dl-note", BucketConfig())
    bucket = store.bucket("dl-note")
    await bucket.put_raw("good", orjson.dumps({"text": "fine", "n": 1}))
    await bucket.put_raw("bad", b"not json")
    await bucket.put_raw("invalid", orjson.dumps({"text": "x", "n": "NaN-ish"}))
    db = await make_db(Note, store=store, namespace="dl")
    objects = Note.objects.using(db)
    assert objects["good"].text == "fine"
    assert "bad" not in objects
    assert "invalid" not in objects
    letters = await db.dead_letters()
    assert [(d.collection, d.key) for d in letters] == [("note", "bad"), ("note", "invalid")]
    bad = letters[0]
    assert bad.value == b"not json"
    assert bad.error
    assert letters[1].value == orjson.dumps({"text": "x", "n": "NaN-ish"})
    # moved aside: the bucket holds a delete marker now, and the database has seen it
    entry = await bucket.get("bad")
    assert entry is not None
    assert entry.value == b""
    coll = db.collection(Note)
    await wait_for(lambda: coll.applied >= entry.revision, what="the watch to pass the marker")

    with pytest.raises(ValidationError):
        await db.requeue_dead_letter(letters[1])
    assert "invalid" not in objects
    doc = await db.requeue_dead_letter(bad, orjson.dumps({"text": "fixed", "n": 2}))
    assert isinstance(doc, Note)
    assert objects["bad"] is doc
    assert doc.text == "fixed"
    assert [d.key for d in await db.dead_letters()] == ["invalid"]
    entry = await bucket.get("bad")
    assert entry is not None
    assert Note.model_validate_json(entry.value).text == "fixed"


async def test_requeue_takes_the_fixed_value_as_a_dict_or_a_str_of_json(make_db: DbFactory) -> None:
    # Someone fixing a dead letter holds a dict (orjson.loads(letter.value), corrected): it was
    # refused with pydantic_core's "Expected bytes, bytearray or str". A dict is read back as a
    # stored value, so it validates exactly as one would, big integers included.
    store = MemoryStore()
    await store.open_bucket("rqv-note", BucketConfig())
    bucket = store.bucket("rqv-note")
    for key in ("as-dict", "as-str", "as-bytes", "invalid"):
        await bucket.put_raw(key, b'{"text": "x", "n": "twelve"}')
    db = await make_db(Note, store=store, namespace="rqv")
    letters = {d.key: d for d in await db.dead_letters()}
    objects = Note.objects.using(db)

    fixed = orjson.loads(letters["as-dict"].value)
    fixed["n"] = 2**70 + 1  # beyond 64 bits: orjson would refuse to serialise it
    doc = await db.requeue_dead_letter(letters["as-dict"], fixed)
    assert isinstance(doc, Note)
    assert (doc.text, doc.n) == ("x", 2**70 + 1)
    assert objects["as-dict"] is doc
    await db.requeue_dead_letter(letters["as-str"], '{"text": "s", "n": 1}')
    await db.requeue_dead_letter(letters["as-bytes"], b'{"n": 2}')
    assert (objects["as-str"].n, objects["as-bytes"].n) == (1, 2)
    entry = await bucket.get("as-dict")
    assert entry is not None
    assert Note.model_validate_json(entry.value).n == 2**70 + 1

    # Still invalid, or not a value at all: the letter stays, nothing is stored.
    invalid = letters["invalid"]
    with pytest.raises(ValidationError):
        await db.requeue_dead_letter(invalid, {"text": "x", "n": "still not a number"})
    with pytest.raises(TypeError, match=r"bytes, a str of JSON or a mapping of the fields, not int"):
        await db.requeue_dead_letter(invalid, 12)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        await db.requeue_dead_letter(invalid, {"text": object()})
    assert [d.key for d in await db.dead_letters()] == ["invalid"]
    assert "invalid" not in objects
    assert not any(d.is_dirty for d in objects)


async def test_a_requeue_that_lands_while_another_document_fails_drops_its_letter(
    make_db: DbFactory,
) -> None:
    # requeue flushes the database: a failure of another document must not leave the requeued
    # one stored *and* its letter kept (a second requeue then asked to delete the good document).
    store = MemoryStore()
    await store.open_bucket("rq-note", BucketConfig())
    await store.bucket("rq-note").put_raw("bad", b"not json")
    db = await make_db(Note, store=store, namespace="rq", flush_interval=60)
    (letter,) = await db.dead_letters()
    big = Note.objects.using(db).add(text="x" * (1024 * 1024 + 1))
    with pytest.raises(FlushError) as err:
        await db.requeue_dead_letter(letter, orjson.dumps({"text": "fixed"}))
    assert [k for _c, k, _e in err.value.failures] == [big.uuid]
    assert Note.objects.using(db)["bad"].text == "fixed"
    assert await db.dead_letters() == []
    entry = await store.bucket("rq-note").get("bad")
    assert entry is not None
    assert Note.model_validate_json(entry.value).text == "fixed"
    await Note.objects.using(db).filter(uuid=big.uuid).delete()


async def test_poison_value_arriving_through_the_watch(make_db: DbFactory) -> None:
    store = MemoryStore()
    db = await make_db(Note, store=store, namespace="dlw")
    await store.bucket("dlw-note").put_raw("late", b"\xff\xfe")
    await wait_for(db.dead_letters, what="the dead letter")
    (letter,) = await db.dead_letters()
    assert (letter.collection, letter.key, letter.value) == ("note", "late", b"\xff\xfe")
    assert "late" not in Note.objects.using(db)


class Nested(Document):
    # A registry of its own: test_documents_can_be_a_registry lists REG's classes.
    model_config = DocumentConfig(registry=Registry(), collection="nested")

    tags: list[str] = Field(default_factory=list)
    a: int = 0
    b: int = 0
    c: int = 0


async def test_a_dead_letter_summary_names_each_field_and_its_error(make_db: DbFactory) -> None:
    # `.error` is Pydantic's text, whose first line ("1 validation error for Note") was all that
    # `dead-letters list` showed; `.summary` says in one line what is wrong, and where.
    store = MemoryStore()
    await store.open_bucket("sum-note", BucketConfig())
    await store.open_bucket("sum-nested", BucketConfig())
    await store.bucket("sum-note").put_raw("two", orjson.dumps({"text": 5, "n": "many"}))
    await store.bucket("sum-note").put_raw("garbage", b"not json")
    await store.bucket("sum-note").put_raw("a-list", b"[1, 2]")
    await store.bucket("sum-nested").put_raw(
        "four", orjson.dumps({"tags": ["ok", 7], "a": "x", "b": "y", "c": "z"})
    )
    db = await make_db(Note, Nested, store=store, namespace="sum")
    await store.bucket("sum-note").put_raw("late", b"\xff\xfe")  # through the watch: another path
    await wait_for(lambda: _has_letter(db, "late"), what="the late dead letter")
    by_key = {d.key: d for d in await db.dead_letters()}

    assert by_key["two"].summary == (
        "text: Input should be a valid string; n: Input should be a valid integer, "
        "unable to parse string as an integer"
    )
    assert by_key["two"].error.startswith("2 validation errors for Note\n")  # the full text stays
    assert by_key["garbage"].summary == "Invalid JSON: expected ident at line 1 column 2"
    assert by_key["late"].summary.startswith("Invalid JSON: ")
    assert "\n" not in by_key["late"].summary
    assert by_key["a-list"].summary == "Input should be an object"
    assert by_key["four"].summary == (
        "tags.1: Input should be a valid string; a: Input should be a valid integer, unable to parse "
        "string as an integer; b: Input should be a valid integer, unable to parse string as an "
        "integer; and 1 more"
    )


async def _has_letter(db: Database, key: str) -> bool:
    return any(d.key == key for d in await db.dead_letters())


async def test_a_dead_letter_stored_without_a_summary_gets_one_from_its_error_text(
    make_db: DbFactory,
) -> None:
    # Letters stored before summaries were have only Pydantic's text: they must still show their
    # fields and messages, not the title line.
    with pytest.raises(ValidationError) as invalid:
        Nested.model_validate({"tags": ["ok", 7], "a": "x"})
    with pytest.raises(ValidationError) as not_json:
        Note.model_validate_json(b"not json")
    store = MemoryStore()
    await store.open_bucket("old-_dead_letters", BucketConfig())
    dead = store.bucket("old-_dead_letters")
    for key, error in (
        ("invalid", str(invalid.value)),
        ("not-json", str(not_json.value)),
        ("other", "stored value is a JSON list,\nnot an object"),
    ):
        old = {"collection": "note", "key": key, "revision": 1, "error": error, "value": "", "location": "x"}
        await dead.put_raw(f"note.{key}", orjson.dumps(old))
    db = await make_db(Note, store=store, namespace="old")
    by_key = {d.key: d for d in await db.dead_letters()}
    assert by_key["invalid"].summary == (
        "tags.1: Input should be a valid string; a: Input should be a valid integer, unable to parse "
        "string as an integer"
    )
    assert by_key["not-json"].summary == "Invalid JSON: expected ident at line 1 column 2"
    assert by_key["other"].summary == "stored value is a JSON list, not an object"


# -- oversize --------------------------------------------------------------------------------------
async def test_oversize_document_fails_alone_and_stays_dirty(make_db: DbFactory) -> None:
    db = await make_db(Note, flush_interval=60)
    objects = Note.objects.using(db)
    small = [objects.add(text=f"s{i}") for i in range(3)]
    big = objects.add(text="x" * (1024 * 1024 + 1))
    with pytest.raises(FlushError) as err:
        await db.flush()
    assert big.uuid in str(err.value)
    ((coll, key, exc),) = err.value.failures
    assert (coll, key) == ("note", big.uuid)
    assert isinstance(exc, PayloadTooLarge)
    assert not any(d.is_dirty for d in small)
    bucket = db.store.bucket("test-note")  # type: ignore[attr-defined]
    for d in small:
        assert await bucket.get(d.uuid) is not None
    assert big.is_dirty
    assert await bucket.get(big.uuid) is None
    # still failing on the next flush; other changes still go through
    small[0].n = 1
    with pytest.raises(FlushError):
        await db.flush()
    assert not small[0].is_dirty
    # fixed: written
    big.text = "small now"
    assert await db.flush() == 1
    assert not big.is_dirty


async def test_requeue_right_after_start_keeps_the_document(make_db: DbFactory) -> None:
    store = MemoryStore()
    await store.open_bucket("dlr-note", BucketConfig())
    await store.bucket("dlr-note").put_raw("bad", b"not json")
    db = await make_db(Note, store=store, namespace="dlr")
    (letter,) = await db.dead_letters()
    doc = await db.requeue_dead_letter(letter, orjson.dumps({"text": "fixed"}))
    await db.flush()
    entry = await store.bucket("dlr-note").get("bad")
    assert entry is not None
    assert entry.value != b"", "the requeued document was never stored"
    assert "bad" in Note.objects.using(db)
    assert Note.objects.using(db)["bad"] is doc


class _SwallowingWatch:
    """A watch whose first cancellation is lost, as inside asyncio.wait_for before Python 3.12 when
    the awaited reply lands in the same loop iteration as the cancel (nats-py requests)."""

    def __init__(self) -> None:
        self.swallowed = False

    def __aiter__(self) -> _SwallowingWatch:
        return self

    async def __anext__(self) -> Entry:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed = True
        await asyncio.Event().wait()  # waits again: only a second cancel ends it
        raise AssertionError("unreachable")


class _SwallowingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.watches: list[_SwallowingWatch] = []

    async def open_bucket(self, name: str, config: BucketConfig) -> MemoryBucket:
        bucket = await super().open_bucket(name, config)
        store = self

        def watch(after: int) -> _SwallowingWatch:
            w = _SwallowingWatch()
            store.watches.append(w)
            return w

        bucket.watch = watch  # type: ignore[method-assign, assignment]
        return bucket


async def test_stop_ends_even_when_a_cancellation_is_lost() -> None:
    store = _SwallowingStore()
    db = await Database(store, documents=[Note]).start()
    await asyncio.sleep(0)  # the watch task is now waiting inside the store's watch
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    stop = asyncio.ensure_future(db.stop())
    done, _ = await asyncio.wait([stop], timeout=5)
    assert done, "stop() hung on the watch task"
    assert loop.time() - t0 < 3
    assert store.watches
    assert store.watches[0].swallowed


async def test_a_flush_timer_firing_during_stop_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """The background flush's timer can fire while stop() is flushing (the same moment, on a busy
    loop): its task must see the database stopping and end quietly, not fail with "not started"."""
    db = await Database(MemoryStore(), flush_interval=0.01, documents=[Note]).start()
    Note.objects.using(db).add(text="a")
    await db.flush()
    note = Note.objects.using(db).add(text="b")
    assert db._flush_handle is not None
    db._flush_handle.cancel()  # stand in for the timer: fire at stop()'s first yield
    db._flush_handle = None
    asyncio.get_running_loop().call_soon(db._start_background_flush)
    with caplog.at_level("WARNING", logger="brainless_odm"):
        await db.stop()
        await asyncio.sleep(0.02)
    # A NATS client another test left reconnecting may log on the shared loop meanwhile.
    assert [r.getMessage() for r in caplog.records if r.name != "brainless_odm.store.nats"] == []
    assert not note.is_dirty  # stop() itself wrote it


class _SlowBucket(MemoryBucket):
    async def write(self, ops: Any) -> Any:
        await asyncio.sleep(0.05)
        return await super().write(ops)


class _SlowStore(MemoryStore):
    async def open_bucket(self, name: str, config: BucketConfig) -> Any:
        bucket = await super().open_bucket(name, config)
        bucket.__class__ = _SlowBucket
        return bucket


async def test_stop_writes_what_changed_while_it_was_flushing() -> None:
    store = _SlowStore()
    db = await Database(store, namespace="slowstop", flush_interval=60, documents=[Note]).start()
    objects = Note.objects.using(db)
    a = objects.add(text="a")
    stopping = asyncio.create_task(db.stop())
    await asyncio.sleep(0.02)  # stop()'s flush is writing "a"
    b = objects.add(text="b")
    a.n = 5
    await stopping
    assert not a.is_dirty
    assert not b.is_dirty
    async with Database(store, namespace="slowstop", documents=[Note]) as again:
        stored = {d.text: d.n for d in Note.objects.using(again)}
    assert stored == {"a": 5, "b": 0}


async def test_stop_reports_changes_that_never_stop_coming() -> None:
    store = _SlowStore()
    db = await Database(store, namespace="busystop", flush_interval=60, documents=[Note]).start()
    doc = Note.objects.using(db).add(text="a")

    async def keep_changing() -> None:
        while True:
            await asyncio.sleep(0.01)
            doc.n += 1

    changer = asyncio.create_task(keep_changing())
    try:
        with pytest.raises(FlushError, match="still changing") as info:
            await db.stop()
    finally:
        changer.cancel()
    assert [(c, k) for c, k, _ in info.value.failures] == [("note", doc.uuid)]
    assert not db.started
