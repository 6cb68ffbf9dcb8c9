"""Document keys: UUID1 with a node part derived from the database's location."""

from __future__ import annotations

import uuid

import pytest
from helpers import DbFactory
from pydantic import ValidationError

from brainless_odm import Document, DocumentConfig, Registry, UniqueViolation

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Item(Base):
    n: int = 0


def node_of(key: str) -> int:
    u = uuid.UUID(key)
    assert u.version == 1
    return u.node


async def test_uuid_is_none_before_add_and_a_uuid1_after(make_db: DbFactory) -> None:
    db = await make_db(Item)
    item = Item(n=1)
    assert item.uuid is None
    stored = Item.objects.using(db).add(item)
    assert stored is item
    assert item.uuid is not None
    assert uuid.UUID(item.uuid).version == 1


async def test_node_part_comes_from_the_location(make_db: DbFactory) -> None:
    a1 = await make_db(Item, location="prague-1")
    a2 = await make_db(Item, location="prague-1")
    b = await make_db(Item, location="brno-1")
    n_a1 = node_of(Item.objects.using(a1).add(n=1).uuid or "")
    n_a2 = node_of(Item.objects.using(a2).add(n=2).uuid or "")
    n_b = node_of(Item.objects.using(b).add(n=3).uuid or "")
    assert n_a1 == n_a2
    assert n_a1 != n_b
    # the node of a UUID1 made from a location must not be the host's MAC address
    assert n_a1 != uuid.getnode() or n_b != uuid.getnode()


async def test_keys_are_unique_across_100k_adds(make_db: DbFactory) -> None:
    db = await make_db(Item, flush_interval=60)
    objects = Item.objects.using(db)
    keys = {objects.add(n=i).uuid for i in range(100_000)}
    assert len(keys) == 100_000
    assert len(objects) == 100_000
    for doc in list(objects):  # never written: deleting them keeps teardown's flush short
        objects.delete(doc)


async def test_explicit_uuid_is_kept(make_db: DbFactory) -> None:
    db = await make_db(Item)
    item = Item.objects.using(db).add(uuid="my-key.1", n=1)
    assert item.uuid == "my-key.1"
    assert Item.objects.using(db)["my-key.1"] is item
    await db.flush()


async def test_explicit_uuid_already_used_is_rejected(make_db: DbFactory) -> None:
    db = await make_db(Item)
    Item.objects.using(db).add(uuid="dup", n=1)
    with pytest.raises(UniqueViolation):
        Item.objects.using(db).add(uuid="dup", n=2)
    assert Item.objects.using(db)["dup"].n == 1


@pytest.mark.parametrize("bad", ["a b", ".x", "x.", "a..b", "a*b", "a>b", "", "é"])
def test_invalid_explicit_uuid_is_a_validation_error(bad: str) -> None:
    with pytest.raises(ValidationError):
        Item(uuid=bad)


@pytest.mark.parametrize("good", ["abc", "a.b.c", "A-Z_0=9/x", str(uuid.uuid4())])
def test_valid_explicit_uuids(good: str) -> None:
    assert Item(uuid=good).uuid == good


async def test_uuid_fields_follow_the_clock_across_a_time_mid_rollover(
    make_db: DbFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The part after time_low is reused until ts >> 32 changes (every 429 s): check both sides."""
    import brainless_odm.database as database_module

    db = await make_db(Item)
    epoch = 0x01B21DD213814000  # 1582-10-15 in 100 ns ticks before the Unix epoch
    rollover = ((epoch + 1_700_000_000 * 10_000_000) | 0xFFFFFFFF) + 1  # a tick where ts >> 32 steps
    seen = []
    for ts in (rollover - 2, rollover - 1, rollover, rollover + 1, rollover + (1 << 48)):
        monkeypatch.setattr(database_module.time, "time_ns", lambda ts=ts: (ts - epoch) * 100)
        u = uuid.UUID(db.new_uuid())
        assert (u.version, u.time) == (1, ts)
        seen.append((u.clock_seq, u.node))
    assert len(set(seen)) == 1
