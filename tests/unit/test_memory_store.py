"""MemoryStore's own back doors and its NATS semantics where no server is needed to check them.

What both stores must do alike is tested against both in ``tests/integration/test_nats_store.py``.
"""

from __future__ import annotations

import pytest

from brainless_odm.exceptions import InvalidKey
from brainless_odm.store.base import HEADER_ROOM, BucketConfig, WriteOp
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


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("storage", "bogus"),  # NATS: a ValueError before anything is sent; memory took it
        ("storage", "FILE"),
        ("history", 0),  # NATS: unlimited history; memory kept one revision
        ("history", -1),
        ("history", 65),
        ("history", True),
        ("replicas", 0),
        ("replicas", -1),  # nats-server: "replicas count cannot be negative"
        ("replicas", 6),  # nats-server: "maximum replicas is 5"
        ("ttl", -1.0),  # nats-server: "max age can not be negative"; memory expired everything
        ("ttl", 0),
        ("ttl", 0.05),  # nats-server: "max age needs to be >= 100ms"
        ("ttl", float("nan")),
        ("ttl", float("inf")),
        ("ttl", 1e10),  # over an int64 of nanoseconds: the server cannot read it
        ("ttl", "1h"),
        ("max_value_size", 0),
        ("max_value_size", -5),  # NATS: a stream that takes no value; memory: none either
        ("max_value_size", 2**31),  # the stream's max_msg_size is an int32
        ("description", "é" * 2049),  # nats-server: "maximum allowed is 4096" (bytes)
        ("extra", None),
    ],
)
def test_bucket_config_refuses_what_nats_refuses(setting: str, value: object) -> None:
    """Settings are checked once, when a BucketConfig is made, for every store: a value nats-server
    refuses (or reads differently) never reaches a MemoryStore, which used to take all of these."""
    with pytest.raises(ValueError, match=f"^bucket {setting} must be "):
        BucketConfig(**{setting: value})  # type: ignore[arg-type]


def test_bucket_config_limits_are_inclusive() -> None:
    ok = BucketConfig(
        history=64, replicas=5, ttl=0.1, max_value_size=2**31 - 1 - HEADER_ROOM, description="é" * 2048
    )
    assert (ok.history, ok.replicas, ok.ttl) == (64, 5, 0.1)
    assert BucketConfig(ttl=1, storage="memory").ttl == 1


async def test_replicas_and_storage_are_accepted_and_kept_in_memory() -> None:
    """How the server keeps a bucket is not something reads and writes can see: memory takes every
    valid ``replicas`` and ``storage`` (one copy, in memory), so a class declared for a cluster runs
    in memory unchanged. A single nats-server refuses replicas > 1 (tests/integration)."""
    bucket = await MemoryStore().open_bucket("r3", BucketConfig(replicas=3, storage="file"))
    assert bucket.config.replicas == 3
    assert await bucket.write([WriteOp("k", b"v")]) == [1]
