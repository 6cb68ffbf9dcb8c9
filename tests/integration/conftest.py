"""Integration fixtures: databases on the session's nats-server, each with its own connection."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from sync_helpers import Call, DbFactory

from brainless_odm import Database, Document
from brainless_odm.store.nats import connect

# The random-program machinery of the unit tests (tests/unit/sync_model.py), run here on NATS.
sys.path.append(str(Path(__file__).resolve().parent.parent / "unit"))


@pytest.fixture
async def make_db(nats_url: str, brainless_namespace: str) -> AsyncIterator[DbFactory]:
    """``await make_db(location=..., flush_interval=...)``: a started ``Database`` of ``Call`` (or the
    given ``documents``) on its own connection; stopped and disconnected after the test."""
    made: list[tuple[Database, Client]] = []
    counter = itertools.count(1)

    async def make(
        *,
        documents: tuple[type[Document], ...] = (Call,),
        location: str | None = None,
        flush_interval: float = 0.01,
        url: str | None = None,
        namespace: str | None = None,
        start: bool = True,
    ) -> Database:
        nc = await connect(url or nats_url)
        db = Database(
            nc,
            namespace=namespace or brainless_namespace,
            location=location or f"node-{next(counter)}",
            flush_interval=flush_interval,
            documents=documents,
        )
        made.append((db, nc))
        if start:
            await db.start()
        return db

    yield make
    for db, nc in reversed(made):
        # Tests that leave unwritable documents behind expect stop() to report them.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(db.stop(), 10)
        with contextlib.suppress(Exception):
            await nc.close()
