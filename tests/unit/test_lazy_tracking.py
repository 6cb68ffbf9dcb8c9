"""Documents the engine decodes from the store (a load, another node's create), and documents added
from data nobody else holds, keep their containers plain until one is first read; every way of
reaching a container must still end up tracked."""

from __future__ import annotations

import copy
import pickle
import sys
import weakref
from typing import Any

import pytest
from helpers import DbFactory, wait_for
from pydantic import BaseModel, Field

from brainless_odm import Database, Document, DocumentConfig, MemoryStore, Registry, _tracking

registry = Registry()


class Caller(BaseModel):
    number: str
    city: str | None = None


class Lazy(Document):
    model_config = DocumentConfig(registry=registry)

    name: str = ""
    tags: list[str] = Field(default_factory=list)
    caller: Caller | None = None
    meta: dict[str, list[int]] = Field(default_factory=dict)


async def _pair(make_db: DbFactory, count: int = 3) -> tuple[Database, Database, list[str]]:
    """A writer node and a node that loaded its documents from the store (so they start raw)."""
    store = MemoryStore()
    a = await make_db(Lazy, store=store, location="a", flush_interval=60)
    keys = [
        Lazy.objects.using(a).add(name=f"n{i}", tags=["x"], caller=Caller(number="1"), meta={"k": [1]}).uuid
        or ""
        for i in range(count)
    ]
    await a.flush()
    b = await make_db(Lazy, store=store, location="b", flush_interval=60)
    return a, b, keys


def _raw(db: Database, key: str) -> bool:
    return bool(Lazy.objects.using(db)[key]._odm_raw)


async def _synced(a: Database, b: Database, key: str, check: Any) -> None:
    await b.flush()
    await wait_for(lambda: check(Lazy.objects.using(a)[key]), what="the change on the other node")


async def test_loaded_documents_start_plain_and_queries_keep_them_so(make_db: DbFactory) -> None:
    _a, b, keys = await _pair(make_db)
    assert all(_raw(b, k) for k in keys)
    objects = Lazy.objects.using(b)
    assert len(await objects.filter(caller__number="1", name="n1")) == 1
    assert len(await objects.filter(tags__contains="x")) == 3
    assert [d.name for d in await objects.order_by("-name")] == ["n2", "n1", "n0"]
    assert all(_raw(b, k) for k in keys)  # reading scalars and querying wraps nothing
    doc = objects[keys[0]]
    assert doc.name == "n0"
    assert doc.model_dump()["tags"] == ["x"]
    assert _raw(b, keys[0])


async def test_in_place_changes_after_load_are_tracked(make_db: DbFactory) -> None:
    a, b, keys = await _pair(make_db)
    objects = Lazy.objects.using(b)
    objects[keys[0]].tags.append("y")
    assert objects[keys[0]].is_dirty
    await _synced(a, b, keys[0], lambda d: d.tags == ["x", "y"])

    objects[keys[1]].caller.city = "Brno"  # type: ignore[union-attr]
    assert objects[keys[1]].dirty_fields == {"caller"}
    await _synced(a, b, keys[1], lambda d: d.caller.city == "Brno")

    objects[keys[2]].meta["k"].append(2)
    await _synced(a, b, keys[2], lambda d: d.meta == {"k": [1, 2]})


async def test_containers_reached_by_iteration_or_copy_are_tracked(make_db: DbFactory) -> None:
    a, b, keys = await _pair(make_db)
    objects = Lazy.objects.using(b)
    fields = dict(objects[keys[0]])
    fields["tags"].append("via-iter")
    assert objects[keys[0]].is_dirty
    await _synced(a, b, keys[0], lambda d: d.tags == ["x", "via-iter"])

    shallow = copy.copy(objects[keys[1]])  # shares the containers, which must be tracked ones
    shallow.tags.append("via-copy")
    assert objects[keys[1]].is_dirty
    deep = copy.deepcopy(objects[keys[2]])
    deep.tags.append("not-stored")
    assert objects[keys[2]].tags == ["x"]


async def test_assigning_one_field_tracks_the_others(make_db: DbFactory) -> None:
    a, b, keys = await _pair(make_db)
    doc = Lazy.objects.using(b)[keys[0]]
    doc.name = "renamed"  # a scalar: nothing to wrap yet
    assert doc._odm_raw
    doc.tags = ["new"]  # a tracked field: every tracked field is wrapped now
    assert not doc._odm_raw
    doc.meta["k"].append(5)
    assert doc.dirty_fields == {"name", "tags", "meta"}
    await _synced(a, b, keys[0], lambda d: (d.name, d.tags, d.meta) == ("renamed", ["new"], {"k": [1, 5]}))


async def test_remote_creates_and_updates_of_raw_documents(make_db: DbFactory) -> None:
    a, b, _keys = await _pair(make_db, count=1)
    key = Lazy.objects.using(a).add(name="late", tags=["t"]).uuid or ""
    await a.flush()
    await wait_for(lambda: key in Lazy.objects.using(b), what="the remote create")
    assert _raw(b, key)  # created from another node's bytes: plain until read

    seen: list[Any] = []
    Lazy.objects.using(b).on_field_change("tags", lambda doc, field, old, new: seen.append(new))
    Lazy.objects.using(a)[key].tags.append("u")
    await _synced(b, a, key, lambda d: d.__dict__["tags"] == ["t", "u"])
    assert seen == [["t", "u"]]
    seen[0].append("callback-scribble")  # the value handed to a callback is not the stored one
    doc = Lazy.objects.using(b)[key]
    assert doc.tags == ["t", "u"]
    assert not doc.is_dirty
    doc.tags.append("v")
    await _synced(a, b, key, lambda d: d.tags == ["t", "u", "v"])


async def test_remote_update_keeps_an_unread_document_plain(make_db: DbFactory) -> None:
    a, b, keys = await _pair(make_db, count=1)
    Lazy.objects.using(a)[keys[0]].tags.append("z")
    await a.flush()
    await wait_for(lambda: Lazy.objects.using(b)[keys[0]].__dict__["tags"] == ["x", "z"], what="merge")
    assert _raw(b, keys[0])
    Lazy.objects.using(b)[keys[0]].tags.append("w")  # first read: tracked from here
    await _synced(a, b, keys[0], lambda d: d.tags == ["x", "z", "w"])


async def test_delete_and_stop_of_raw_documents(make_db: DbFactory) -> None:
    a, b, keys = await _pair(make_db, count=2)
    gone = Lazy.objects.using(b)[keys[0]]
    assert Lazy.objects.using(b).delete(keys[0])
    gone.tags.append("after-delete")  # an unstored document now: a plain change, not an error
    assert gone.tags == ["x", "after-delete"]
    await b.flush()
    await wait_for(lambda: keys[0] not in Lazy.objects.using(a), what="the delete")
    kept = Lazy.objects.using(b)[keys[1]]
    await b.stop()
    kept.tags.append("after-stop")
    assert kept.tags == ["x", "after-stop"]


async def test_documents_made_without_init_still_read(make_db: DbFactory) -> None:
    _a, b, keys = await _pair(make_db, count=1)
    clone = pickle.loads(pickle.dumps(Lazy.objects.using(b)[keys[0]]))
    assert clone.tags == ["x"]
    assert clone.caller == Caller(number="1")
    built = Lazy.model_construct(name="c", tags=["q"])
    assert built.tags == ["q"]


# -- documents added by the application -----------------------------------------------------------

#: Deferred wrapping on add() needs reference counts it can trust (CPython 3.10-3.13).
counted = pytest.mark.skipif(_tracking._SOLE_REFS is None, reason="reference counts not used here")


@counted
async def test_documents_added_from_plain_data_start_plain_and_track_on_first_read(
    make_db: DbFactory,
) -> None:
    store = MemoryStore()
    a = await make_db(Lazy, store=store, location="a", flush_interval=60)
    objects = Lazy.objects.using(a)
    doc = objects.add(name="p", tags=["x"], caller={"number": "1"}, meta={"k": [1]})
    assert doc._odm_raw  # validated from plain data: nobody else holds its containers
    await a.flush()
    assert doc._odm_raw  # writing it read nothing through the document
    doc.caller.city = "Brno"  # type: ignore[union-attr]  # first read: every tracked field wrapped
    assert not doc._odm_raw
    doc.meta["k"].append(2)
    doc.tags.append("y")
    assert doc.dirty_fields == {"caller", "meta", "tags"}
    await a.flush()
    b = await make_db(Lazy, store=store, location="b", flush_interval=60)
    seen = Lazy.objects.using(b)[doc.uuid or ""]
    assert (seen.caller, seen.meta, seen.tags) == (Caller(number="1", city="Brno"), {"k": [1, 2]}, ["x", "y"])


async def test_added_documents_whose_parts_the_caller_holds_are_tracked_at_once(make_db: DbFactory) -> None:
    store = MemoryStore()
    a = await make_db(Lazy, store=store, location="a", flush_interval=60)
    objects = Lazy.objects.using(a)
    caller = Caller(number="1")
    doc = objects.add(name="held", caller=caller)
    assert not doc._odm_raw
    await a.flush()
    caller.city = "Brno"  # through the application's own reference, never read from the document
    assert doc.dirty_fields == {"caller"}

    tags = ["x"]
    built = objects.add(Lazy.model_construct(name="built", tags=tags, meta={}))
    assert not built._odm_raw
    tags.append("outside")  # the document holds a tracked copy, not this list
    assert built.tags == ["x"]
    await a.flush()
    b = await make_db(Lazy, store=store, location="b", flush_interval=60)
    assert Lazy.objects.using(b)[doc.uuid or ""].caller == Caller(number="1", city="Brno")
    assert Lazy.objects.using(b)[built.uuid or ""].tags == ["x"]


@counted
def test_exclusive_sees_another_holder_at_every_depth() -> None:
    def fresh() -> dict[str, Any]:
        return {
            "a": [Caller(number="1")],
            "b": {"k": [[1]]},
            "c": Caller(number="2"),
            "s": "text",
            "t": ([1],),
        }

    names = ("a", "b", "c", "s", "t")
    assert _tracking.exclusive(fresh(), names)
    paths = [
        lambda d: d["a"],
        lambda d: d["a"][0],
        lambda d: d["b"],
        lambda d: d["b"]["k"],
        lambda d: d["b"]["k"][0],
        lambda d: d["c"],
        lambda d: d["t"][0],
    ]
    for i, path in enumerate(paths):
        d = fresh()
        held = path(d)
        assert not _tracking.exclusive(d, names), f"path {i}"
        del held
        assert _tracking.exclusive(d, names), f"path {i}, released"


async def test_where_counts_cannot_tell_every_added_document_is_tracked_at_once(
    make_db: DbFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_tracking, "_SOLE_REFS", None)
    db = await make_db(Lazy, flush_interval=60)
    doc = Lazy.objects.using(db).add(name="p", tags=["x"])
    assert not doc._odm_raw
    await db.flush()
    doc.tags.append("y")
    assert doc.dirty_fields == {"tags"}


@counted
async def test_a_plain_document_used_as_a_template_keeps_its_nested_models(make_db: DbFactory) -> None:
    db = await make_db(Lazy, flush_interval=60)
    objects = Lazy.objects.using(db)
    first = objects.add(name="a", caller={"number": "1"}, tags=["x"])
    await db.flush()
    assert first._odm_raw
    second = objects.add(first, name="b")
    assert second.__dict__["caller"] is not first.__dict__["caller"]
    second.caller.city = "Brno"  # type: ignore[union-attr]
    second.tags.append("y")
    assert first.caller == Caller(number="1")
    assert first.tags == ["x"]
    assert not first.is_dirty


class Tagged(BaseModel):
    number: str
    city: str | None = None

    def model_post_init(self, context: Any, /) -> None:
        LIVE[self.number] = self  # an identity map: a weak reference, not counted


LIVE: weakref.WeakValueDictionary[str, Tagged] = weakref.WeakValueDictionary()


class WithTagged(Document):
    model_config = DocumentConfig(registry=registry)

    caller: Tagged | None = None


async def test_a_nested_model_weakly_referenced_elsewhere_is_tracked_at_once(make_db: DbFactory) -> None:
    db = await make_db(WithTagged, flush_interval=60)
    doc = WithTagged.objects.using(db).add(caller={"number": "7"})
    assert not doc._odm_raw
    await db.flush()
    LIVE["7"].city = "Brno"
    assert doc.dirty_fields == {"caller"}


@counted
def test_calibration_refuses_when_counts_do_not_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _tracking._calibrate() == _tracking._SOLE_REFS
    monkeypatch.setattr(_tracking, "_refs", lambda value: 1)  # counts that see no other holder
    assert _tracking._calibrate() is None


def test_calibration_refuses_under_a_tracer() -> None:
    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_locals  # noqa: B018  # what debuggers do: extra references to every local
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        found = _tracking._calibrate()
    finally:
        sys.settrace(previous)
    assert found is None
