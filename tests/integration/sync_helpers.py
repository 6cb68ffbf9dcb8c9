"""Helpers shared by the end-to-end integration tests (imported as ``sync_helpers``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from pydantic import BaseModel

from brainless_odm import Database, Document, DocumentConfig, Indexed, Registry, Unique

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Caller(BaseModel):
    number: str
    city: str | None = None


class Call(Base):
    channel_id: Annotated[str, Unique()]
    queue_id: Annotated[int, Indexed()] = 0
    state: Annotated[str, Indexed()] = "waiting"
    priority: int = 0
    note: str = ""
    caller: Caller | None = None
    tags: list[str] = []  # noqa: RUF012  (pydantic copies defaults)


class QueueItem(Base):
    name: str = ""


DbFactory = Callable[..., Awaitable[Database]]


async def eventually(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``cond`` (sync, or returning an awaitable) until truthy; its value. Fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


def dumps(db: Database, cls: type[Document] = Call) -> dict[str, dict[str, Any]]:
    """Every document of ``cls`` in ``db`` as ``{uuid: fields}``."""
    return {d.uuid: d.model_dump(mode="json") for d in cls.objects.using(db)}  # type: ignore[misc]
