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
* ``watch(after)`` yields every *retained* entry with revision > ``after`` in revision order (up to
  ``history`` per key; a purge leaves only its marker), live, until the iterator is closed; across a
  lost connection it resumes where it stopped, never skipping one. A deleted bucket ends it with
  ``BucketNotFound``.
* With a ``ttl``, an entry is removed ``ttl`` seconds after its write; where it was the key's latest
  (a put or a delete marker) the store writes a ``PURGE`` marker with reason ``"MaxAge"`` (delivered by
  the watch like any entry), which is itself removed ``ttl`` later. The duplicate window is then
  ``min(120 s, ttl)``.
* A bucket is addressed by name: after it is deleted and created again, a handle of the old one
  reads and writes the new one (empty, revisions from 1 again).
* Keys, bucket names, ``msg_id`` and value sizes are checked by the helpers below, the same for
  every store.
"""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol, TypeGuard, runtime_checkable

from ..exceptions import BucketNotFound, ConnectionClosed, InvalidKey, PayloadTooLarge, StoreError

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DUPLICATE_WINDOW",
    "HEADER_ROOM",
    "KEY_PATTERN",
    "MAX_BUCKET_NAME",
    "MAX_DESCRIPTION",
    "MAX_HISTORY",
    "MAX_KEY",
    "MAX_MSG_ID",
    "MAX_REPLICAS",
    "MAX_TTL",
    "MAX_VALUE_SIZE",
    "MIN_TTL",
    "Bucket",
    "BucketConfig",
    "Conflict",
    "Entry",
    "KVStore",
    "Operation",
    "Snapshot",
    "WriteOp",
    "WriteResult",
    "bucket_not_found",
    "bucket_setting_problem",
    "check_bucket_name",
    "check_key",
    "check_op",
    "duplicate_window",
    "store_closed",
    "valid_key",
]

#: Bytes of a message the server counts besides the value (against its ``max_payload`` and the
#: stream's ``max_msg_size``): the largest header block a write sends. A put with a ``msg_id`` of
#: ``MAX_MSG_ID`` characters and an expected revision of 20 digits has 342 bytes of headers, a
#: delete 361 (and no value); the rest is margin.
HEADER_ROOM = 384
#: The longest ``msg_id`` (a ``Nats-Msg-Id`` header): 1-256 printable ASCII characters, no space.
MAX_MSG_ID = 256
#: The longest key. The subject of a publish carries it, and a control line over the server's
#: limit (4 KB) makes the server close the connection, which nats-py then abandons for good.
MAX_KEY = 1024
#: The longest bucket name: its stream is ``KV_<name>``, and nats-server refuses stream names over
#: 255 characters.
MAX_BUCKET_NAME = 252
#: NATS' default ``max_payload``: the in-memory store's message size limit.
DEFAULT_MAX_PAYLOAD = 1024 * 1024
#: Seconds a ``msg_id`` is remembered (JetStream KV's default duplicate window).
DUPLICATE_WINDOW = 120.0

# What a bucket's settings may be: what nats-server (2.11+) and the NATS KV clients accept.
#: Revisions kept per key: NATS KV clients refuse more (the server would take more).
MAX_HISTORY = 64
#: Copies of a bucket: nats-server refuses more ("maximum replicas is 5"). One server (not a
#: cluster) takes only 1; a ``MemoryStore`` accepts any of them and keeps one copy.
MAX_REPLICAS = 5
#: The shortest ``ttl`` (seconds): nats-server's shortest ``max_age`` ("needs to be >= 100ms").
MIN_TTL = 0.1
#: The longest ``ttl`` (seconds): ``max_age`` is a duration in int64 nanoseconds.
MAX_TTL = (2**63 - 1) / 1e9
#: The largest ``max_value_size``: the stream's ``max_msg_size`` (this + ``HEADER_ROOM``) is an int32.
MAX_VALUE_SIZE = 2**31 - 1 - HEADER_ROOM
#: The longest ``description``, in UTF-8 bytes (nats-server: "maximum allowed is 4096").
MAX_DESCRIPTION = 4096

#: NATS KV keys: tokens of ``A-Z a-z 0-9 - / _ =`` separated by single dots.
KEY_PATTERN = r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$"
_KEY_MATCH = re.compile(r"[-/_=a-zA-Z0-9]+(?:\.[-/_=a-zA-Z0-9]+)*").fullmatch
_BUCKET_MATCH = re.compile(r"[a-zA-Z0-9_-]+").fullmatch


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
    ``removes`` is set for a delete marker written with :attr:`WriteOp.removes`: the revision of
    the unreadable version it moved out (to a node's dead letters), which is no delete of a
    document.
    """

    key: str
    value: bytes
    revision: int
    operation: Operation = Operation.PUT
    reason: str | None = None
    removes: int | None = None


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
    """One write in a batch. ``value=None`` writes a delete marker; with ``removes``, one that
    moves the unreadable version at that revision out (stored with the marker, see
    :attr:`Entry.removes`): nodes writing a good version over that one keep their document."""

    key: str
    value: bytes | None
    expected_revision: int | None = None
    msg_id: str | None = None
    removes: int | None = None


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
    """Per-collection bucket options (``Document`` classes declare them in ``model_config``).

    Checked when it is made, with :func:`bucket_setting_problem`: a value NATS would refuse (or
    read differently: a ``history`` of 0 is unlimited there) is a ``ValueError`` here, before any
    store sees it, the same for every store.

    ``replicas`` and ``storage`` say how the server keeps the data, not what reads and writes do;
    a ``MemoryStore`` accepts every valid value and keeps one copy in memory, so classes declared
    for a cluster (``replicas=3``) run unchanged in memory. A single nats-server refuses
    ``replicas`` above 1 when the bucket is created (a ``StoreError`` naming the bucket). ``extra``
    (raw JetStream stream config fields) is for NATS only.
    """

    history: int = 1
    replicas: int = 1
    max_value_size: int | None = None
    storage: str = "file"  # "file" or "memory"
    ttl: float | None = None  # seconds; None = keep forever
    description: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            problem = bucket_setting_problem(f.name, value)
            if problem is not None:
                raise ValueError(f"bucket {f.name} must be {problem}, got {value!r}")


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

    async def purge_deletes(self, older_than: float = 30 * 60) -> None:
        """Drop delete and purge markers older than ``older_than`` seconds, and what they hide
        (housekeeping): recent ones stay, so a watcher briefly behind still sees the delete. After
        this, such a key reads as never written."""
        ...


@runtime_checkable
class KVStore(Protocol):
    """A namespace of buckets, one per collection."""

    async def open_bucket(self, name: str, config: BucketConfig) -> Bucket:
        """Open ``name`` (already namespaced), creating it where missing."""
        ...

    async def delete_bucket(self, name: str) -> bool:
        """Delete ``name`` and its data; ``False`` if it did not exist, ``InvalidKey`` if no bucket
        can have that name. Open handles of it fail with ``BucketNotFound`` until the bucket is
        opened again (then they address the new one)."""
        ...

    async def list_buckets(self) -> list[str]:
        """The buckets this store lists, sorted: on NATS those of its namespace; a ``MemoryStore``
        has no namespace and lists all of its own."""
        ...

    async def close(self) -> None:
        """Release what the store opened (never the caller's NATS connection). It is final: every
        later call of the store and of the buckets it opened fails with ``ConnectionClosed``
        (running watches end with it), and leaves nothing running behind."""
        ...


# -- checks shared by every store ---------------------------------------------------------


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def bucket_setting_problem(name: str, value: object) -> str | None:
    """What the ``BucketConfig`` field ``name`` must be, if ``value`` is not that; ``None`` if it is
    fine. The one definition of valid bucket settings: ``BucketConfig`` checks its fields with it,
    and ``DocumentConfig`` its ``bucket_*`` options."""
    if name in ("history", "replicas"):
        hi = MAX_HISTORY if name == "history" else MAX_REPLICAS
        return None if _is_int(value) and 1 <= value <= hi else f"an int in 1..{hi}"
    if name == "max_value_size":
        if value is None or (_is_int(value) and 1 <= value <= MAX_VALUE_SIZE):
            return None
        return f"None or an int in 1..{MAX_VALUE_SIZE} (bytes)"
    if name == "storage":
        return None if isinstance(value, str) and value in ("file", "memory") else "'file' or 'memory'"
    if name == "ttl":
        if value is None or (
            isinstance(value, (int, float)) and not isinstance(value, bool) and MIN_TTL <= value <= MAX_TTL
        ):
            return None
        return f"None or a number of seconds, at least {MIN_TTL:g} (NATS' shortest max_age)"
    if name == "description":
        if value is None or (isinstance(value, str) and len(value.encode()) <= MAX_DESCRIPTION):
            return None
        return f"None or a str of at most {MAX_DESCRIPTION} bytes"
    if name == "extra":
        return None if isinstance(value, dict) else "a dict of JetStream stream config fields"
    raise KeyError(name)


def valid_key(key: str) -> bool:
    """Can a bucket hold ``key``? (NATS KV tokens separated by single dots, at most ``MAX_KEY``.)"""
    return len(key) <= MAX_KEY and _KEY_MATCH(key) is not None


def _invalid_key(key: str) -> InvalidKey:
    shown = key if len(key) <= 60 else f"{key[:40]}...({len(key)} characters)"
    return InvalidKey(
        f"{shown!r} is not a valid NATS KV key (allowed: A-Z a-z 0-9 - / _ = and dots between them, "
        f"at most {MAX_KEY} characters)"
    )


def check_key(key: str) -> None:
    """Raise ``InvalidKey`` unless :func:`valid_key`."""
    if not valid_key(key):
        raise _invalid_key(key)


def check_bucket_name(name: str) -> None:
    """Raise ``InvalidKey`` for a name NATS does not allow for a KV bucket."""
    if _BUCKET_MATCH(name) is None:
        raise InvalidKey(f"{name!r} is not a valid NATS KV bucket name (allowed: A-Z a-z 0-9 - _)")
    if len(name) > MAX_BUCKET_NAME:
        raise InvalidKey(
            f"bucket name {name[:40]!r}... has {len(name)} characters; NATS allows at most "
            f"{MAX_BUCKET_NAME} (its stream is KV_<name>, and stream names have at most 255)"
        )


def bucket_not_found(name: str) -> BucketNotFound:
    """The error of every store for an operation on bucket ``name`` that does not exist (any more)."""
    return BucketNotFound(f"bucket {name!r} does not exist: it was deleted (opening it again creates it)")


def store_closed(bucket: str | None = None, key: str | None = None) -> ConnectionClosed:
    """The error of every store for a call made after its ``close()``, on bucket ``bucket``
    (and key ``key``)."""
    what = "" if bucket is None else f"bucket {bucket!r}: " if key is None else f"{bucket}/{key}: "
    return ConnectionClosed(f"{what}the store was closed; nothing more goes through it (use a new one)")


def check_op(bucket: str, op: WriteOp, limit: int) -> StoreError | None:
    """What is wrong with ``op`` before it is sent to bucket ``bucket`` whose values may have at
    most ``limit`` bytes: ``InvalidKey``, a ``StoreError`` for a bad ``msg_id``, ``PayloadTooLarge``;
    ``None`` if nothing."""
    key = op.key
    if len(key) > MAX_KEY or _KEY_MATCH(key) is None:
        return _invalid_key(key)
    msg_id = op.msg_id
    # Printable ASCII without space (what a header value may be): ``[!-~]{1,256}``, without a regex.
    if msg_id is not None and not (
        0 < len(msg_id) <= MAX_MSG_ID and msg_id.isascii() and msg_id.isprintable() and " " not in msg_id
    ):
        return StoreError(
            f"{bucket}/{key}: msg_id must be 1-{MAX_MSG_ID} printable ASCII characters without spaces"
        )
    value = op.value
    if value is not None and len(value) > limit:
        return PayloadTooLarge(
            f"{bucket}/{key}: value is {len(value)} bytes, the limit is {limit} bytes",
            size=len(value),
            limit=limit,
        )
    return None


def duplicate_window(config: BucketConfig) -> float:
    """Seconds a bucket remembers a ``msg_id``: two minutes, or the ``ttl`` if shorter."""
    return min(DUPLICATE_WINDOW, config.ttl) if config.ttl else DUPLICATE_WINDOW
