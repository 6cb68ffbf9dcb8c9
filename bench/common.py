"""What every implementation provides, and the small helpers the runner shares."""

from __future__ import annotations

import abc
import asyncio
import gc
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client as NATS

from bench.data import Doc

#: How long one propagation may take before the bench gives up on it.
PROPAGATION_TIMEOUT = 5.0


@dataclass(frozen=True)
class Context:
    """What an implementation gets to work with: two connections to the one server.

    ``nc_a`` is node A (writer), ``nc_b`` node B (cold loader, query node, propagation receiver).
    ``run_id`` keeps bucket names unique across bench runs against one server.
    """

    nc_a: NATS
    nc_b: NATS
    run_id: str
    #: Errors nats-py reported asynchronously (error_cb) on either connection, oldest first.
    errors: list[str] = field(default_factory=list)


class Reader(abc.ABC):
    """A node that loaded the whole collection and can answer queries on it."""

    @abc.abstractmethod
    def count(self) -> int:
        """Documents held in memory."""

    @abc.abstractmethod
    async def query_eq(self, queue: int) -> int:
        """Indexed equality on ``queue``; returns the number of hits."""

    @abc.abstractmethod
    async def query_range(self, lo: int, hi: int) -> int:
        """Inclusive range on the indexed ``score``; returns the number of hits."""

    @abc.abstractmethod
    async def query_scan(self, state: str) -> int:
        """Equality on the non-indexed ``state`` (a full scan); returns the number of hits."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the node (stop watching, release what it holds)."""


class Dataset(abc.ABC):
    """One implementation's copy of the collection: one fresh bucket (or namespace)."""

    @abc.abstractmethod
    async def prepare(self) -> None:
        """Untimed set-up before the write: create the bucket, start node A."""

    @abc.abstractmethod
    async def write(self, docs: Sequence[Doc]) -> None:
        """Store every document and return once all of them are durable (acknowledged)."""

    async def after_write(self) -> None:  # noqa: B027 - optional hook
        """Untimed tear-down after the write: stop node A, so it does not watch later workloads."""

    @abc.abstractmethod
    async def open_reader(self) -> Reader:
        """Cold-load the collection into a new node on ``nc_b``."""

    @abc.abstractmethod
    def propagation(self, reader: Reader) -> AbstractAsyncContextManager[PropagationRun]:
        """Set up node A and ``reader``'s (node B's) callback for changes made one at a time;
        tear them down on exit. The runner interleaves the implementations' changes."""

    @abc.abstractmethod
    async def drop(self) -> None:
        """Stop whatever still runs and delete the bucket(s)."""


class Implementation(abc.ABC):
    """A factory of datasets; one per measured implementation."""

    #: Short name used in tables and JSON (``raw``, ``brainlessdb``, ``odm``).
    name: str
    #: Writes are slow enough to skip at large N with ``--skip-slow``.
    slow_writes: bool = False

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    def dataset(self, tag: str) -> Dataset:
        """A dataset stored under a bucket/namespace derived from ``tag`` (unique per call)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release anything shared between datasets (meta buckets and the like)."""


async def connect(url: str, name: str, errors: list[str] | None = None) -> NATS:
    """A plain nats-py connection; the same options for all three implementations.

    Errors nats-py reports asynchronously go to ``errors`` (reported with the workload that was
    running) instead of a traceback on stderr."""
    sink = errors if errors is not None else []

    async def error_cb(exc: Exception) -> None:
        sink.append(f"{name}: {exc!r}")

    return await nats.connect(
        url,
        name=name,
        connect_timeout=2.0,
        max_reconnect_attempts=0,
        pending_size=64 * 1024 * 1024,
        error_cb=error_cb,
    )


def collect() -> None:
    """Full garbage collection, so one workload's garbage is not billed to the next."""
    gc.collect()
    gc.collect()


class GcClock:
    """Wall time spent in Python's cyclic garbage collector while :func:`timed` runs.

    Reported next to write and load times: an implementation that keeps what it writes or loads
    (the ODM keeps every document) makes the collector run passes over the whole heap, which the
    floor, keeping nothing, never does. ``last`` is the figure of the latest :func:`timed` call."""

    def __init__(self) -> None:
        self.active = False
        self.total = 0.0
        self.last = 0.0
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if not self.active:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started


GC_CLOCK = GcClock()


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    """Run ``fn`` once; return (seconds, its result). ``GC_CLOCK.last``: the GC's share of it."""
    collect()
    GC_CLOCK.total = 0.0
    GC_CLOCK.active = True
    t0 = time.perf_counter()
    try:
        result = await fn()
    finally:
        GC_CLOCK.active = False
        GC_CLOCK.last = GC_CLOCK.total
    return time.perf_counter() - t0, result


async def timed_each(fn: Callable[[Any], Awaitable[int]], args: Sequence[Any]) -> tuple[list[float], int]:
    """Call ``fn(arg)`` for every arg; return per-call seconds and the hits of the first call."""
    collect()
    times: list[float] = []
    hits = -1
    for arg in args:
        t0 = time.perf_counter()
        n = await fn(*arg) if isinstance(arg, tuple) else await fn(arg)
        times.append(time.perf_counter() - t0)
        if hits < 0:
            hits = n
    return times, hits


async def traced_bytes(fn: Callable[[], Awaitable[Any]]) -> tuple[int, Any]:
    """Bytes still allocated (tracemalloc) after ``fn`` returns, and its result."""
    collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = await fn()
        collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before, result


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class Waiter:
    """Hands the receive time of one awaited change from a callback to the measuring loop."""

    def __init__(self) -> None:
        self.key: str | None = None
        self._future: asyncio.Future[float] | None = None

    def expect(self, key: str) -> asyncio.Future[float]:
        self.key = key
        self._future = asyncio.get_running_loop().create_future()
        return self._future

    def seen(self, key: str) -> None:
        if key == self.key and self._future is not None and not self._future.done():
            self._future.set_result(time.perf_counter())


@dataclass
class PropagationRun:
    """One implementation set up for the propagation workload: ``change(i, key)`` changes ``key``
    on node A (awaitable or not) and node B's callback reports it to ``waiter``."""

    keys: Sequence[str]
    change: Callable[[int, str], Awaitable[Any] | None]
    waiter: Waiter

    async def one(self, i: int) -> float:
        """Change the ``i``-th key (cycling) and return the seconds until node B saw it."""
        key = self.keys[i % len(self.keys)]
        arrived = self.waiter.expect(key)
        t0 = time.perf_counter()
        pending = self.change(i, key)
        if pending is not None:
            await pending
        t1 = await asyncio.wait_for(arrived, PROPAGATION_TIMEOUT)
        return t1 - t0


async def quiesce(timeout: float = 60.0, window: float = 0.05, quiet_windows: int = 2) -> bool:
    """Wait until this process stops burning CPU in the background (a watcher replaying the
    bucket after a start, echoes of a flush...), so the next measurement is not billed for it.
    Quiet means under 20 % of one core for ``quiet_windows`` windows in a row."""
    deadline = time.perf_counter() + timeout
    streak = 0
    while time.perf_counter() < deadline:
        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(window)
        streak = streak + 1 if time.process_time() - c0 < 0.2 * (time.perf_counter() - w0) else 0
        if streak >= quiet_windows:
            return True
    return False


async def guarded(coro: Awaitable[Any], timeout: float, what: str, warnings: list[str]) -> None:
    """Await ``coro`` for at most ``timeout`` seconds; on a hang, note it and leave the task behind
    instead of hanging the whole bench (brainlessdb's stop() can wait forever on a nats-py KV watcher
    that is cancelled mid-replay)."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        warnings.append(f"{what} did not finish within {timeout:.0f} s; abandoned")
    elif task.exception() is not None:
        warnings.append(f"{what} failed: {task.exception()!r}")
