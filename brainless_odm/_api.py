"""The seed's module-level convenience: one implicit database, built on ``Database``.

    await brainless_odm.setup(nc, namespace="app", location="prague-1")
    ...
    await brainless_odm.flush()
    await brainless_odm.stop()

It is one ``Database`` kept here; ``Call.objects`` finds it through the usual default binding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .database import Database
from .document import Document
from .exceptions import DatabaseError
from .registry import Registry
from .store.base import KVStore

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = ["flush", "get_database", "setup", "stop"]

_db: Database | None = None


async def setup(
    nc: NatsClient | KVStore | None = None,
    *,
    namespace: str = "default",
    location: str = "local",
    flush_interval: float = 0.1,
    documents: Iterable[type[Document]] | Registry | None = None,
) -> Database:
    """Create and start the module-level database (``nc=None``: in memory). Returns it."""
    global _db
    if _db is not None and _db.started:
        raise DatabaseError("brainless_odm.setup() was already called; call brainless_odm.stop() first")
    db = Database(
        nc, namespace=namespace, location=location, flush_interval=flush_interval, documents=documents
    )
    await db.start()
    _db = db
    return db


def get_database() -> Database:
    """The database started by :func:`setup`."""
    if _db is None or not _db.started:
        raise DatabaseError("brainless_odm.setup() has not been called")
    return _db


async def flush() -> int:
    """Flush the module-level database (see ``Database.flush``)."""
    return await get_database().flush()


async def stop() -> None:
    """Flush and stop the module-level database. Safe to call twice."""
    global _db
    db, _db = _db, None
    if db is not None:
        await db.stop()
