"""Helpers shared by the unit tests (imported as ``helpers``: tests/unit is on sys.path)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from brainless_odm import Database


async def wait_for(cond: Callable[[], Any], timeout: float = 3.0, what: str = "condition") -> None:
    """Poll ``cond`` until it is truthy (a deadline, not a sleep, is the synchronisation)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


DbFactory = Callable[..., Awaitable[Database]]
