"""The random-program model test (see ``sync_model.py``) on a ``MemoryStore``: three nodes in one
process, whose watches can also go deaf and catch up; Hypothesis shrinks a failure to a short
program. ``MODEL_EXAMPLES=20000 MODEL_STEPS=100`` for a long hunt."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sync_model import POISON, STEPS, Ears, Item, World, run_program, steps

from brainless_odm import Database, MemoryStore
from brainless_odm.store.base import Entry, Operation

EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "300"))
BUCKET = "model-item"


class MemoryBackend:
    def __init__(self) -> None:
        self.store = MemoryStore()

    async def ready(self, world: World) -> None:
        bucket = self.store.bucket(BUCKET)
        original = bucket._append

        def recording(
            key: str, value: bytes, op: Operation, reason: str | None = None, removes: int | None = None
        ) -> int:
            rev = original(key, value, op, reason, removes)
            world.history.append(Entry(key, value, rev, op, reason, removes))
            return rev

        bucket._append = recording  # type: ignore[method-assign]

    def database(self, node: int) -> Database:
        return Database(
            self.store, namespace="model", location=f"n{node}", flush_interval=60, documents=[Item]
        )

    async def ears(self, db: Database, old: Ears | None) -> Ears | None:
        bucket = self.store.bucket(BUCKET)
        queues: list[Any] = []
        for _ in range(100):
            queues = [q for q in bucket._watchers if not isinstance(q, Ears)]
            if queues:
                break
            await asyncio.sleep(0)
        assert len(queues) == 1, "the node's watch did not start"
        bucket._watchers.discard(queues[0])
        if old is not None:
            bucket._watchers.discard(old)
        ears = Ears(queues[0])
        bucket._watchers.add(ears)  # type: ignore[arg-type]
        return ears

    async def last_revision(self) -> int:
        return self.store.bucket(BUCKET)._revision

    async def poison(self, key: str) -> None:
        await self.store.bucket(BUCKET).put_raw(key, POISON)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=st.lists(steps, min_size=STEPS // 2, max_size=STEPS))
async def test_random_programs_lose_nothing_and_converge(program: list[tuple[Any, ...]]) -> None:
    await run_program(World(MemoryBackend()), program)
