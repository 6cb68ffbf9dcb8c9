"""The storage seam: what the engine needs from a key/value store.

The engine never talks to NATS. It talks to a :class:`KVStore` (one per database) that opens
:class:`Bucket` objects (one per collection). Two implementations exist and must behave the same:

* :mod:`brainless_odm.store.memory` — in-process, used by ``Database(None, ...)``;
* :mod:`brainless_odm.store.nats` — NATS JetStream Key/Value.

Semantics every implementation keeps:

* A bucket has one revision counter shared by all its keys, strictly increasing. Every write (put,
  delete, purge) gets the next revision. (In NATS this is the stream sequence.)
* ``expected_revision`` is compare-and-set on the *key*: the write succeeds only if the latest entry
  for that key (a put *or* a delete/purge marker) has exactly that revision; ``0`` means "the key
  has never been written (or was purged away)". ``None`` writes unconditionally.
* ``msg_id`` makes a write idempotent: a second write with the same ``msg_id`` inside the
  duplicate window is not applied again and reports the revision of the first. The
  compare-and-set is checked first (JetStream's order): a retry whose ``expected_revision`` is
  stale by then (its first attempt landed, or anything else was written) gets a ``Conflict``.
* ``watch(after)`` yields every entry with revision > ``after`` in revision order, live, until the
  iterator is closed; across a lost connection it resumes where it stopped, never skipping one.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "Bucket",
    "BucketConfig",
    "Conflict",
    "Entry",
    "KVStore",
    "Operation",
    "Snapshot",
    "WriteOp",
    "WriteResult",
]


class Operation(enum.Enum):
    """What an entry records."""

    PUT = "PUT"
    DELETE = "DEL"
    PURGE = "PURGE"


@dataclass(frozen=True, slots=True)
class Entry:
    """One revision of one key, as read from a bucket or its watch.

    ``value`` is ``b""`` for deletes and purges. ``reason`` is set for markers the server wrote
    itself (``"MaxAge"`` for a TTL expiry, ``"Remove"``, ``"Purge"``), ``None`` otherwise.
    """

    key: str
    value: bytes
    revision: int
    operation: Operation = Operation.PUT
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The latest entry of every live key, and the bucket revision they are complete up to.

    ``revision`` is the bucket's last revision when the snapshot was taken: a watch started with
    ``after=revision`` misses nothing written since. Deleted/purged keys are not in ``entries``.
    """

    entries: list[Entry]
    revision: int


@dataclass(frozen=True, slots=True)
class WriteOp:
    """One write in a batch. ``value=None`` writes a delete marker."""

    key: str
    value: bytes | None
    expected_revision: int | None = None
    msg_id: str | None = None


@dataclass(frozen=True, slots=True)
class Conflict:
    """The compare-and-set precondition failed: the key moved on since ``expected_revision``."""

    key: str
    expected_revision: int | None


# A write result is, per op and in op order: the new revision (int), a Conflict, or the
# exception that made this one write fail (StoreError subclasses; the batch itself never raises
# for a per-op failure, so one bad document cannot block the others).
WriteResult = int | Conflict | BaseException


@dataclass(frozen=True, slots=True)
class BucketConfig:
    """Per-collection bucket options (``Document`` classes declare them in ``model_config``)."""

    history: int = 1
    replicas: int = 1
    max_value_size: int | None = None
    storage: str = "file"  # "file" or "memory"
    ttl: float | None = None  # seconds; None = keep forever
    description: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Bucket(Protocol):
    """One collection's key/value bucket."""

    @property
    def name(self) -> str: ...

    @property
    def max_value_size(self) -> int:
        """The largest value (bytes) a put may carry; larger ones fail with ``PayloadTooLarge``."""
        ...

    async def load(self) -> Snapshot:
        """Every live key's latest entry — complete, never a partial view."""
        ...

    def watch(self, after: int) -> AsyncIterator[Entry]:
        """Entries with revision > ``after``, live, in order, resuming across reconnects."""
        ...

    async def get(self, key: str) -> Entry | None:
        """The latest entry of ``key`` (a delete marker too), or ``None`` if never written."""
        ...

    async def write(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        """Apply ``ops`` (pipelined where the store can), one result per op, in order."""
        ...

    async def purge_deletes(self) -> None:
        """Drop delete markers (housekeeping); optional to do anything."""
        ...


@runtime_checkable
class KVStore(Protocol):
    """A namespace of buckets, one per collection."""

    async def open_bucket(self, name: str, config: BucketConfig) -> Bucket:
        """Open ``name`` (already namespaced), creating it where missing."""
        ...

    async def delete_bucket(self, name: str) -> bool: ...

    async def list_buckets(self) -> list[str]: ...

    async def close(self) -> None:
        """Release what the store opened (never the caller's NATS connection)."""
        ...
