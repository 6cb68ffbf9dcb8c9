"""Runs every workload for every implementation and size, in one process against one server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import assign, data
from bench.common import (
    Dataset,
    Implementation,
    Reader,
    guarded,
    median,
    percentile,
    quiesce,
    timed,
    timed_each,
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
        return 5 if n <= 1_000 else 3 if n <= 20_000 else 2

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


async def run_cell(impl: Implementation, n: int, docs: Sequence[data.Doc], plan: Plan) -> Cell:
    cell = Cell(impl.name, n)
    wants = set(plan.workloads)
    if plan.skip_slow and impl.slow_writes and n >= plan.slow_from:
        cell.skipped = "--skip-slow"
        return cell
    m = cell.metrics

    # write: every repetition into a fresh bucket; the last one stays for the other workloads.
    writes: list[float] = []
    ds: Dataset | None = None
    for rep in range(plan.write_repeats(n) if "write" in wants else 1):
        if ds is not None:
            await _drop(ds, cell)
        ds = impl.dataset(f"{n}-{rep}")
        await ds.prepare()
        await quiesce()
        seconds, _ = await timed(lambda ds=ds: ds.write(docs))  # type: ignore[misc]
        writes.append(seconds)
        await quiesce()
    assert ds is not None
    if "write" in wants:
        m["write_s"] = median(writes)
        m["write_runs"] = writes
    if not wants & READER_WORKLOADS:
        await _drop(ds, cell)
        return cell

    try:
        if "memory" in wants:
            held, reader = await traced_bytes(ds.open_reader)
            m["mem_bytes_per_doc"] = held / n
            await _close(reader, cell)
            await quiesce()

        loads: list[float] = []
        reader = None
        for _ in range(plan.load_repeats(n)):
            if reader is not None:
                await _close(reader, cell)
                await quiesce()
            seconds, reader = await timed(ds.open_reader)
            loads.append(seconds)
        assert reader is not None
        m["load_s"] = median(loads)
        m["load_runs"] = loads
        m["loaded"] = reader.count()
        if reader.count() != n:
            cell.warnings.append(f"loaded {reader.count()} documents, expected {n}")
        await quiesce()

        if "query" in wants:
            if isinstance(reader, RawReader):
                reader.build_indexes()
            eq_n, range_n, scan_n = plan.query_repeats(n)
            for name, fn, args in (
                ("eq", reader.query_eq, data.eq_values(eq_n)),
                ("range", reader.query_range, data.range_bounds(range_n)),
                ("scan", reader.query_scan, [data.SCAN_STATE] * scan_n),
            ):
                times, hits = await timed_each(fn, args)
                m[f"{name}_us"] = median(times) * 1e6
                m[f"{name}_hits"] = hits

        if "propagation" in wants:
            total = plan.propagation_warmup + plan.propagation_updates
            latencies = await ds.propagation(reader, min(total, n))
            measured = latencies[plan.propagation_warmup :]
            m["prop_p50_ms"] = percentile(measured, 50) * 1e3
            m["prop_p99_ms"] = percentile(measured, 99) * 1e3
            m["prop_updates"] = len(measured)
        await _close(reader, cell)
    finally:
        await _drop(ds, cell)
    return cell


async def run(
    impls: Sequence[Implementation], plan: Plan, progress: Any = print
) -> tuple[list[Cell], dict[str, Any]]:
    """Run the plan; return the cells and the server-less extras (assignment, Pydantic memory)."""
    cells: list[Cell] = []
    extras: dict[str, Any] = {}
    server_workloads = set(plan.workloads) - {"assign"}
    for n in plan.sizes if server_workloads else ():
        docs = data.generate(n)
        for impl in impls:
            t0 = time.perf_counter()
            seen = len(impl.ctx.errors)
            cell = await run_cell(impl, n, docs, plan)
            cells.append(cell)
            errors = impl.ctx.errors[seen:]
            if errors:
                cell.warnings.append(f"{len(errors)} asynchronous nats-py error(s), first: {errors[0]}")
            took = time.perf_counter() - t0
            summary = cell.skipped or ", ".join(
                f"{k}={v:.4g}" for k, v in cell.metrics.items() if k.endswith(("_s", "_us", "_ms"))
            )
            progress(f"  N={n:>7} {impl.name:<12} {took:6.1f} s  {summary}")
            for w in cell.warnings:
                progress(f"    warning: {w}")
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
