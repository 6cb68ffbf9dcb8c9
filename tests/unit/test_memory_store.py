"""MemoryStore's own back doors and its NATS semantics where no server is needed to check them.

What both stores must do alike is tested against both in ``tests/integration/test_nats_store.py``.
"""

from __future__ import annotations

import pytest

from brainless_odm.exceptions import InvalidKey
from brainless_odm.store.base import HEADER_ROOM, BucketConfig
from brainless_odm.store.memory import MemoryStore


async def test_put_raw_and_purge_check_the_key() -> None:
    bucket = await MemoryStore().open_bucket("b", BucketConfig())
    for key in ("a..b", "a b", "", "k" * 1025):
        with pytest.raises(InvalidKey):
            await bucket.put_raw(key, b"v")
        with pytest.raises(InvalidKey):
            await bucket.purge(key)
    assert (await bucket.load()).revision == 0


async def test_max_value_size_is_the_configured_one() -> None:
    # No server whose max payload would cap it; unset, it is what a NATS bucket takes by default.
    store = MemoryStore()
    assert (await store.open_bucket("big", BucketConfig(max_value_size=4 << 20))).max_value_size == 4 << 20
    assert (await store.open_bucket("default", BucketConfig())).max_value_size == (1 << 20) - HEADER_ROOM
