"""Found by a new-user review: computed fields, extra="allow", pickling, model_construct, a
subclass added to its parent's collection, reserved collection names and config typos."""

from __future__ import annotations

import pickle

import pytest
from helpers import DbFactory
from pydantic import ValidationError, computed_field

from brainless_odm import DefinitionError, Document, DocumentConfig, MemoryStore, Registry

REG = Registry()


class Order(Document):
    model_config = DocumentConfig(registry=REG, extra="forbid")
    qty: int = 1

    @computed_field  # type: ignore[prop-decorator]
    @property
    def double(self) -> int:
        return self.qty * 2


class Item(Document):
    model_config = DocumentConfig(registry=REG)
    n: int = 0
    name: str = ""


class VipItem(Item):
    model_config = DocumentConfig(registry=REG)
    level: int = 0


async def test_a_computed_field_is_not_stored_and_the_document_reads_back(make_db: DbFactory) -> None:
    """Stored, the computed value was an unknown member to an extra="forbid" reader: every node
    moved the document to the dead letters, and it was gone everywhere."""
    store = MemoryStore()
    a = await make_db(Order, store=store)
    doc = Order.objects.using(a).add(qty=3)
    await a.flush()
    entry = await store.bucket("test-order").get(doc.uuid or "")
    assert entry is not None
    assert b'"double"' not in entry.value
    b = await make_db(Order, store=store)
    assert Order.objects.using(b)[doc.uuid or ""].double == 6
    assert len(Order.objects.using(b)) == 1


def test_extra_allow_is_refused() -> None:
    with pytest.raises(DefinitionError, match="extra='allow'"):

        class Loose(Document):
            model_config = DocumentConfig(registry=Registry(), extra="allow")
            name: str = ""


async def test_an_unpickled_document_is_a_usable_detached_copy(make_db: DbFactory) -> None:
    db = await make_db(Item)
    objects = Item.objects.using(db)
    stored = objects.add(n=1, name="a")
    for original in (stored, Item(n=2)):
        copy = pickle.loads(pickle.dumps(original))
        assert copy.n == original.n
        assert copy.is_dirty
        copy.name = "changed"
        assert original.name != "changed"
    added = objects.add(pickle.loads(pickle.dumps(Item(n=5))))
    assert objects[added.uuid or ""].n == 5


async def test_add_validates_a_model_construct_document(make_db: DbFactory) -> None:
    db = await make_db(Item)
    objects = Item.objects.using(db)
    with pytest.raises(ValidationError):
        objects.add(Item.model_construct(n="abc"))
    assert len(objects) == 0
    doc = objects.add(Item.model_construct(n="5", name="x"))  # converted, as construction does
    assert doc.n == 5
    assert type(doc.n) is int


async def test_a_subclass_is_not_added_to_its_parents_collection(make_db: DbFactory) -> None:
    db = await make_db(Item, VipItem)
    with pytest.raises(TypeError, match=r"VipItem\.objects\.add"):
        Item.objects.using(db).add(VipItem(level=3))
    assert len(Item.objects.using(db)) == 0


def test_collection_names_starting_with_underscore_are_reserved() -> None:
    with pytest.raises(DefinitionError, match="reserved"):

        class Sneaky(Document):
            model_config = DocumentConfig(registry=Registry(), collection="_dead_letters")


def test_a_misspelt_config_key_is_an_error() -> None:
    with pytest.raises(DefinitionError, match="did you mean 'collection'"):

        class Typo(Document):
            model_config = DocumentConfig(registry=Registry(), colection="x")  # type: ignore[typeddict-unknown-key]
