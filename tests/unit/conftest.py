"""Unit-test fixtures: every database here runs on an in-memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from helpers import DbFactory

from brainless_odm import Database, Document


@pytest.fixture
async def make_db() -> AsyncIterator[DbFactory]:
    """``await make_db(Call, store=shared, location=...)``: a started database, stopped after the test."""
    started: list[Database] = []

    async def make(
        *documents: type[Document],
        store: Any = None,
        namespace: str = "test",
        location: str = "local",
        flush_interval: float = 0.01,
        start: bool = True,
    ) -> Database:
        docs: Iterable[type[Document]] = documents
        db = Database(
            store, namespace=namespace, location=location, flush_interval=flush_interval, documents=docs
        )
        started.append(db)
        if start:
            await db.start()
        return db

    yield make
    for db in reversed(started):
        await db.stop()
