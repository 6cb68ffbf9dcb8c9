"""Raw nats-py: the physical floor every other implementation is compared against.

* write: one JetStream publish per document to ``$KV.<bucket>.<uuid>``, pipelined by hand with a
  bounded number in flight (not nats-py's ``publish_async``, which hangs when an ack is an error,
  nats.py #985); done when every ack arrived and none is an error.
* load: an ordered push consumer with ``DeliverPolicy.LAST_PER_SUBJECT`` and orjson decoding into a
  ``dict[uuid, dict]``, finished when the stream sequence taken before starting is delivered.
* queries: what a hand-written program would keep next to that dict — a ``queue → [doc]`` dict, a
  ``score``-sorted list searched with ``bisect``, and a list comprehension for the scan. They are
  built after the load, outside the timed region.
* propagation: ``kv.put`` on node A, an ordered consumer with ``DeliverPolicy.NEW`` on node B.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy, KeyValueConfig
from nats.js.errors import BucketNotFoundError, NotFoundError

from bench.common import Dataset, Implementation, PropagationRun, Reader, Waiter
from bench.data import Doc

#: Publishes in flight at once. On a 2-core box 128 to 100k are within noise (~0.5 s for 20k docs).
WINDOW = 1024
ACK_TIMEOUT = 30.0
#: Keys are UUID1s with a fixed node, as the ODM makes them (an explicit node skips libuuid's
#: ``uuid_generate_time_safe``, which costs ~9 µs a call here).
NODE = 0x0B_E0_C4_00_00_01


class PublishError(RuntimeError):
    """JetStream refused a publish (or nobody answered it)."""


async def pipelined_publish(
    nc: NATS,
    messages: Iterable[tuple[str, bytes]],
    window: int = WINDOW,
    headers: Callable[[int], dict[str, str]] | None = None,
) -> int:
    """Publish every (subject, payload) to JetStream with at most ``window`` unacknowledged; return
    how many were acknowledged. Raises :class:`PublishError` on the first error ack. ``headers``:
    the headers of the i-th message (``python -m bench.floor``; the floor itself sends none)."""
    loop = asyncio.get_running_loop()
    inbox = nc.new_inbox()
    state: dict[str, Any] = {"inflight": 0, "acked": 0, "sent": -1, "error": None}
    room: asyncio.Future[None] | None = None
    done: asyncio.Future[None] = loop.create_future()

    async def on_ack(msg: Msg) -> None:
        nonlocal room
        data = msg.data
        if (not data or b'"error"' in data) and state["error"] is None:
            state["error"] = data or repr(msg.headers).encode()
        state["inflight"] -= 1
        state["acked"] += 1
        if room is not None and not room.done() and state["inflight"] <= window // 2:
            room.set_result(None)
        if state["acked"] == state["sent"] and not done.done():
            done.set_result(None)

    sub = await nc.subscribe(inbox + ".*", cb=on_ack)
    try:
        sent = 0
        for subject, payload in messages:
            if state["inflight"] >= window:
                room = loop.create_future()
                await asyncio.wait_for(room, ACK_TIMEOUT)
                room = None
            await nc.publish(
                subject, payload, reply=f"{inbox}.{sent}", headers=headers(sent) if headers else None
            )
            state["inflight"] += 1
            sent += 1
        state["sent"] = sent
        if state["acked"] < sent:
            await asyncio.wait_for(done, ACK_TIMEOUT)
    finally:
        await sub.unsubscribe()
    if state["error"] is not None:
        raise PublishError(f"JetStream rejected a publish: {state['error']!r}")
    return int(state["acked"])


class RawReader(Reader):
    def __init__(self, docs: dict[str, Doc]) -> None:
        self.docs = docs
        self._by_queue: dict[int, list[Doc]] = {}
        self._scores: list[int] = []
        self._by_score: list[Doc] = []

    def build_indexes(self) -> None:
        for doc in self.docs.values():
            self._by_queue.setdefault(doc["queue"], []).append(doc)
        ordered = sorted(self.docs.values(), key=lambda d: d["score"])
        self._by_score = ordered
        self._scores = [d["score"] for d in ordered]

    def count(self) -> int:
        return len(self.docs)

    async def query_eq(self, queue: int) -> int:
        return len(list(self._by_queue.get(queue, ())))

    async def query_range(self, lo: int, hi: int) -> int:
        i = bisect.bisect_left(self._scores, lo)
        j = bisect.bisect_right(self._scores, hi)
        return len(self._by_score[i:j])

    async def query_scan(self, state: str) -> int:
        return len([d for d in self.docs.values() if d["state"] == state])

    async def close(self) -> None:
        self.docs = {}


class RawDataset(Dataset):
    def __init__(self, ctx_nc_a: NATS, ctx_nc_b: NATS, bucket: str) -> None:
        self.nc_a = ctx_nc_a
        self.nc_b = ctx_nc_b
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.prefix = f"$KV.{bucket}."
        self.keys: list[str] = []

    async def prepare(self) -> None:
        js = self.nc_a.jetstream()
        await js.create_key_value(KeyValueConfig(bucket=self.bucket, history=1))

    async def write(self, docs: Sequence[Doc]) -> None:
        prefix = self.prefix
        keys = self.keys = []
        dumps = orjson.dumps
        uuid1 = uuid.uuid1

        def messages() -> Iterable[tuple[str, bytes]]:
            for doc in docs:
                key = str(uuid1(node=NODE))
                keys.append(key)
                yield prefix + key, dumps(doc)

        await pipelined_publish(self.nc_a, messages())

    async def load_docs(self) -> dict[str, Doc]:
        js = self.nc_b.jetstream()
        info = await js.stream_info(self.stream)
        last_seq = info.state.last_seq
        docs: dict[str, Doc] = {}
        if info.state.messages == 0:
            return docs
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        cut = len(self.prefix)
        loads = orjson.loads

        async def on_msg(msg: Msg) -> None:
            headers = msg.headers
            if headers is None or "KV-Operation" not in headers:
                docs[msg.subject[cut:]] = loads(msg.data)
            else:
                docs.pop(msg.subject[cut:], None)
            # reply: $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
            if int(msg.reply.split(".")[5]) >= last_seq and not done.done():
                done.set_result(None)

        sub = await js.subscribe(
            self.prefix + ">",
            stream=self.stream,
            cb=on_msg,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT),
        )
        try:
            await asyncio.wait_for(done, 120)
        finally:
            await sub.unsubscribe()
        return docs

    async def open_reader(self) -> Reader:
        return RawReader(await self.load_docs())

    @contextlib.asynccontextmanager
    async def propagation(self, reader: Reader) -> AsyncIterator[PropagationRun]:
        assert isinstance(reader, RawReader)
        js_a = self.nc_a.jetstream()
        js_b = self.nc_b.jetstream()
        kv = await js_a.key_value(self.bucket)
        waiter = Waiter()
        cut = len(self.prefix)

        async def on_msg(msg: Msg) -> None:
            waiter.seen(msg.subject[cut:])

        sub = await js_b.subscribe(
            self.prefix + ">",
            stream=self.stream,
            cb=on_msg,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
        )
        docs = reader.docs

        async def change(i: int, key: str) -> None:
            doc = dict(docs[key])
            doc["priority"] = (doc["priority"] + 1) % 10
            await kv.put(key, orjson.dumps(doc))

        try:
            yield PropagationRun(self.keys, change, waiter)
        finally:
            await sub.unsubscribe()

    async def drop(self) -> None:
        with contextlib.suppress(BucketNotFoundError, NotFoundError):
            await self.nc_a.jetstream().delete_key_value(self.bucket)


class RawImplementation(Implementation):
    name = "raw"

    def dataset(self, tag: str) -> RawDataset:
        return RawDataset(self.ctx.nc_a, self.ctx.nc_b, f"bench-raw-{self.ctx.run_id}-{tag}")
