"""The random-program model test (see ``tests/unit/sync_model.py``) on a real nats-server: three nodes,
each on its own connection, and a fourth connection recording every version the bucket stores (an
ordered consumer from the first revision). Fewer programs than on the ``MemoryStore`` (a program costs
a bucket and three database starts); the watches cannot be made deaf here, the server's timing
decides how far behind they are. ``MODEL_NATS_EXAMPLES`` for more."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from sync_model import NODES, POISON, STEPS, Ears, Item, World, run_program, steps

from brainless_odm import Database
from brainless_odm.store.base import BucketConfig, Entry, Operation
from brainless_odm.store.nats import REMOVES_HEADER, NatsKVStore, connect

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("MODEL_NATS_EXAMPLES", "60"))
_OPERATIONS = {"DEL": Operation.DELETE, "PURGE": Operation.PURGE}


class NatsBackend:
    def __init__(self, clients: list[Client], namespace: str) -> None:
        self.clients = clients
        self.namespace = namespace
        self.bucket = f"{namespace}-item"
        self.stream = f"KV_{self.bucket}"
        self.recorder: Any = None

    def database(self, node: int) -> Database:
        return Database(
            self.clients[node],
            namespace=self.namespace,
            location=f"n{node}",
            flush_interval=60,
            documents=[Item],
        )

    async def ears(self, db: Database, old: Ears | None) -> Ears | None:
        return None

    async def prepare(self) -> None:
        """The bucket, before any node opens it, keeping 64 revisions a key: with one, a version
        replaced before the recorder read it was gone from the stream (its consumer falls behind
        under load), and the checks then missed a write that had been stored. The nodes open it
        as it is (with a warning about the history); they read only the latest revisions."""
        store = NatsKVStore(self.clients[NODES], namespace=self.namespace)
        await store.open_bucket(self.bucket, BucketConfig(history=64))
        await store.close()  # its objects only: the bucket stays

    async def ready(self, world: World) -> None:
        prefix = f"$KV.{self.bucket}."

        async def record(msg: Msg) -> None:
            headers = msg.headers or {}
            op = _OPERATIONS.get(headers.get("KV-Operation", ""), Operation.PUT)
            seq = msg.metadata.sequence.stream
            removes = headers.get(REMOVES_HEADER)
            key = msg.subject[len(prefix) :]
            world.history.append(Entry(key, msg.data, seq, op, None, int(removes) if removes else None))

        js = self.clients[NODES].jetstream()
        self.recorder = await js.subscribe(
            prefix + ">",
            stream=self.stream,
            cb=record,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )

    async def last_revision(self) -> int:
        info = await self.clients[NODES].jetstream().stream_info(self.stream)
        return int(info.state.last_seq)

    async def poison(self, key: str) -> None:
        await self.clients[NODES].jetstream().publish(f"$KV.{self.bucket}.{key}", POISON)

    async def close(self) -> None:
        if self.recorder is not None:
            await self.recorder.unsubscribe()
        with contextlib.suppress(Exception):
            await self.clients[NODES].jetstream().delete_key_value(self.bucket)


@pytest.fixture
async def clients(nats_url: str) -> AsyncIterator[list[Client]]:
    """A connection per node, and one for the recorder."""
    made = [await connect(nats_url) for _ in range(NODES + 1)]
    yield made
    for nc in made:
        await nc.close()


_programs = itertools.count(1)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(program=st.lists(steps, min_size=STEPS // 2, max_size=STEPS))
async def test_random_programs_on_nats_lose_nothing_and_converge(
    clients: list[Client], brainless_namespace: str, program: list[tuple[Any, ...]]
) -> None:
    backend = NatsBackend(clients, f"{brainless_namespace}-{next(_programs)}")
    try:
        await run_program(World(backend), program)
    finally:
        await backend.close()
