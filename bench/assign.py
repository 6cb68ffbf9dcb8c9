"""Micro-benchmarks that need no server: attribute assignment and the plain-Pydantic memory floor.

Assignment: ``doc.priority = v`` on a brainless_odm document (validation + field-level dirty
tracking) against the same assignment on a plain Pydantic model with ``validate_assignment=True``,
and the same for a nested model field (``doc.caller.city = v``). A brainlessdb (msgspec) struct is
listed for reference: it does not validate on assignment at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from bench.common import collect, median
from bench.data import Doc
from bench.impl_brainlessdb import item_class
from bench.impl_odm import BenchItem
from brainless_odm import Database


class PlainCaller(BaseModel):
    model_config = ConfigDict(validate_assignment=True)

    number: str
    city: str | None = None


class PlainItem(BaseModel):
    """The ODM document's fields on a plain Pydantic model, as the floor for assignment cost."""

    model_config = ConfigDict(validate_assignment=True)

    code: str
    queue: int
    score: int
    state: str = "waiting"
    priority: int = 0
    name: str = ""
    caller: PlainCaller | None = None
    tags: list[str] = Field(default_factory=list)


def _per_op(fn: Callable[[int], None], ops: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the seconds per call of ``fn(ops)`` (which does ``ops`` operations)."""
    times = []
    for _ in range(rounds):
        collect()
        t0 = time.perf_counter()
        fn(ops)
        times.append((time.perf_counter() - t0) / ops)
    return median(times)


def _assign_top(obj: Any) -> Callable[[int], None]:
    def run(ops: int) -> None:
        for i in range(ops):
            obj.priority = i & 7

    return run


def _assign_nested(obj: Any) -> Callable[[int], None]:
    cities = ("Prague", "Brno", "Ostrava", "Plzen")

    def run(ops: int) -> None:
        caller = obj.caller
        for i in range(ops):
            caller.city = cities[i & 3]

    return run


async def assignment(doc: Doc, ops: int) -> dict[str, float]:
    """µs per assignment, by variant."""
    plain = PlainItem.model_validate(doc)
    bdb = msgspec.convert(doc, item_class("AssignItemV1"))
    db = Database(None, namespace="bench-assign", documents=[BenchItem])
    await db.start()
    try:
        odm = BenchItem.objects.using(db).add(doc)
        await db.flush()
        result = {
            "pydantic_us": _per_op(_assign_top(plain), ops),
            "odm_us": _per_op(_assign_top(odm), ops),
            "pydantic_nested_us": _per_op(_assign_nested(plain), ops),
            "odm_nested_us": _per_op(_assign_nested(odm), ops),
            "brainlessdb_us": _per_op(_assign_top(bdb), ops),
        }
    finally:
        await db.stop()
    return {k: v * 1e6 for k, v in result.items()}


def plain_pydantic(docs: Sequence[Doc]) -> dict[str, PlainItem]:
    """What holding the documents as plain Pydantic models costs: the floor the ODM's memory is
    compared with (keys are stand-in uuids of the same length)."""
    return {f"{i:036d}": PlainItem.model_validate(d) for i, d in enumerate(docs)}
