"""Stored documents (and the models nested in them) share one ``model_fields_set`` per distinct
content instead of a set each. Nothing a program sees of Pydantic's fields-set may change: the same
content, assignments adding to one instance's set only, copies with sets of their own, and a clear
error instead of a silent change to other documents' sets."""

from __future__ import annotations

import copy
import itertools
import pickle
from typing import Any

import pytest
from helpers import DbFactory, wait_for
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from brainless_odm import Database, Document, DocumentConfig, MemoryStore, Registry
from brainless_odm._fieldsets import MAX_VARIANTS, SharedFieldsSet

registry = Registry()


class Caller(BaseModel):
    number: str
    city: str | None = None


class Leg(BaseModel):
    agent: str
    seconds: int = 0


class Shared(Document):
    model_config = DocumentConfig(registry=registry)

    name: str = ""
    state: str = "waiting"
    caller: Caller | None = None
    legs: list[Leg] = Field(default_factory=list)
    by_queue: dict[str, Caller] = Field(default_factory=dict)


class Wide(Document):
    model_config = DocumentConfig(registry=registry)

    f0: int = 0
    f1: int = 0
    f2: int = 0
    f3: int = 0
    f4: int = 0
    f5: int = 0
    f6: int = 0
    f7: int = 0


def _full(i: int) -> dict[str, Any]:
    return {
        "name": f"n{i}",
        "state": "talking",
        "caller": {"number": str(i), "city": "Brno"},
        "legs": [{"agent": "a", "seconds": i}],
        "by_queue": {"q": {"number": "9", "city": None}},
    }


async def _loaded(make_db: DbFactory, count: int = 3) -> tuple[Database, Database, list[str]]:
    store = MemoryStore()
    a = await make_db(Shared, store=store, location="a", flush_interval=60)
    keys = [Shared.objects.using(a).add(_full(i)).uuid or "" for i in range(count)]
    await a.flush()
    b = await make_db(Shared, store=store, location="b", flush_interval=60)
    return a, b, keys


def _sets(doc: Shared) -> list[set[str]]:
    """The fields-sets of a document and of every model nested in it."""
    assert doc.caller is not None
    return [
        doc.model_fields_set,
        doc.caller.model_fields_set,
        doc.legs[0].model_fields_set,
        doc.by_queue["q"].model_fields_set,
    ]


async def test_loaded_documents_share_fields_sets_equal_to_pydantics(make_db: DbFactory) -> None:
    _a, b, keys = await _loaded(make_db)
    docs = [Shared.objects.using(b)[k] for k in keys]
    fresh = Shared.model_validate(_full(0))
    expected = [
        fresh.model_fields_set,
        *(m.model_fields_set for m in (fresh.caller, fresh.legs[0], fresh.by_queue["q"])),
    ]
    for doc in docs:
        sets = _sets(doc)
        assert sets == expected  # the same content Pydantic gives
        assert all(type(s) is SharedFieldsSet for s in sets)
    for first, other in zip(_sets(docs[0]), _sets(docs[1]), strict=True):
        assert first is other  # one set for all of them
    assert docs[0].model_dump(exclude_unset=True) == fresh.model_dump(exclude_unset=True)


async def test_added_documents_share_per_distinct_fields_set(make_db: DbFactory) -> None:
    db = await make_db(Shared)
    objects = Shared.objects.using(db)
    a = objects.add(name="a")
    b = objects.add(name="b")
    c = objects.add(name="c", state="held")
    assert a.model_fields_set == {"name"}
    assert a.model_fields_set is b.model_fields_set
    assert c.model_fields_set == {"name", "state"}
    assert c.model_fields_set is not a.model_fields_set
    assert a.model_dump(exclude_unset=True) == {"name": "a"}


async def test_assigning_a_field_not_set_gives_that_document_its_own_set(make_db: DbFactory) -> None:
    db = await make_db(Shared)
    objects = Shared.objects.using(db)
    a = objects.add(name="a")
    b = objects.add(name="b")
    a.state = "held"
    assert a.model_fields_set == {"name", "state"}
    assert b.model_fields_set == {"name"}  # untouched
    assert b.model_dump(exclude_unset=True) == {"name": "b"}
    a.name = "a2"  # a name already in a shared set: nothing to copy, nothing changes for others
    b.name = "b2"
    assert b.model_fields_set == {"name"}
    assert type(b.model_fields_set) is SharedFieldsSet


async def test_assigning_inside_nested_models_keeps_other_documents_sets(make_db: DbFactory) -> None:
    db = await make_db(Shared)
    objects = Shared.objects.using(db)
    a = objects.add(name="a", caller=Caller(number="1"), legs=[Leg(agent="x")])
    b = objects.add(name="b", caller=Caller(number="2"), legs=[Leg(agent="y")])
    assert a.caller is not None
    assert b.caller is not None
    assert a.caller.model_fields_set is b.caller.model_fields_set
    await db.flush()
    a.caller.city = "Brno"
    a.legs[0].seconds = 5
    assert a.caller.model_fields_set == {"number", "city"}
    assert a.legs[0].model_fields_set == {"agent", "seconds"}
    assert b.caller.model_fields_set == {"number"}
    assert b.legs[0].model_fields_set == {"agent"}
    assert a.dirty_fields == {"caller", "legs"}

    # A nested model that left its document is no longer tracked, and still unshares.
    old = b.caller
    b.caller = None
    old.city = "Olomouc"
    assert old.model_fields_set == {"number", "city"}
    assert objects.add(name="c", caller=Caller(number="3")).model_fields_set == {"name", "caller"}
    c = objects.add(name="d", caller=Caller(number="4")).caller
    assert c is not None
    assert c.model_fields_set == {"number"}


async def test_remote_creates_and_updates_share_too(make_db: DbFactory) -> None:
    a, b, keys = await _loaded(make_db, count=1)
    fresh = Shared.objects.using(a).add(_full(7))
    await a.flush()
    await wait_for(lambda: fresh.uuid in Shared.objects.using(b), what="the remote create")
    created = Shared.objects.using(b)[fresh.uuid or ""]
    loaded = Shared.objects.using(b)[keys[0]]
    for x, y in zip(_sets(created), _sets(loaded), strict=True):
        assert x is y

    doc = Shared.objects.using(a)[keys[0]]
    doc.caller = Caller(number="55", city="Zlin")
    await a.flush()
    await wait_for(lambda: loaded.caller is not None and loaded.caller.number == "55", what="the update")
    assert loaded.caller is not None
    assert type(loaded.caller.model_fields_set) is SharedFieldsSet
    assert loaded.caller.model_fields_set == {"number", "city"}


async def test_changing_a_shared_set_in_place_is_refused(make_db: DbFactory) -> None:
    _a, b, keys = await _loaded(make_db, count=2)
    doc, other = (Shared.objects.using(b)[k] for k in keys)
    shared = doc.model_fields_set
    before = set(shared)
    shared.add("name")  # already there: changes nothing, allowed
    shared.update({"name", "state"})
    shared.discard("uuid")  # not there: changes nothing, allowed
    for change in (
        lambda: shared.add("uuid"),
        lambda: shared.discard("name"),
        lambda: shared.remove("name"),
        lambda: shared.pop(),
        lambda: shared.clear(),
        lambda: shared.update({"uuid"}),
        lambda: shared.difference_update({"name"}),
        lambda: shared.intersection_update(set()),
        lambda: shared.symmetric_difference_update({"name"}),
    ):
        with pytest.raises(TypeError, match="shared"):
            change()
    with pytest.raises(TypeError, match="shared"):
        shared -= {"name"}
    assert doc.model_fields_set == before
    assert other.model_fields_set == before


async def test_copies_get_sets_of_their_own(make_db: DbFactory) -> None:
    _a, b, keys = await _loaded(make_db, count=1)
    doc = Shared.objects.using(b)[keys[0]]
    for clone in (
        copy.copy(doc),
        copy.deepcopy(doc),
        doc.model_copy(),
        doc.model_copy(update={"uuid": None}),
        pickle.loads(pickle.dumps(doc)),
    ):
        assert type(clone.model_fields_set) is set
        assert clone.model_fields_set >= doc.model_fields_set
        clone.model_fields_set.add("anything")  # its own: free to change
        assert "anything" not in doc.model_fields_set
    assert doc.caller is not None
    assert type(copy.deepcopy(doc.caller).model_fields_set) is set


async def test_variants_are_bounded(make_db: DbFactory) -> None:
    db = await make_db(Wide)
    objects = Wide.objects.using(db)
    names = [f"f{i}" for i in range(8)]
    subsets = [c for r in range(1, 9) for c in itertools.combinations(names, r)][: MAX_VARIANTS + 10]
    docs = [objects.add(dict.fromkeys(subset, 1)) for subset in subsets]
    kinds = [type(d.model_fields_set) for d in docs]
    assert kinds[:MAX_VARIANTS] == [SharedFieldsSet] * MAX_VARIANTS
    assert kinds[MAX_VARIANTS:] == [set] * 10  # past the bound: their own, as Pydantic made them
    assert all(d.model_fields_set == set(s) for d, s in zip(docs, subsets, strict=True))


class ExtraLoose(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)
    a: int = 0


class ExtraPlain(BaseModel):
    model_config = ConfigDict(extra="allow")
    a: int = 0


class Sub(BaseModel):
    v: int = 0


class Inner(BaseModel):
    a: int = 0
    sub: Sub


class Holder(Document):
    model_config = DocumentConfig(registry=registry)

    name: str = ""
    loose: ExtraLoose | None = None
    plain: ExtraPlain | None = None
    inner: Inner | None = None


class OwnSetattr(Document):
    model_config = DocumentConfig(registry=registry)

    name: str = ""
    state: str = ""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "state":
            BaseModel.__setattr__(self, name, value)  # around brainless_odm: no guard
        else:
            super().__setattr__(name, value)


async def test_extra_attributes_of_nested_models_unshare_first(make_db: DbFactory) -> None:
    db = await make_db(Holder)
    objects = Holder.objects.using(db)
    x = objects.add(name="x", loose=ExtraLoose(a=1), plain=ExtraPlain(a=1))
    y = objects.add(name="y", loose=ExtraLoose(a=2), plain=ExtraPlain(a=2))
    assert x.loose is not None
    assert y.loose is not None
    assert x.plain is not None
    assert y.plain is not None
    assert x.loose.model_fields_set is y.loose.model_fields_set
    x.loose.zzz = 5  # type: ignore[attr-defined]
    x.plain.zzz = 5  # type: ignore[attr-defined]
    assert x.loose.model_fields_set == {"a", "zzz"}
    assert x.plain.model_fields_set == {"a", "zzz"}
    assert y.loose.model_fields_set == {"a"}
    assert y.plain.model_fields_set == {"a"}


async def test_nested_models_built_without_a_required_field_are_refused(make_db: DbFactory) -> None:
    # model_construct() skips validation: Inner without its required "sub" would be stored as
    # {"a": 1}, which no node could load back. add() validates what a document holds.
    db = await make_db(Holder)
    with pytest.raises(ValidationError, match="sub"):
        Holder.objects.using(db).add(Holder(name="c", inner=Inner.model_construct(a=1)))
    assert len(Holder.objects.using(db)) == 0
    doc = Holder.objects.using(db).add(Holder(name="c", inner=Inner.model_construct(a=1, sub=Sub())))
    assert doc.inner is not None
    assert doc.inner.model_fields_set == {"a", "sub"}
    assert await db.flush() == 1


async def test_documents_with_their_own_setattr_keep_their_own_sets(make_db: DbFactory) -> None:
    db = await make_db(OwnSetattr)
    objects = OwnSetattr.objects.using(db)
    a = objects.add(name="a")
    b = objects.add(name="b")
    assert type(a.model_fields_set) is set
    assert a.model_fields_set is not b.model_fields_set
    a.state = "s"
    assert b.model_fields_set == {"name"}
