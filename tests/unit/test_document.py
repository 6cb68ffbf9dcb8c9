"""Document classes: definition-time checks, validation, and field-level dirtiness."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from helpers import DbFactory, wait_for
from pydantic import BaseModel, Field, ValidationError

import brainless_odm
from brainless_odm import (
    Database,
    DefinitionError,
    Document,
    DocumentConfig,
    Indexed,
    MemoryStore,
    Registry,
    Unique,
)

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Caller(BaseModel):
    number: str
    city: str | None = None
    labels: list[str] = []


class Call(Base):
    channel_id: Annotated[str, Unique()]
    queue_id: Annotated[int, Indexed()] = 0
    state: Annotated[str, Indexed()] = "waiting"
    priority: int = 0
    caller: Caller | None = None
    tags: list[str] = Field(default_factory=list)
    meta: dict[str, int] = Field(default_factory=dict)
    flags: set[str] = Field(default_factory=set)


class QueueItem(Base):
    name: str = ""


class HTTPCall(Base):
    name: str = ""


class Renamed(Base):
    model_config = DocumentConfig(collection="calls_v2")
    x: int = 0


def fresh_registry_base() -> type[Document]:
    reg = Registry()

    class B(Document, abstract=True):
        model_config = DocumentConfig(registry=reg)

    return B


# -- definition ------------------------------------------------------------------------------------
def test_collection_name_is_snake_case_of_the_class_name() -> None:
    assert Call.__odm__.collection == "call"
    assert QueueItem.__odm__.collection == "queue_item"
    assert HTTPCall.__odm__.collection == "http_call"


def test_collection_name_can_be_overridden() -> None:
    assert Renamed.__odm__.collection == "calls_v2"
    assert REG.get("calls_v2") is Renamed
    assert REG.get("renamed") is None


def test_collection_name_is_not_inherited() -> None:
    class Sub(Renamed):
        y: int = 0

    assert Sub.__odm__.collection == "sub"


def test_duplicate_collection_name_in_one_registry_is_a_definition_error() -> None:
    B = fresh_registry_base()

    class One(B):  # type: ignore[valid-type,misc]
        x: int = 0

    with pytest.raises(DefinitionError, match="already defined"):

        class Two(B):  # type: ignore[valid-type,misc]
            model_config = DocumentConfig(collection="one")


def test_same_name_in_two_registries_is_fine() -> None:
    B1, B2 = fresh_registry_base(), fresh_registry_base()

    class Same(B1):  # type: ignore[valid-type,misc]
        pass

    first = Same

    class Same(B2):  # type: ignore[valid-type,misc,no-redef]
        pass

    assert first.__odm__.registry is not Same.__odm__.registry


def test_redefinition_of_the_same_class_replaces_it() -> None:
    B = fresh_registry_base()
    reg = B.__odm__.registry

    def define() -> type[Document]:
        class Again(B):  # type: ignore[valid-type,misc]
            x: int = 0

        return Again

    first, second = define(), define()
    assert first is not second
    assert reg.get("again") is second
    assert len(reg) == 1


@pytest.mark.parametrize("name", ["uuid", "objects", "dirty_fields", "is_dirty", "delete"])
def test_reserved_field_names(name: str) -> None:
    B = fresh_registry_base()
    with pytest.raises(DefinitionError, match="reserved"):
        type(name.title() + "Doc", (B,), {"__annotations__": {name: "int"}, "__module__": __name__})


@pytest.mark.parametrize(
    "config",
    [
        {"collection": "has space"},
        {"collection": "dot.ted"},
        {"collection": "staging-call"},  # "app" + "staging-call" would be "app-staging"'s bucket
        {"collection": ""},
        {"collection": 5},
        {"bucket_history": 0},
        {"bucket_history": 65},
        {"bucket_history": True},
        {"bucket_replicas": 6},
        {"bucket_storage": "disk"},
        {"bucket_max_value_size": 0},
        {"bucket_ttl": -1},
        {"bucket_ttl": "1h"},
        {"bucket_ttl": 0.05},  # nats-server's shortest max_age is 100 ms
        {"bucket_max_value_size": 2**31},
        {"bucket_replicas": 0},
        {"bucket_storage": None},
        {"collection": "c" * 5000},  # its bucket description would be over 4096 bytes
        {"registry": "nope"},
        {"validate_assignment": False},
    ],
)
def test_bad_document_config_is_a_definition_error(config: dict[str, Any]) -> None:
    B = fresh_registry_base()
    with pytest.raises(DefinitionError):
        type("Bad", (B,), {"model_config": DocumentConfig(**config), "__module__": __name__})


def test_bucket_option_errors_name_the_key_and_what_it_must_be() -> None:
    B = fresh_registry_base()
    with pytest.raises(
        DefinitionError,
        match=r"^Bad: model_config\['bucket_ttl'\] must be None or a number of seconds, at least 0\.1 "
        r"\(NATS' shortest max_age\), got 0\.05$",
    ):
        type("Bad", (B,), {"model_config": DocumentConfig(bucket_ttl=0.05), "__module__": __name__})


def test_good_bucket_options_are_kept() -> None:
    B = fresh_registry_base()

    class Opts(B):  # type: ignore[valid-type,misc]
        model_config = DocumentConfig(
            bucket_history=5, bucket_replicas=3, bucket_storage="memory", bucket_ttl=30
        )

    bucket = Opts.__odm__.options.bucket
    assert (bucket.history, bucket.replicas, bucket.storage, bucket.ttl) == (5, 3, "memory", 30.0)


def test_abstract_class_is_not_registered_and_cannot_be_served() -> None:
    B = fresh_registry_base()
    reg = B.__odm__.registry

    class Mixin(B, abstract=True):  # type: ignore[valid-type,misc]
        common: int = 0

    class Concrete(Mixin):
        other: int = 0

    assert Mixin not in reg
    assert Concrete in reg
    assert set(Concrete.model_fields) >= {"common", "other", "uuid"}
    with pytest.raises(ValueError, match="abstract"):
        Database(None, documents=[Mixin])


def test_each_class_has_its_own_does_not_exist() -> None:
    assert issubclass(Call.DoesNotExist, brainless_odm.DoesNotExist)
    assert issubclass(QueueItem.DoesNotExist, brainless_odm.DoesNotExist)
    assert Call.DoesNotExist is not QueueItem.DoesNotExist
    assert not issubclass(Call.DoesNotExist, QueueItem.DoesNotExist)
    assert issubclass(Call.MultipleObjectsReturned, brainless_odm.MultipleObjectsReturned)
    assert Call.MultipleObjectsReturned is not QueueItem.MultipleObjectsReturned


def test_defining_a_class_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("I/O at class creation")

    monkeypatch.setattr(MemoryStore, "open_bucket", boom)
    monkeypatch.setattr("socket.socket.connect", boom)
    B = fresh_registry_base()

    class Quiet(B):  # type: ignore[valid-type,misc]
        x: Annotated[int, Indexed()] = 0

    assert Quiet.__odm__.collection == "quiet"


@pytest.mark.parametrize("tp", [list[str], dict[str, int], set[int], Caller])
def test_indexed_on_a_container_field_is_a_definition_error(tp: Any) -> None:
    B = fresh_registry_base()
    with pytest.raises(DefinitionError, match="hashable scalar"):
        type("IdxList", (B,), {"__annotations__": {"tags": Annotated[tp, Indexed()]}, "__module__": __name__})


def test_objects_is_reached_through_the_class() -> None:
    with pytest.raises(AttributeError):
        _ = Call(channel_id="a").objects


# -- validation ------------------------------------------------------------------------------------
def test_construction_validates() -> None:
    with pytest.raises(ValidationError):
        Call(channel_id="a", priority="high")
    assert Call(channel_id="a", priority="5").priority == 5


async def test_assignment_validates_and_a_failure_changes_nothing(make_db: DbFactory) -> None:
    db = await make_db(Call)
    call = Call.objects.using(db).add(channel_id="v1", priority=1)
    await db.flush()
    assert not call.is_dirty
    with pytest.raises(ValidationError):
        call.priority = "high"  # type: ignore[assignment]
    assert call.priority == 1
    assert not call.is_dirty
    assert call.dirty_fields == frozenset()
    call.priority = "7"  # type: ignore[assignment]
    assert call.priority == 7
    assert call.dirty_fields == {"priority"}


async def test_failed_assignment_keeps_earlier_dirty_fields(make_db: DbFactory) -> None:
    db = await make_db(Call)
    call = Call.objects.using(db).add(channel_id="v2")
    await db.flush()
    call.state = "ringing"
    with pytest.raises(ValidationError):
        call.priority = "x"  # type: ignore[assignment]
    assert call.dirty_fields == {"state"}


async def test_assigning_an_equal_value_is_no_change(make_db: DbFactory) -> None:
    db = await make_db(Call)
    call = Call.objects.using(db).add(channel_id="eq", priority=3, tags=["a"])
    await db.flush()
    call.priority = 3
    call.priority = "3"  # type: ignore[assignment]
    call.tags = ["a"]
    call.state = "waiting"
    assert not call.is_dirty
    assert await db.flush() == 0


async def test_uuid_cannot_change_once_stored(make_db: DbFactory) -> None:
    db = await make_db(Call)
    call = Call.objects.using(db).add(channel_id="u")
    with pytest.raises(brainless_odm.DatabaseError):
        call.uuid = "other"
    call.uuid = call.uuid  # the same value is fine


# -- dirtiness -------------------------------------------------------------------------------------
def test_unstored_document_tracks_assignments() -> None:
    call = Call(channel_id="free")
    assert call.is_dirty
    assert call.dirty_fields == frozenset(Call.__odm__.data_fields)


async def test_every_field_is_dirty_until_the_first_flush(make_db: DbFactory) -> None:
    db = await make_db(Call)
    call = Call.objects.using(db).add(channel_id="d1")
    assert call.is_dirty
    assert call.dirty_fields == {
        "channel_id",
        "queue_id",
        "state",
        "priority",
        "caller",
        "tags",
        "meta",
        "flags",
    }
    assert await db.flush() == 1
    assert not call.is_dirty
    assert call.dirty_fields == frozenset()


async def _stored(make_db: DbFactory, **fields: Any) -> tuple[Database, Call]:
    db = await make_db(Call)
    call = Call.objects.using(db).add(channel_id="c", **fields)
    await db.flush()
    assert not call.is_dirty
    return db, call


async def test_assignment_marks_only_that_field(make_db: DbFactory) -> None:
    _, call = await _stored(make_db)
    call.priority = 9
    assert call.dirty_fields == {"priority"}
    assert call.is_dirty


async def test_nested_model_assignment_marks_the_top_field(make_db: DbFactory) -> None:
    _, call = await _stored(make_db, caller=Caller(number="1", city="Prague"))
    assert call.caller is not None
    call.caller.city = "Brno"
    assert call.dirty_fields == {"caller"}
    assert call.caller.city == "Brno"


async def test_invalid_nested_model_assignment_is_rejected(make_db: DbFactory) -> None:
    _, call = await _stored(make_db, caller=Caller(number="1", city="Prague"))
    assert call.caller is not None
    with pytest.raises(ValidationError):
        call.caller.number = 5  # type: ignore[assignment]
    assert call.caller.number == "1"
    assert not call.is_dirty


async def test_container_inside_nested_model_is_tracked(make_db: DbFactory) -> None:
    _, call = await _stored(make_db, caller=Caller(number="1", labels=["x"]))
    assert call.caller is not None
    call.caller.labels.append("y")
    assert call.dirty_fields == {"caller"}
    assert call.caller.labels == ["x", "y"]


async def test_container_assigned_inside_nested_model_stays_tracked(make_db: DbFactory) -> None:
    db, call = await _stored(make_db, caller=Caller(number="1"))
    assert call.caller is not None
    call.caller.labels = ["a"]
    await db.flush()
    assert not call.is_dirty
    call.caller.labels.append("b")
    assert call.dirty_fields == {"caller"}


async def test_replaced_nested_model_is_tracked(make_db: DbFactory) -> None:
    db, call = await _stored(make_db, caller=Caller(number="1"))
    old = call.caller
    assert old is not None
    call.caller = Caller(number="2")
    await db.flush()
    old.city = "Nowhere"
    assert not call.is_dirty
    call.caller.city = "Ostrava"
    assert call.dirty_fields == {"caller"}


def _mutations() -> list[tuple[str, Any, Any]]:
    return [
        ("tags", lambda c: c.tags.append("vip"), ["a", "b", "vip"]),
        ("tags", lambda c: c.tags.extend(["x", "y"]), ["a", "b", "x", "y"]),
        ("tags", lambda c: c.tags.insert(0, "z"), ["z", "a", "b"]),
        ("tags", lambda c: c.tags.pop(), ["a"]),
        ("tags", lambda c: c.tags.pop(0), ["b"]),
        ("tags", lambda c: c.tags.__setitem__(1, "B"), ["a", "B"]),
        ("tags", lambda c: c.tags.__delitem__(0), ["b"]),
        ("tags", lambda c: c.tags.sort(reverse=True), ["b", "a"]),
        ("tags", lambda c: c.tags.remove("a"), ["b"]),
        ("tags", lambda c: c.tags.clear(), []),
        ("tags", lambda c: c.tags.reverse(), ["b", "a"]),
        ("tags", lambda c: c.tags.__iadd__(["c"]), ["a", "b", "c"]),
        ("meta", lambda c: c.meta.__setitem__("k", 2), {"n": 1, "k": 2}),
        ("meta", lambda c: c.meta.update({"k": 3}), {"n": 1, "k": 3}),
        ("meta", lambda c: c.meta.pop("n"), {}),
        ("meta", lambda c: c.meta.__delitem__("n"), {}),
        ("meta", lambda c: c.meta.setdefault("s", 4), {"n": 1, "s": 4}),
        ("meta", lambda c: c.meta.clear(), {}),
        ("flags", lambda c: c.flags.add("f2"), {"f1", "f2"}),
        ("flags", lambda c: c.flags.discard("f1"), set()),
        ("flags", lambda c: c.flags.update({"f3"}), {"f1", "f3"}),
    ]


@pytest.mark.parametrize(("field", "mutate", "expected"), _mutations())
async def test_in_place_container_mutation_marks_the_field(
    make_db: DbFactory, field: str, mutate: Any, expected: Any
) -> None:
    db, call = await _stored(make_db, tags=["a", "b"], meta={"n": 1}, flags={"f1"})
    mutate(call)
    assert getattr(call, field) == expected
    assert call.dirty_fields == {field}
    assert await db.flush() == 1
    assert not call.is_dirty
    stored = await db.store.bucket("test-call").get(call.uuid)  # type: ignore[attr-defined]
    assert stored is not None
    data = Call.model_validate_json(stored.value)
    assert getattr(data, field) == expected


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda c: c.tags.append(5), "tags"),
        (lambda c: c.tags.extend(["ok", 6]), "tags"),
        (lambda c: c.tags.__setitem__(0, None), "tags"),
        (lambda c: c.meta.__setitem__("k", "not an int"), "meta"),
        (lambda c: c.meta.update(k=[1]), "meta"),
        (lambda c: c.flags.add(7), "flags"),
    ],
)
async def test_invalid_in_place_change_raises_and_is_undone(
    make_db: DbFactory, mutate: Any, field: str
) -> None:
    _, call = await _stored(make_db, tags=["a"], meta={"n": 1}, flags={"f"})
    before = Call.model_validate(call.model_dump())
    with pytest.raises(ValidationError):
        mutate(call)
    assert getattr(call, field) == getattr(before, field)
    assert not call.is_dirty


async def test_replaced_list_no_longer_tracks_the_document(make_db: DbFactory) -> None:
    db, call = await _stored(make_db, tags=["a"])
    old = call.tags
    call.tags = ["b"]
    await db.flush()
    old.append("stale")
    assert not call.is_dirty
    assert call.tags == ["b"]
    call.tags.append("c")
    assert call.dirty_fields == {"tags"}


async def test_list_given_at_construction_is_copied_into_tracking(make_db: DbFactory) -> None:
    db = await make_db(Call)
    mine = ["a"]
    call = Call.objects.using(db).add(channel_id="own", tags=mine)
    await db.flush()
    call.tags.append("b")
    assert call.dirty_fields == {"tags"}


async def test_deleted_document_no_longer_tracks_mutations(make_db: DbFactory) -> None:
    db, call = await _stored(make_db, tags=["a"])
    await call.delete()
    await db.flush()
    call.tags.append("x")  # it is a plain detached document now: no error, no write
    assert await db.flush() == 0


async def test_flush_writes_only_changed_documents_and_names_the_fields(make_db: DbFactory) -> None:
    db = await make_db(Call)
    calls = [Call.objects.using(db).add(channel_id=f"f{i}") for i in range(5)]
    assert await db.flush() == 5
    bucket = db.store.bucket("test-call")  # type: ignore[attr-defined]
    revs = {c.uuid: (await bucket.get(c.uuid)).revision for c in calls}
    calls[1].priority = 4
    calls[3].tags.append("x")
    calls[3].state = "talking"
    assert await db.flush() == 2
    import orjson

    for c in calls:
        entry = await bucket.get(c.uuid)
        if c in (calls[1], calls[3]):
            assert entry.revision > revs[c.uuid]
        else:
            assert entry.revision == revs[c.uuid]
    meta1 = orjson.loads((await bucket.get(calls[1].uuid)).value)["_odm"]
    meta3 = orjson.loads((await bucket.get(calls[3].uuid)).value)["_odm"]
    assert meta1["ch"] == ["priority"]
    assert sorted(meta3["ch"]) == ["state", "tags"]
    assert await db.flush() == 0


async def test_first_write_lists_every_field_as_changed(make_db: DbFactory) -> None:
    import orjson

    db = await make_db(Call, location="here")
    call = Call.objects.using(db).add(channel_id="first")
    await db.flush()
    value = (await db.store.bucket("test-call").get(call.uuid)).value  # type: ignore[attr-defined]
    meta = orjson.loads(value)["_odm"]
    assert sorted(meta["ch"]) == sorted(Call.__odm__.data_fields)
    assert meta["loc"] == "here"


async def test_background_flush_happens_without_an_explicit_call(make_db: DbFactory) -> None:
    db = await make_db(Call, flush_interval=0.01)
    call = Call.objects.using(db).add(channel_id="bg")
    await wait_for(lambda: not call.is_dirty, what="the add to be flushed")
    bucket = db.store.bucket("test-call")  # type: ignore[attr-defined]
    rev = (await bucket.get(call.uuid)).revision
    call.tags.append("vip")
    assert call.is_dirty
    await wait_for(lambda: not call.is_dirty, what="the in-place change to be flushed")
    entry = await bucket.get(call.uuid)
    assert entry.revision > rev
    assert Call.model_validate_json(entry.value).tags == ["vip"]
    assert call.caller is None
    call.caller = Caller(number="1")
    await wait_for(lambda: not call.is_dirty, what="the assignment to be flushed")
    call.caller.city = "Brno"
    await wait_for(lambda: not call.is_dirty, what="the nested change to be flushed")
    entry = await bucket.get(call.uuid)
    assert Call.model_validate_json(entry.value).caller == Caller(number="1", city="Brno")


def test_copies_are_plain_and_untracked() -> None:
    call = Call(channel_id="cp", tags=["a"])
    clone = call.model_copy(deep=True)
    assert clone == call
    assert clone._odm_coll is None


async def test_a_change_made_while_a_flush_is_in_flight_stays_dirty(make_db: DbFactory) -> None:
    import asyncio

    db, call = await _stored(make_db)
    call.priority = 1
    flushing = asyncio.ensure_future(db.flush())
    await asyncio.sleep(0)  # the write is under way
    call.state = "talking"
    assert call.dirty_fields == {"priority", "state"}
    await flushing
    assert call.dirty_fields == {"state"}
    assert await db.flush() == 1
    assert not call.is_dirty
    entry = await db.store.bucket("test-call").get(call.uuid)  # type: ignore[attr-defined]
    stored = Call.model_validate_json(entry.value)
    assert (stored.priority, stored.state) == (1, "talking")


async def test_list_of_nested_models_is_tracked(make_db: DbFactory) -> None:
    class Many(Base):
        callers: list[Caller] = Field(default_factory=list)
        groups: dict[str, list[int]] = Field(default_factory=dict)

    db = await make_db(Many)
    doc = Many.objects.using(db).add(callers=[Caller(number="1")], groups={"g": [1]})
    await db.flush()
    doc.callers[0].city = "Brno"
    assert doc.dirty_fields == {"callers"}
    await db.flush()
    doc.groups["g"].append(2)
    assert doc.dirty_fields == {"groups"}
    await db.flush()
    with pytest.raises(ValidationError):
        doc.groups["g"].append("x")  # type: ignore[arg-type]
    assert doc.groups == {"g": [1, 2]}
    assert not doc.is_dirty


async def test_documents_take_weak_references(make_db: DbFactory) -> None:
    import weakref

    db = await make_db(Call)
    doc = Call.objects.using(db).add(channel_id="weak-1")
    cache: weakref.WeakValueDictionary[str, Call] = weakref.WeakValueDictionary()
    cache[doc.uuid or ""] = doc
    assert weakref.ref(doc)() is doc
    assert cache[doc.uuid or ""] is doc
