"""brainless_odm: Pydantic documents in memory, synced through NATS JetStream KV.

"Without a brain you can't have split-brain": no leader, NATS is the only arbiter.
"""

from __future__ import annotations

from ._api import flush, get_database, setup, stop
from .config import DocumentConfig
from .database import Database, DeadLetter
from .document import Document
from .exceptions import (
    BrainlessError,
    BucketNotFound,
    ConnectionClosed,
    ConnectionLost,
    DatabaseError,
    DefinitionError,
    DoesNotExist,
    FlushError,
    InvalidKey,
    MultipleObjectsReturned,
    NotBoundError,
    PayloadTooLarge,
    QueryError,
    StoreError,
    UniqueViolation,
)
from .fields import Indexed, Unique
from .query.lookups import Q
from .query.manager import Manager
from .query.queryset import QuerySet
from .registry import Registry, default_registry
from .store.base import KVStore
from .store.memory import MemoryStore

__version__ = "0.1.0"

__all__ = [
    "BrainlessError",
    "BucketNotFound",
    "ConnectionClosed",
    "ConnectionLost",
    "Database",
    "DatabaseError",
    "DeadLetter",
    "DefinitionError",
    "Document",
    "DocumentConfig",
    "DoesNotExist",
    "FlushError",
    "Indexed",
    "InvalidKey",
    "KVStore",
    "Manager",
    "MemoryStore",
    "MultipleObjectsReturned",
    "NotBoundError",
    "PayloadTooLarge",
    "Q",
    "QueryError",
    "QuerySet",
    "Registry",
    "StoreError",
    "Unique",
    "UniqueViolation",
    "default_registry",
    "flush",
    "get_database",
    "setup",
    "stop",
]
