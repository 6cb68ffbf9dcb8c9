"""An in-process ``KVStore`` with the semantics of NATS KV (revisions, compare-and-set, watch).

``Database(None, ...)`` gets a private one: everything works, nothing persists. One ``MemoryStore``
passed to several ``Database`` objects in one event loop behaves like one NATS server shared by
several nodes — they see each other's changes through the watch, conflicts and all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

from ..exceptions import StoreError
from .base import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_ROOM,
    BucketConfig,
    Conflict,
    Entry,
    Operation,
    Snapshot,
    WriteOp,
    WriteResult,
    bucket_not_found,
    check_bucket_name,
    check_key,
    check_op,
    duplicate_window,
    store_closed,
)

__all__ = ["MemoryBucket", "MemoryStore"]

log = logging.getLogger(__name__)

#: The settings a NATS store compares when it opens an existing bucket (see ``_COMPARED`` there).
_COMPARED = ("history", "max_value_size", "storage", "replicas", "ttl")

#: NATS' default max payload less the room for our headers: what a NATS bucket takes by default.
DEFAULT_MAX_VALUE = DEFAULT_MAX_PAYLOAD - HEADER_ROOM


class MemoryBucket:
    """One bucket: the latest entry per key, up to ``history - 1`` older ones, and live watchers.

    With a ``ttl`` an entry is removed ``ttl`` seconds after its write, as JetStream's ``max_age``
    removes it; where it was its key's latest (a put or a delete marker) a ``PURGE`` marker with
    reason ``"MaxAge"`` takes its place (the server's subject delete marker), and goes itself ``ttl``
    later (its own TTL is ``max(ttl, 1 s)``, but ``max_age`` applies to it too). A timer does it for
    watchers; reads and writes expire what is due first, so they never see an entry past its time.
    """

    def __init__(self, name: str, config: BucketConfig) -> None:
        self._name = name
        # A watch's queue: entries, then the error that ends it (the bucket deleted, or closed).
        self._watchers: set[asyncio.Queue[Entry | StoreError]] = set()
        self._timer: asyncio.TimerHandle | None = None
        #: Its store was closed: every call fails with ``ConnectionClosed``, for good.
        self.closed = False
        self._reset(config)

    def _reset(self, config: BucketConfig) -> None:
        """Empty, revision 0, ``config``: a bucket just created."""
        self.config = config
        self.deleted = False
        self._latest: dict[str, Entry] = {}
        # Superseded entries still retained (``history`` > 1), oldest first: what a watch replays.
        self._older: dict[str, deque[Entry]] = {}
        self._marked: dict[str, float] = {}  # key -> when its latest entry, a marker, was written
        self._keep = max(config.history, 1) - 1
        self._revision = 0
        self._msg_ids: dict[str, tuple[float, int]] = {}
        self._limit = config.max_value_size or DEFAULT_MAX_VALUE
        self._ttl = float(config.ttl) if config.ttl else None
        self._window = duplicate_window(config)
        # (write time + ttl, key, revision) of every entry, in write order: deadlines in order.
        self._expiry: deque[tuple[float, str, int]] = deque()
        self._cancel_timer()

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_value_size(self) -> int:
        """The bucket's ``max_value_size``, or what a NATS bucket takes by default."""
        return self._limit

    def _check(self) -> None:
        if self.closed:
            raise store_closed(self._name)
        if self.deleted:
            raise bucket_not_found(self._name)
        if self._ttl is not None:
            self._expire(time.monotonic())

    async def load(self) -> Snapshot:
        self._check()
        entries = [e for e in self._latest.values() if e.operation is Operation.PUT]
        return Snapshot(entries=entries, revision=self._revision)

    async def watch(self, after: int) -> AsyncIterator[Entry]:
        self._check()
        queue: asyncio.Queue[Entry | StoreError] = asyncio.Queue()
        # Same tick as the registration below: nothing can be written in between. Every retained
        # revision, as a NATS consumer replays the stream (up to ``history`` per key).
        replay = [e for e in self._latest.values() if e.revision > after]
        for older in self._older.values():
            replay.extend(e for e in older if e.revision > after)
        replay.sort(key=lambda e: e.revision)
        for entry in replay:
            queue.put_nowait(entry)
        self._watchers.add(queue)
        last = after
        try:
            while True:
                item = await queue.get()
                if isinstance(item, StoreError):  # deleted (as a NATS watch whose stream is gone) or closed
                    raise item
                # Live entries too are only those after ``after`` (a watch started ahead of the
                # bucket, as after it was created again): a NATS consumer starts at after + 1.
                if item.revision > last:
                    last = item.revision
                    yield item
        finally:
            self._watchers.discard(queue)

    async def get(self, key: str) -> Entry | None:
        check_key(key)  # first, as on NATS (checked before anything is sent)
        self._check()
        return self._latest.get(key)

    def _append(
        self, key: str, value: bytes, op: Operation, reason: str | None = None, removes: int | None = None
    ) -> int:
        self._revision += 1
        entry = Entry(key, value, self._revision, op, reason, removes)
        # Popped and inserted again, not overwritten in place: ``_latest`` stays in revision order,
        # which is the order a NATS load delivers keys in (and so of a loaded database's documents).
        prev = self._latest.pop(key, None)
        if self._keep and prev is not None:
            older = self._older.get(key)
            if older is None:
                older = self._older[key] = deque(maxlen=self._keep)
            older.append(prev)
        self._latest[key] = entry
        if op is Operation.PUT:
            self._marked.pop(key, None)
        else:
            self._marked[key] = time.time()  # when the key's marker was written (purge_deletes)
        for q in self._watchers:
            q.put_nowait(entry)
        if self._ttl is not None:
            self._track(entry)
        return self._revision

    # -- expiry (ttl) ---------------------------------------------------------------------------

    def _track(self, entry: Entry) -> None:
        now = time.monotonic()
        deadline = now + (self._ttl or 0.0)
        self._expiry.append((deadline, entry.key, entry.revision))
        if self._timer is None:  # else it is set for an earlier deadline (they come in order)
            self._schedule(deadline, now)

    def _schedule(self, deadline: float, now: float) -> None:
        self._cancel_timer()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - writes run in a loop; reads expire what is due
            return
        self._timer = loop.call_later(max(0.0, deadline - now), self._on_timer)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _on_timer(self) -> None:
        self._timer = None
        if self.deleted or self.closed:
            return
        now = time.monotonic()
        self._expire(now)
        if self._expiry:
            # Not the deadline of a marker written just now (which set the timer): the earliest.
            self._schedule(self._expiry[0][0], now)

    def _expire(self, now: float) -> None:
        """Remove what is past its time, as JetStream does (MaxAge markers in place of the latest
        entries of keys)."""
        queue = self._expiry
        while queue and queue[0][0] <= now:
            _, key, rev = queue.popleft()
            latest = self._remove(key, rev)
            if latest is not None and latest.operation is not Operation.PURGE and latest.reason is None:
                # The key's latest, a put or a delete marker: the server writes a marker in its
                # place (a purge marker, or a marker of its own, goes without one).
                self._append(key, b"", Operation.PURGE, "MaxAge")

    def _remove(self, key: str, rev: int) -> Entry | None:
        """Forget revision ``rev`` of ``key`` if it is still retained; the entry if it was the
        key's latest (whose older revisions, written before it, are gone already)."""
        latest = self._latest.get(key)
        if latest is not None and latest.revision == rev:
            del self._latest[key]
            self._older.pop(key, None)
            self._marked.pop(key, None)
            return latest
        older = self._older.get(key)
        if older and older[0].revision == rev:
            older.popleft()
            if not older:
                del self._older[key]
        return None

    # -- writes ---------------------------------------------------------------------------------

    def _write_one(self, op: WriteOp, now: float) -> WriteResult:
        # What is wrong with the op itself first: NATS checks it before anything is sent.
        bad = check_op(self._name, op, self._limit)
        if bad is not None:
            return bad
        if self.closed:
            return store_closed(self._name, op.key)
        if self.deleted:
            return bucket_not_found(self._name)
        # The compare-and-set first, then the duplicate window: JetStream's order, so a retry whose
        # expected revision went stale is refused even if its first attempt landed.
        if op.expected_revision is not None:
            current = self._latest.get(op.key)
            if (current.revision if current is not None else 0) != op.expected_revision:
                return Conflict(key=op.key, expected_revision=op.expected_revision)
        if op.msg_id is not None:
            seen = self._msg_ids.get(op.msg_id)
            if seen is not None and now - seen[0] < self._window:
                return seen[1]
        if op.value is None:
            rev = self._append(op.key, b"", Operation.DELETE, None, op.removes)
        else:
            rev = self._append(op.key, op.value, Operation.PUT)
        if op.msg_id is not None:
            self._msg_ids[op.msg_id] = (now, rev)
            if len(self._msg_ids) > 100_000:
                window = self._window
                self._msg_ids = {k: v for k, v in self._msg_ids.items() if now - v[0] < window}
        return rev

    async def write(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        now = time.monotonic()
        if self._ttl is not None and not self.deleted and not self.closed:
            self._expire(now)
        results = [self._write_one(op, now) for op in ops]
        await asyncio.sleep(0)  # a write is a suspension point, as on the network
        return results

    async def purge(self, key: str) -> int:
        """Drop every revision of ``key`` and leave a purge marker (as ``kv.purge``)."""
        check_key(key)
        self._check()
        self._latest.pop(key, None)
        self._older.pop(key, None)
        return self._append(key, b"", Operation.PURGE)

    async def put_raw(self, key: str, value: bytes) -> int:
        """Store ``value`` as is, unconditionally (operators' and tests' back door)."""
        check_key(key)
        self._check()
        return self._append(key, value, Operation.PUT)

    async def purge_deletes(self, older_than: float = 30 * 60) -> None:
        """Remove delete/purge markers older than ``older_than`` seconds, and what they hide (as
        the NATS store: recent markers stay, so a watcher briefly behind still sees the delete)."""
        self._check()  # a deleted bucket is BucketNotFound here too, as on NATS
        cutoff = time.time() - older_than
        for key, entry in list(self._latest.items()):
            if entry.operation is not Operation.PUT and self._marked.get(key, 0.0) <= cutoff:
                del self._latest[key]
                self._older.pop(key, None)
                self._marked.pop(key, None)

    def _delete(self) -> None:
        """Deleted: the data goes, watches end with ``BucketNotFound``, every call fails with it
        until the store opens the bucket again."""
        self._reset(self.config)
        self.deleted = True
        for q in self._watchers:
            q.put_nowait(bucket_not_found(self._name))

    def _close(self) -> None:
        """Its store was closed: the data goes, watches end with ``ConnectionClosed``, and every
        call fails with it, for good."""
        self._reset(self.config)
        self.closed = True
        for q in self._watchers:
            q.put_nowait(store_closed(self._name))


class MemoryStore:
    """A namespace-free set of in-memory buckets, shareable by several databases in one loop."""

    def __init__(self) -> None:
        self._buckets: dict[str, MemoryBucket] = {}
        self._closed = False

    async def open_bucket(self, name: str, config: BucketConfig) -> MemoryBucket:
        check_bucket_name(name)
        if self._closed:
            raise store_closed(name)
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = MemoryBucket(name, config)
        elif bucket.deleted:
            # Created again. A NATS bucket handle addresses the bucket by name, so the handles of
            # the deleted one (a running database's) read and write the new one: same object.
            bucket._reset(config)
        else:
            have = bucket.config
            diffs = [
                f"{k}={getattr(have, k)!r} (wanted {getattr(config, k)!r})"
                for k in _COMPARED
                if getattr(have, k) != getattr(config, k)
            ]
            if diffs:  # as the NATS store reports it: the bucket is not changed
                log.warning(
                    "bucket %s exists with different settings, using it as it is: %s", name, ", ".join(diffs)
                )
        return bucket

    def bucket(self, name: str) -> MemoryBucket:
        """The bucket called ``name`` (``KeyError`` if it was never opened)."""
        return self._buckets[name]

    async def delete_bucket(self, name: str) -> bool:
        check_bucket_name(name)  # as on NATS, where the name goes into a subject
        if self._closed:
            raise store_closed(name)
        bucket = self._buckets.get(name)
        if bucket is None or bucket.deleted:
            return False
        bucket._delete()
        return True

    async def list_buckets(self) -> list[str]:
        """Every bucket of this store (there are no namespaces here), sorted."""
        if self._closed:
            raise store_closed()
        return sorted(name for name, bucket in self._buckets.items() if not bucket.deleted)

    async def close(self) -> None:
        """Drop the data and end every watch, as closing a NATS store ends its buckets: from now on
        the store and its buckets fail every call with ``ConnectionClosed``. Databases sharing a
        store do not close it; ``Database(None, ...)`` closes its own when it stops."""
        self._closed = True
        for bucket in self._buckets.values():
            bucket._close()
