"""MemoryStore's own back doors and its NATS semantics where no server is needed to check them.

What both stores must do alike is tested against both in ``tests/integration/test_nats_store.py``.
"""

from __future__ import annotations

import pytest

from brainless_odm.exceptions import InvalidKey
from brainless_odm.store.base import BucketConfig
from brainless_odm.store.memory import MemoryStore


async def test_put_raw_and_purge_check_the_key() -> None:
    bucket = await MemoryStore().open_bucket("b", BucketConfig())
    for key in ("a..b", "a b", "", "k" * 1025):
        with pytest.raises(InvalidKey):
            await bucket.put_raw(key, b"v")
        with pytest.raises(InvalidKey):
            await bucket.purge(key)
    assert (await bucket.load()).revision == 0
