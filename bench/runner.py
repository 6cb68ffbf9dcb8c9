"""Runs every workload for every implementation and size, in one process against one server."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import assign, data
from bench.common import (
    GC_CLOCK,
    Dataset,
    Implementation,
    PropagationRun,
    Reader,
    collect,
    guarded,
    median,
    percentile,
    quiesce,
    timed,
    traced_bytes,
)
from bench.impl_raw import RawReader

log = logging.getLogger("bench")

WORKLOADS = ("write", "load", "query", "propagation", "memory", "assign")
#: Workloads that need a cold-loaded node B (the load itself is always measured for them).
READER_WORKLOADS = frozenset({"load", "query", "propagation", "memory"})
CLOSE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Plan:
    """What to run: sizes, workloads, and how often to repeat the short ones."""

    sizes: Sequence[int]
    workloads: Sequence[str] = WORKLOADS
    skip_slow: bool = False
    slow_from: int = 50_000
    quick: bool = False

    def write_repeats(self, n: int) -> int:
        return 1 if self.quick or n > 20_000 else 3

    def load_repeats(self, n: int) -> int:
        if self.quick:
            return 2
        # Three at 100k too: the load-linearity target compares its median with 10k's, and a median
        # of two is a mean, which one slow repetition on a shared machine decides.
        return 5 if n <= 1_000 else 3

    def query_repeats(self, n: int) -> tuple[int, int, int]:
        """Repetitions of the equality, range and scan queries."""
        if self.quick:
            return 50, 20, 5
        return (200, 50, 21) if n <= 20_000 else (100, 30, 7)

    @property
    def propagation_updates(self) -> int:
        return 50 if self.quick else 300

    propagation_warmup: int = 10

    @property
    def assign_ops(self) -> int:
        return 20_000 if self.quick else 200_000


@dataclass
class Cell:
    """Everything measured for one implementation at one size."""

    impl: str
    n: int
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    skipped: str | None = None


async def _close(reader: Reader, cell: Cell) -> None:
    # Let the node finish starting first: brainlessdb's start() returns before its watcher has
    # subscribed, and a nats-py KV watcher cancelled mid-subscribe leaks a consumer whose callback
    # then times out on every message (and keeps a core busy) for the rest of the run.
    await quiesce()
    await guarded(reader.close(), CLOSE_TIMEOUT, f"{cell.impl} reader stop", cell.warnings)


async def _drop(ds: Dataset, cell: Cell) -> None:
    await guarded(ds.drop(), CLOSE_TIMEOUT, f"{cell.impl} cleanup", cell.warnings)


class _Lane:
    """One implementation's state while a size is being measured."""

    def __init__(self, impl: Implementation, n: int) -> None:
        self.impl = impl
        self.cell = Cell(impl.name, n)
        self.ds: Dataset | None = None
        self.reader: Reader | None = None
        self.failed = False
        self.errors_seen = len(impl.ctx.errors)

    def fail(self, phase: str, exc: BaseException) -> None:
        log.debug("%s %s failed", self.impl.name, phase, exc_info=exc)
        self.cell.warnings.append(f"{phase} failed: {exc!r}; later workloads skipped")
        self.failed = True


async def _step(lanes: Sequence[_Lane], phase: str, fn: Callable[[_Lane], Awaitable[None]]) -> None:
    """Run ``fn`` for every lane still going, in order; a failure ends only that lane."""
    for lane in lanes:
        if lane.failed:
            continue
        try:
            await fn(lane)
        except Exception as exc:
            lane.fail(phase, exc)


async def run_size(
    impls: Sequence[Implementation], n: int, docs: Sequence[data.Doc], plan: Plan
) -> list[Cell]:
    """Measure every implementation at one size.

    Repetitions are interleaved (rep 1 of each implementation, then rep 2 of each...) so a burst of
    load from other tenants of this machine hits all of them alike and the ratios hold."""
    wants = set(plan.workloads)
    lanes = [_Lane(impl, n) for impl in impls]
    for lane in lanes:
        if plan.skip_slow and lane.impl.slow_writes and n >= plan.slow_from:
            lane.cell.skipped = "--skip-slow"
            lane.failed = True
    live = [lane for lane in lanes if not lane.failed]
    writes: dict[str, list[float]] = {lane.impl.name: [] for lane in lanes}
    write_gc: dict[str, list[float]] = {lane.impl.name: [] for lane in lanes}

    # write: every repetition into a fresh bucket; the last one stays for the other workloads.
    async def write(lane: _Lane) -> None:
        if lane.ds is not None:
            await _drop(lane.ds, lane.cell)
        lane.ds = lane.impl.dataset(f"{n}-{len(writes[lane.impl.name])}")
        await lane.ds.prepare()
        await quiesce()
        seconds, _ = await timed(lambda: lane.ds.write(docs))  # type: ignore[union-attr]
        writes[lane.impl.name].append(seconds)
        write_gc[lane.impl.name].append(GC_CLOCK.last)
        await lane.ds.after_write()
        await quiesce()

    try:
        for _ in range(plan.write_repeats(n) if "write" in wants else 1):
            await _step(live, "write", write)
        if "write" in wants:
            for lane in live:
                if writes[lane.impl.name]:
                    lane.cell.metrics["write_s"] = median(writes[lane.impl.name])
                    lane.cell.metrics["write_runs"] = writes[lane.impl.name]
                    lane.cell.metrics["write_gc_s"] = median(write_gc[lane.impl.name])
        if wants & READER_WORKLOADS:
            await _measure_readers(live, n, plan, wants)
    finally:
        for lane in lanes:
            if lane.reader is not None:
                await _close(lane.reader, lane.cell)
            if lane.ds is not None:
                await _drop(lane.ds, lane.cell)
            errors = lane.impl.ctx.errors[lane.errors_seen :]
            if errors:
                lane.cell.warnings.append(f"{len(errors)} asynchronous nats-py error(s), first: {errors[0]}")
    return [lane.cell for lane in lanes]


async def _time_query(lane: _Lane, *, name: str, arg: tuple[Any, ...], times: dict[str, list[float]]) -> None:
    fn = getattr(lane.reader, f"query_{name}")
    t0 = time.perf_counter()
    hits = await fn(*arg)
    times[lane.impl.name].append(time.perf_counter() - t0)
    lane.cell.metrics.setdefault(f"{name}_hits", hits)


async def _measure_readers(live: Sequence[_Lane], n: int, plan: Plan, wants: set[str]) -> None:
    if "memory" in wants:

        async def memory(lane: _Lane) -> None:
            assert lane.ds is not None
            held, reader = await traced_bytes(lane.ds.open_reader)
            lane.cell.metrics["mem_bytes_per_doc"] = held / n
            await _close(reader, lane.cell)
            await quiesce()

        await _step(live, "memory", memory)

    loads: dict[str, list[float]] = {lane.impl.name: [] for lane in live}
    load_gc: dict[str, list[float]] = {lane.impl.name: [] for lane in live}

    async def load(lane: _Lane) -> None:
        assert lane.ds is not None
        if lane.reader is not None:
            reader, lane.reader = lane.reader, None
            await _close(reader, lane.cell)
            await quiesce()
        seconds, lane.reader = await timed(lane.ds.open_reader)
        loads[lane.impl.name].append(seconds)
        load_gc[lane.impl.name].append(GC_CLOCK.last)

    for _ in range(plan.load_repeats(n)):
        await _step(live, "load", load)
    for lane in live:
        if lane.failed or lane.reader is None:
            continue
        m = lane.cell.metrics
        m["load_s"] = median(loads[lane.impl.name])
        m["load_runs"] = loads[lane.impl.name]
        m["load_gc_s"] = median(load_gc[lane.impl.name])
        m["loaded"] = lane.reader.count()
        if lane.reader.count() != n:
            lane.cell.warnings.append(f"loaded {lane.reader.count()} documents, expected {n}")
        if isinstance(lane.reader, RawReader):
            lane.reader.build_indexes()
    await quiesce()

    if "query" in wants:
        eq_n, range_n, scan_n = plan.query_repeats(n)
        for name, args in (
            ("eq", [(v,) for v in data.eq_values(eq_n)]),
            ("range", data.range_bounds(range_n)),
            ("scan", [(data.SCAN_STATE,)] * scan_n),
        ):
            times: dict[str, list[float]] = {lane.impl.name: [] for lane in live}
            collect()
            for arg in args:
                await _step(
                    live, f"{name} query", functools.partial(_time_query, name=name, arg=arg, times=times)
                )
            for lane in live:
                if times[lane.impl.name] and not lane.failed:
                    lane.cell.metrics[f"{name}_us"] = median(times[lane.impl.name]) * 1e6

    if "propagation" in wants:
        await _measure_propagation(live, n, plan)


#: Changes one implementation makes in a row before the next one takes its turn.
PROPAGATION_BLOCK = 10


async def _measure_propagation(live: Sequence[_Lane], n: int, plan: Plan) -> None:
    """The implementations take turns, ``PROPAGATION_BLOCK`` changes each (who goes first
    rotates), so a slow spell of this shared machine slows all of them alike, as the other
    workloads' interleaved repetitions do, instead of whichever ran its whole series during it.
    Each turn starts after a short pause (what the previous one left running, such as node A's
    handling of its last ack, finishes) with one change that is not counted."""
    runs: dict[str, PropagationRun] = {}
    async with contextlib.AsyncExitStack() as stack:
        for lane in live:
            if lane.failed:
                continue
            assert lane.ds is not None
            assert lane.reader is not None
            try:
                runs[lane.impl.name] = await stack.enter_async_context(lane.ds.propagation(lane.reader))
            except Exception as exc:
                lane.fail("propagation", exc)
        await quiesce()
        taking = [lane for lane in live if lane.impl.name in runs]
        latencies: dict[str, list[float]] = {name: [] for name in runs}
        made = dict.fromkeys(runs, 0)
        wanted = plan.propagation_updates
        turn = 0

        async def change(lane: _Lane, count: bool) -> None:
            name = lane.impl.name
            seconds = await runs[name].one(made[name])
            made[name] += 1
            if count:
                latencies[name].append(seconds)

        # Warm-up: a first series per implementation, not counted.
        for lane in taking:
            for _ in range(plan.propagation_warmup):
                await _guard(lane, change(lane, False))
        while any(not lane.failed and len(latencies[lane.impl.name]) < wanted for lane in taking):
            for lane in taking[turn:] + taking[:turn]:
                if lane.failed or len(latencies[lane.impl.name]) >= wanted:
                    continue
                await asyncio.sleep(0.002)
                await _guard(lane, change(lane, False))
                for _ in range(min(PROPAGATION_BLOCK, wanted - len(latencies[lane.impl.name]))):
                    await _guard(lane, change(lane, True))
            turn = (turn + 1) % len(taking)
    for lane in taking:
        measured = latencies[lane.impl.name]
        if lane.failed or not measured:
            continue
        m = lane.cell.metrics
        m["prop_p50_ms"] = percentile(measured, 50) * 1e3
        m["prop_p99_ms"] = percentile(measured, 99) * 1e3
        m["prop_updates"] = len(measured)


async def _guard(lane: _Lane, step: Awaitable[None]) -> None:
    """Await one propagation step unless the lane already failed; a failure ends the lane."""
    if lane.failed:
        if asyncio.iscoroutine(step):
            step.close()
        return
    try:
        await step
    except Exception as exc:
        lane.fail("propagation", exc)


async def run(
    impls: Sequence[Implementation], plan: Plan, progress: Any = print
) -> tuple[list[Cell], dict[str, Any]]:
    """Run the plan; return the cells and the server-less extras (assignment, Pydantic memory)."""
    cells: list[Cell] = []
    extras: dict[str, Any] = {}
    server_workloads = set(plan.workloads) - {"assign"}
    for n in plan.sizes if server_workloads else ():
        docs = data.generate(n)
        t0 = time.perf_counter()
        size_cells = await run_size(impls, n, docs, plan)
        cells.extend(size_cells)
        progress(f"  N={n:,}: {time.perf_counter() - t0:.1f} s")
        for cell in size_cells:
            summary = cell.skipped or ", ".join(
                f"{k}={v:.4g}" for k, v in cell.metrics.items() if k.endswith(("_s", "_us", "_ms"))
            )
            progress(f"    {cell.impl:<12} {summary}")
            for w in cell.warnings:
                progress(f"      warning: {w}")
        if "memory" in plan.workloads:
            held, _ = await traced_bytes(_async(assign.plain_pydantic, docs))
            extras.setdefault("pydantic_mem_bytes_per_doc", {})[str(n)] = held / n
        await asyncio.sleep(0)
    if "assign" in plan.workloads:
        extras["assign"] = await assign.assignment(data.generate(1)[0], plan.assign_ops)
        progress("  assignment: " + ", ".join(f"{k}={v:.3f}" for k, v in extras["assign"].items()))
    return cells, extras


def _async(fn: Any, *args: Any) -> Any:
    async def call() -> Any:
        return fn(*args)

    return call
