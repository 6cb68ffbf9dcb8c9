"""An in-process ``KVStore`` with the semantics of NATS KV (revisions, compare-and-set, watch).

``Database(None, ...)`` gets a private one: everything works, nothing persists. One ``MemoryStore``
passed to several ``Database`` objects in one event loop behaves like one NATS server shared by
several nodes — they see each other's changes through the watch, conflicts and all.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

from ..exceptions import BucketNotFound
from .base import (
    DEFAULT_MAX_PAYLOAD,
    DUPLICATE_WINDOW,
    HEADER_ROOM,
    BucketConfig,
    Conflict,
    Entry,
    Operation,
    Snapshot,
    WriteOp,
    WriteResult,
    check_bucket_name,
    check_key,
    check_op,
)

__all__ = ["MemoryBucket", "MemoryStore"]

#: NATS' default max payload less the room for our headers: what a NATS bucket takes by default.
DEFAULT_MAX_VALUE = DEFAULT_MAX_PAYLOAD - HEADER_ROOM


class MemoryBucket:
    """One bucket: the latest entry per key, up to ``history - 1`` older ones, and live watchers."""

    def __init__(self, name: str, config: BucketConfig) -> None:
        self._name = name
        self.config = config
        self._latest: dict[str, Entry] = {}
        # Superseded entries still retained (``history`` > 1), oldest first: what a watch replays.
        self._older: dict[str, deque[Entry]] = {}
        self._keep = max(config.history, 1) - 1
        self._revision = 0
        self._watchers: set[asyncio.Queue[Entry | None]] = set()
        self._msg_ids: dict[str, tuple[float, int]] = {}
        self.deleted = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_value_size(self) -> int:
        """The bucket's ``max_value_size``, or what a NATS bucket takes by default."""
        return self.config.max_value_size or DEFAULT_MAX_VALUE

    def _check(self) -> None:
        if self.deleted:
            raise BucketNotFound(f"bucket {self._name!r} does not exist (it was deleted)")

    async def load(self) -> Snapshot:
        self._check()
        entries = [e for e in self._latest.values() if e.operation is Operation.PUT]
        return Snapshot(entries=entries, revision=self._revision)

    async def watch(self, after: int) -> AsyncIterator[Entry]:
        self._check()
        queue: asyncio.Queue[Entry | None] = asyncio.Queue()
        # Same tick as the registration below: nothing can be written in between. Every retained
        # revision, as a NATS consumer replays the stream (up to ``history`` per key).
        replay = [e for e in self._latest.values() if e.revision > after]
        for older in self._older.values():
            replay.extend(e for e in older if e.revision > after)
        replay.sort(key=lambda e: e.revision)
        for entry in replay:
            queue.put_nowait(entry)
        self._watchers.add(queue)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item
        finally:
            self._watchers.discard(queue)

    async def get(self, key: str) -> Entry | None:
        self._check()
        check_key(key)
        return self._latest.get(key)

    def _append(self, key: str, value: bytes, op: Operation, reason: str | None = None) -> int:
        self._revision += 1
        entry = Entry(key=key, value=value, revision=self._revision, operation=op, reason=reason)
        if self._keep:
            prev = self._latest.get(key)
            if prev is not None:
                older = self._older.get(key)
                if older is None:
                    older = self._older[key] = deque(maxlen=self._keep)
                older.append(prev)
        self._latest[key] = entry
        for q in self._watchers:
            q.put_nowait(entry)
        return self._revision

    def _write_one(self, op: WriteOp, now: float) -> WriteResult:
        if self.deleted:
            return BucketNotFound(f"bucket {self._name!r} does not exist (it was deleted)")
        bad = check_op(self._name, op, self.max_value_size)
        if bad is not None:
            return bad
        # The compare-and-set first, then the duplicate window: JetStream's order, so a retry whose
        # expected revision went stale is refused even if its first attempt landed.
        if op.expected_revision is not None:
            current = self._latest.get(op.key)
            if (current.revision if current is not None else 0) != op.expected_revision:
                return Conflict(key=op.key, expected_revision=op.expected_revision)
        if op.msg_id is not None:
            seen = self._msg_ids.get(op.msg_id)
            if seen is not None and now - seen[0] < DUPLICATE_WINDOW:
                return seen[1]
        if op.value is None:
            rev = self._append(op.key, b"", Operation.DELETE)
        else:
            rev = self._append(op.key, op.value, Operation.PUT)
        if op.msg_id is not None:
            self._msg_ids[op.msg_id] = (now, rev)
            if len(self._msg_ids) > 100_000:
                self._msg_ids = {k: v for k, v in self._msg_ids.items() if now - v[0] < DUPLICATE_WINDOW}
        return rev

    async def write(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        now = time.monotonic()
        results = [self._write_one(op, now) for op in ops]
        await asyncio.sleep(0)  # a write is a suspension point, as on the network
        return results

    async def purge(self, key: str) -> int:
        """Drop every revision of ``key`` and leave a purge marker (as ``kv.purge``)."""
        self._check()
        check_key(key)
        self._latest.pop(key, None)
        self._older.pop(key, None)
        return self._append(key, b"", Operation.PURGE)

    async def put_raw(self, key: str, value: bytes) -> int:
        """Store ``value`` as is, unconditionally (operators' and tests' back door)."""
        self._check()
        check_key(key)
        return self._append(key, value, Operation.PUT)

    async def purge_deletes(self) -> None:
        for key, entry in list(self._latest.items()):
            if entry.operation is not Operation.PUT:
                del self._latest[key]
                self._older.pop(key, None)

    def close_watchers(self) -> None:
        for q in self._watchers:
            q.put_nowait(None)


class MemoryStore:
    """A namespace-free set of in-memory buckets, shareable by several databases in one loop."""

    def __init__(self) -> None:
        self._buckets: dict[str, MemoryBucket] = {}

    async def open_bucket(self, name: str, config: BucketConfig) -> MemoryBucket:
        check_bucket_name(name)
        bucket = self._buckets.get(name)
        if bucket is None or bucket.deleted:
            bucket = self._buckets[name] = MemoryBucket(name, config)
        return bucket

    def bucket(self, name: str) -> MemoryBucket:
        """The bucket called ``name`` (``KeyError`` if it was never opened)."""
        return self._buckets[name]

    async def delete_bucket(self, name: str) -> bool:
        bucket = self._buckets.pop(name, None)
        if bucket is None:
            return False
        bucket.deleted = True
        bucket.close_watchers()
        return True

    async def list_buckets(self) -> list[str]:
        return sorted(self._buckets)

    async def close(self) -> None:
        """Nothing to release: the data lives as long as this object."""
