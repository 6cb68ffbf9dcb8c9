"""``python -m bench.floor``: the write floor with brainless_odm's guarantees added one at a time.

The bench's floor publishes bare ``PUB`` messages and keeps nothing. An ODM write also asks the
server for a compare-and-set (``Nats-Expected-Last-Subject-Sequence``) and for deduplication
(``Nats-Msg-Id``, so a retry after a lost ack cannot apply twice), and the writing node watches its
own bucket, so every write comes back to it once more. This runs, against its own nats-server and
at one N, the floor, the floor with those headers, the floor with the headers and a watch of the
bucket on the writing connection (through nats-py's public API), and the ODM's write + flush; it
reports the wall time and the CPU time of the client (this process) and of the server for each,
best of ``--reps``. It says how much of the gap between the ODM and the floor the guarantees cost
and how much is the ODM's own work (validation, indexes, change tracking), which
docs/performance.md cannot tell apart.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy, KeyValueConfig

from bench import data
from bench.common import Context, collect, connect, quiesce
from bench.impl_odm import OdmImplementation
from bench.impl_raw import NODE, pipelined_publish
from brainless_odm.testing import NatsServer

VARIANTS = ("floor", "+ CAS and msg-id headers", "+ own watch", "brainless_odm")


def process_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``), else ``None``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _nothing() -> None:
    pass


async def _raw_variant(
    nc: NATS, bucket: str, docs: list[data.Doc], headers: bool, watch: bool
) -> Callable[[], Awaitable[None]]:
    """Create ``bucket`` and return the timed part of one raw variant."""
    js = nc.jetstream()
    await js.create_key_value(KeyValueConfig(bucket=bucket, history=1))
    prefix = f"$KV.{bucket}."
    messages = [(prefix + str(uuid.uuid1(node=NODE)), orjson.dumps(d)) for d in docs]
    run_id = uuid.uuid4().hex

    def cas_and_id(i: int) -> dict[str, str]:
        return {"Nats-Msg-Id": f"{run_id}.{i}", "Nats-Expected-Last-Subject-Sequence": "0"}

    async def timed() -> None:
        seen = 0
        all_seen = asyncio.get_running_loop().create_future()

        async def echo(_msg: Msg) -> None:
            nonlocal seen
            seen += 1
            if seen == len(messages) and not all_seen.done():
                all_seen.set_result(None)

        sub = None
        if watch:
            sub = await js.subscribe(
                prefix + ">",
                stream=f"KV_{bucket}",
                cb=echo,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
            )
        try:
            await pipelined_publish(nc, messages, headers=cas_and_id if headers else None)
            if sub is not None:
                await asyncio.wait_for(all_seen, 60)
        finally:
            if sub is not None:
                await sub.unsubscribe()
            await js.delete_key_value(bucket)

    return timed


async def main(args: argparse.Namespace) -> dict[str, list[tuple[float, float | None, float]]]:
    docs = data.generate(args.n)
    runs: dict[str, list[tuple[float, float | None, float]]] = {v: [] for v in VARIANTS}
    async with NatsServer() as server:
        nc_a = await connect(server.url, "floor-a")
        nc_b = await connect(server.url, "floor-b")
        ctx = Context(nc_a, nc_b, uuid.uuid4().hex[:6])
        try:
            for rep in range(args.reps):
                for i, variant in enumerate(VARIANTS):
                    bucket = f"floor-{ctx.run_id}-{rep}-{i}"
                    fn: Callable[[], Awaitable[None]]
                    cleanup: Callable[[], Awaitable[None]] = _nothing
                    if variant == "brainless_odm":
                        ds = OdmImplementation(ctx).dataset(f"floor-{rep}")
                        await ds.prepare()
                        fn, cleanup = functools.partial(ds.write, docs), ds.drop
                    else:
                        fn = await _raw_variant(nc_a, bucket, docs, headers=i >= 1, watch=i >= 2)
                    collect()
                    await quiesce()
                    server_cpu = process_cpu(server.pid)
                    client_cpu = time.process_time()
                    t0 = time.perf_counter()
                    await fn()
                    wall = time.perf_counter() - t0
                    client = time.process_time() - client_cpu
                    after = process_cpu(server.pid)
                    server_used = None if after is None or server_cpu is None else after - server_cpu
                    runs[variant].append((wall, server_used, client))
                    await cleanup()
        finally:
            await nc_a.close()
            await nc_b.close()
    return runs


def table(runs: dict[str, list[tuple[float, float | None, float]]], n: int) -> str:
    best = {v: min(r, key=lambda x: x[0]) for v, r in runs.items() if r}
    floor = best["floor"][0]
    same_work = best["+ own watch"][0]
    rows = [
        f"| write {n:,} documents | wall | server CPU | client CPU | / floor | / floor with the guarantees |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for v, (wall, server, client) in best.items():
        srv = "n/a" if server is None else f"{server:.3f} s"
        rows.append(
            f"| {v} | {wall:.3f} s | {srv} | {client:.3f} s | {wall / floor:.2f}× | {wall / same_work:.2f}× |"
        )
    return "\n".join(rows)


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    p.add_argument("-n", type=int, default=20_000, help="documents (default 20000)")
    p.add_argument("--reps", type=int, default=5, help="repetitions; the best is shown (default 5)")
    args = p.parse_args()
    print(table(asyncio.run(main(args)), args.n))


if __name__ == "__main__":
    cli()
