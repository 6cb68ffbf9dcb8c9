"""``Database``: the lifecycle of a set of collections on one store, and which one a class uses."""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import hashlib
import logging
import math
import numbers
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import pydantic_core
from pydantic import ValidationError

from .document import Document
from .engine.collection import Collection, cancel_and_wait
from .engine.events import Listeners
from .exceptions import DatabaseError, FlushError, NotBoundError, StoreError
from .registry import Registry, default_registry
from .store.base import MAX_BUCKET_NAME, Bucket, BucketConfig, Entry, KVStore, WriteOp
from .store.memory import MemoryStore

if TYPE_CHECKING:
    from types import TracebackType

    from nats.aio.client import Client as NatsClient
    from typing_extensions import Self

__all__ = ["Database", "DeadLetter"]

log = logging.getLogger("brainless_odm")

D = TypeVar("D", bound=Document)

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_-]+$")
DEAD_LETTERS = "_dead_letters"
#: The longest namespace: its dead letters' bucket (``{namespace}-_dead_letters``) must fit, with
#: room to spare for collection names.
MAX_NAMESPACE = 200

# 100 ns intervals between the UUID epoch (1582-10-15) and the Unix epoch.
_UUID_EPOCH = 0x01B21DD213814000

#: Flushes stop() makes at most, when changes keep coming while it flushes.
_STOP_ROUNDS = 5
#: Seconds stop() gives the async event callbacks still running before it cancels them.
_DRAIN_TIMEOUT = 5.0

# Started databases by document class, in start order: the first one is the default binding.
_bound: dict[type[Document], list[Database]] = {}
# Callbacks registered on Call.objects (no database given) apply to every database holding Call.
_class_listeners: dict[type[Document], Listeners] = {}


def class_listeners(cls: type[Document]) -> Listeners:
    listeners = _class_listeners.get(cls)
    if listeners is None:
        listeners = _class_listeners[cls] = Listeners()
    return listeners


@atexit.register
def _warn_unstopped_at_exit() -> None:
    """The process ends with databases never stopped (and their loop not ended by asyncio.run)."""
    for db in {id(db): db for dbs in _bound.values() for db in dbs}.values():
        db._warn_unstopped("the process is exiting")


def bound_database(cls: type[Document]) -> Database:
    """The default database of ``cls``: the first started, not stopped one that holds it."""
    dbs = _bound.get(cls)
    if not dbs:
        raise NotBoundError(
            f"{cls.__name__}.objects is not bound to a database: start one that holds it first "
            f"(`db = Database(nc, ...); await db.start()` or `async with Database(...) as db:`), "
            f"or use {cls.__name__}.objects.using(db)"
        )
    return dbs[0]


def _node_from_location(location: str) -> int:
    # 48 bits from a stable hash, multicast bit set as RFC 4122 asks of non-MAC node ids.
    digest = hashlib.blake2b(location.encode(), digest_size=6).digest()
    return int.from_bytes(digest, "big") | (1 << 40)


@dataclass(frozen=True)
class DeadLetter:
    """A stored entry that did not decode or validate, moved aside from its collection.

    ``error`` is the full text of the error; ``summary`` the same in one line: ``field.path: message``
    for each invalid field (the first three), or ``Invalid JSON: ...``, or the exception's message.
    Letters stored before summaries were get theirs from ``error``'s text.

    Stored in the bucket ``{namespace}-_dead_letters`` under the key ``{collection}.{key}`` as a JSON
    object (the raw value base64-encoded); :meth:`encode` and :meth:`from_entry` are that format.
    """

    collection: str
    key: str
    error: str
    value: bytes
    revision: int
    location: str = ""
    time: float = 0.0
    summary: str = ""

    def __post_init__(self) -> None:
        if not self.summary and self.error:
            object.__setattr__(self, "summary", _summary_of_text(self.error))

    @property
    def id(self) -> str:
        """Its key in the dead-letter bucket."""
        return f"{self.collection}.{self.key}"

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "collection": self.collection,
                "key": self.key,
                "revision": self.revision,
                "error": self.error,
                "value": base64.b64encode(self.value).decode(),
                "location": self.location,
                "time": self.time,
                "summary": self.summary,
            }
        )

    @classmethod
    def from_entry(cls, entry: Entry) -> DeadLetter:
        """Read one entry of the dead-letter bucket; ``ValueError`` if it is not one."""
        try:
            r = orjson.loads(entry.value)
            return cls(
                collection=str(r["collection"]),
                key=str(r["key"]),
                error=str(r["error"]),
                value=base64.b64decode(r["value"], validate=True),
                revision=int(r["revision"]),
                location=str(r.get("location", "")),
                time=float(r.get("time", 0.0)),
                summary=str(r.get("summary") or ""),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ValueError(f"dead letter {entry.key!r} is unreadable: {exc}") from exc


#: Validation errors a summary names; the rest are counted.
_SUMMARY_ERRORS = 3
_PYDANTIC_TITLE = re.compile(r"^\d+ validation errors? for ")
_PYDANTIC_DETAIL = re.compile(r" \[type=.*\]$")


def _one_line(parts: list[str]) -> str:
    shown = [" ".join(p.split()) for p in parts[:_SUMMARY_ERRORS]]
    more = len(parts) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _error_summary(exc: BaseException, value: bytes) -> str:
    """:attr:`DeadLetter.summary` for the exception that made ``value`` a dead letter."""
    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors(include_url=False, include_context=False, include_input=False):
            loc = ".".join(str(p) for p in e["loc"])
            parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
        if parts:
            return _one_line(parts)
    try:  # Pydantic's JSON reader says only "expected value at line 1 column 1": say what it read
        pydantic_core.from_json(value)
    except ValueError as bad_json:
        return _one_line([f"Invalid JSON: {bad_json}"])
    return _one_line([str(exc) or type(exc).__name__])


def _summary_of_text(error: str) -> str:
    """A summary from an error's text alone, for letters stored before summaries were: Pydantic's
    layout (a title line, then per error an unindented location line, unless it is empty, and the
    message indented by two) read back into ``location: message``. Other text: its lines joined."""
    lines = error.strip().splitlines()
    if not lines or not _PYDANTIC_TITLE.match(lines[0]):
        return _one_line([" ".join(lines)])
    parts: list[str] = []
    loc = ""
    for line in lines[1:]:
        if not line.startswith(" "):
            loc = line.strip()
        elif not line.startswith("   ") and line.strip():  # deeper: "For further information visit"
            msg = _PYDANTIC_DETAIL.sub("", line.strip())
            parts.append(f"{loc}: {msg}" if loc else msg)
            loc = ""
    return _one_line(parts) if parts else lines[0]


class Database:
    """A set of document collections kept in memory and synced through one store.

    ``nc`` is a connected ``nats.aio.client.Client``, ``None`` for a private in-memory store, or
    any ``KVStore`` (e.g. one ``MemoryStore`` shared by several databases, which then sync with
    each other like nodes do through NATS).

    ``namespace`` (letters, digits, ``_``, ``-``) prefixes every bucket: ``{namespace}-{collection}``.
    ``location`` names this node: it is stored with each write and is the node part of the uuids
    it assigns. ``flush_interval`` is the seconds from the first pending change to the background
    flush. ``documents`` are the classes it holds (an iterable or a ``Registry``); ``None`` means
    every concrete class of the default registry defined when ``start()`` runs. Invalid values
    raise ``ValueError``.
    """

    def __init__(
        self,
        nc: NatsClient | KVStore | None = None,
        *,
        namespace: str = "default",
        location: str = "local",
        flush_interval: float = 0.1,
        documents: Iterable[type[Document]] | Registry | None = None,
    ) -> None:
        if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
            raise ValueError(f"namespace must be letters, digits, '_' or '-', got {namespace!r}")
        if len(namespace) > MAX_NAMESPACE:
            raise ValueError(
                f"namespace has {len(namespace)} characters; at most {MAX_NAMESPACE} leave room for "
                f"its bucket names ('{{namespace}}-{{collection}}', at most {MAX_BUCKET_NAME})"
            )
        if not isinstance(location, str) or not location:
            raise ValueError(f"location must be a non-empty string, got {location!r}")
        try:
            location.encode()
        except UnicodeEncodeError:
            raise ValueError(f"location must be encodable as UTF-8, got {location!r}") from None
        interval: object = flush_interval  # checked as what a caller may pass, not as annotated
        if isinstance(interval, bool) or not isinstance(interval, numbers.Real):
            raise TypeError(f"flush_interval must be a number of seconds, got {flush_interval!r}")
        if not (math.isfinite(interval) and float(interval) >= 0):
            raise ValueError(f"flush_interval must be a finite number >= 0, got {flush_interval!r}")
        self.namespace = namespace
        self.location = location
        self.flush_interval = float(flush_interval)
        if documents is not None and not isinstance(documents, Registry):
            documents = self._check_documents(namespace, documents)
        if nc is not None and not isinstance(nc, KVStore) and not hasattr(nc, "jetstream"):
            raise TypeError(
                "Database(nc): nc must be a connected nats-py client (await nats.connect(url)), None "
                f"for the in-memory mode, or a KVStore; got {nc!r}"
            )
        self._nc = nc
        self._documents = documents
        self._store: KVStore | None = None
        self._own_store = False
        self._collections: dict[type[Document], Collection[Any]] = {}
        self._state = "new"
        self._node = _node_from_location(location)
        self._uuid_ts = 0
        self._uuid_high = -1  # ts >> 32 of the last uuid, and what follows its time_low
        self._uuid_rest = ""
        clock_seq = secrets.randbits(14) | 0x8000  # RFC 4122 variant bits
        self._uuid_tail = f"{clock_seq:04x}-{self._node:012x}"
        self.node_id = secrets.token_hex(4)
        self._flush_lock = asyncio.Lock()
        self._stopping = False
        self._stop_task: asyncio.Task[FlushError | None] | None = None  # the one stop, shared
        self._stop_outcome: asyncio.Future[FlushError | None] | None = None  # once done flushing
        self._stop_flush: asyncio.Task[None] | None = None  # stop()'s own flush under way
        self._gave_up: BaseException | None = None  # why stop() gave up flushing
        self._flush_owner: asyncio.Task[Any] | None = None  # the task inside flush()'s lock
        self._interrupted: dict[asyncio.Task[Any], int] = {}  # flushes stop() cancelled: how often
        self._stop_callers: set[asyncio.Task[Any]] = set()  # tasks awaiting stop()
        self._drain_deadline = 0.0  # loop time until which stop() waits for event callbacks
        self._drain_wake: asyncio.Future[None] | None = None
        self._stuck_callbacks: set[asyncio.Task[Any]] = set()  # cancelled, and still running
        self._start_task: asyncio.Task[Any] | None = None  # the task in start(), until it ends
        self._start_done: asyncio.Future[None] | None = None  # once start() has ended
        self._warned_unstopped = False
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._dead_bucket: Bucket | None = None

    def __repr__(self) -> str:
        return f"Database(namespace={self.namespace!r}, location={self.location!r}, state={self._state})"

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._state == "started"

    @property
    def store(self) -> KVStore:
        if self._store is None:
            raise DatabaseError("the database is not started")
        return self._store

    @staticmethod
    def _check_documents(namespace: str, documents: object) -> tuple[type[Document], ...]:
        """``documents`` given as classes: concrete Document subclasses, whose bucket names fit."""
        if isinstance(documents, (str, bytes)) or not isinstance(documents, Iterable):
            raise TypeError(
                f"documents must be an iterable of Document classes, a Registry or None, got {documents!r}"
            )
        classes = tuple(documents)  # a generator is read once, here
        for cls in classes:
            if not (isinstance(cls, type) and issubclass(cls, Document)) or cls is Document:
                raise TypeError(f"documents must be Document subclasses, got {cls!r}")
            if cls.__odm__.abstract:
                raise ValueError(f"documents: {cls.__name__} is abstract: it has no collection")
            name = f"{namespace}-{cls.__odm__.collection}"
            if len(name) > MAX_BUCKET_NAME:
                raise ValueError(
                    f"{cls.__name__}'s bucket name {namespace!r}-{cls.__odm__.collection!r} has "
                    f"{len(name)} characters; at most {MAX_BUCKET_NAME} are allowed"
                )
        names = [c.__odm__.collection for c in classes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"documents: two document classes share collection name(s) {dup}")
        return classes

    def _classes(self) -> list[type[Document]]:
        docs = self._documents
        if docs is None:
            docs = default_registry
        classes = list(docs)
        for cls in classes:
            if not (isinstance(cls, type) and issubclass(cls, Document)) or cls is Document:
                raise DatabaseError(f"documents must be Document subclasses, got {cls!r}")
            if cls.__odm__.abstract:
                raise DatabaseError(f"{cls.__name__} is abstract: it has no collection")
        names = [c.__odm__.collection for c in classes]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise DatabaseError(f"two document classes share collection name(s) {sorted(dup)}")
        return classes

    async def start(self) -> Self:
        """Open (creating where missing) every collection's storage, load it, watch it.

        A ``stop()`` called meanwhile ends it: it then raises ``DatabaseError`` (the database is
        stopped, and can not be started again)."""
        if self._state != "new":
            raise DatabaseError(f"start() was already called on {self!r}; make a new Database")
        self._state = "starting"
        me = asyncio.current_task()
        self._start_task = me
        done = self._start_done = asyncio.get_running_loop().create_future()
        try:
            nc = self._nc
            if nc is None:
                self._store, self._own_store = MemoryStore(), True
            elif isinstance(nc, KVStore):
                self._store = nc
            else:
                from .store.nats import NatsKVStore

                self._store, self._own_store = NatsKVStore(nc, namespace=self.namespace), True
            for cls in self._classes():
                # Class-level callbacks fire here too, but the tasks they start are this database's.
                coll: Collection[Any] = Collection(self, cls, class_listeners(cls).for_database())
                bucket = await self._store.open_bucket(
                    self.bucket_name(cls.__odm__.collection), cls.__odm__.options.bucket
                )
                self._collections[cls] = coll
                self._check_not_stopped()
                await coll.load(bucket)
                poison, coll.poison = coll.poison, []
                for entry, exc in poison:
                    await self.dead_letter(coll, entry, exc)
                self._check_not_stopped()
            for coll in self._collections.values():
                coll.start_watch()
                assert coll.watch_task is not None
                coll.watch_task.add_done_callback(self._watch_ended)
        except BaseException as exc:
            self._start_task = None  # stop() interrupts it no more: it stops by itself now
            # stop() cancelled it: a DatabaseError, not a cancellation of the caller's task.
            ours = me is not None and self._take_interrupt(me)
            try:
                self._drain_deadline = asyncio.get_running_loop().time() + _DRAIN_TIMEOUT
                await self._shutdown()
            finally:
                self._state = "stopped"
                done.set_result(None)
            if ours and isinstance(exc, asyncio.CancelledError):
                raise DatabaseError(f"stop() was called while start() ran: {self!r}") from None
            raise
        self._start_task = None
        self._state = "started"
        for cls in self._collections:
            _bound.setdefault(cls, []).append(self)
        done.set_result(None)
        return self

    def _watch_ended(self, task: asyncio.Task[None]) -> None:
        # A watch cancelled while the database is started, not by stop(): its event loop is ending
        # (asyncio.run() cancels the tasks left when the main coroutine returns).
        if task.cancelled() and self._state == "started" and not self._stopping:
            self._warn_unstopped("its event loop is ending")

    def _warn_unstopped(self, why: str) -> None:
        """Changes never written because stop() was never called: said once, loudly."""
        if self._warned_unstopped:
            return
        self._warned_unstopped = True
        lost = [f"{name}/{key}" for name, key, _ in self._unwritten(DatabaseError(why)).failures]
        if lost:
            more = f" and {len(lost) - 10} more" if len(lost) > 10 else ""
            log.warning(
                "%r was not stopped and %s: %d unwritten change(s) are lost (%s%s). "
                "Call `await db.stop()` (or use `async with Database(...) as db:`) before the end.",
                self,
                why,
                len(lost),
                ", ".join(lost[:10]),
                more,
            )

    def _check_not_stopped(self) -> None:
        """In start(): stop() was called (and its cancellation of start() did not get through)."""
        if self._stop_task is not None:
            raise DatabaseError(f"stop() was called while start() ran: {self!r}")

    async def _abort_start(self, done: asyncio.Future[None]) -> None:
        """stop() while start() runs: interrupt it (it releases what it opened, then raises
        ``DatabaseError``) and wait until it has."""
        while not done.done():
            start = self._start_task
            if start is not None and not start.done():
                self._interrupted[start] = self._interrupted.get(start, 0) + 1
                start.cancel()
            await asyncio.wait([done], timeout=0.5)

    async def stop(self, *, timeout: float | None = None) -> None:
        """Flush everything, then stop watching and release the store. Idempotent.

        Call it (or use ``async with``) before the event loop ends: otherwise the changes not yet
        flushed are lost, and only a logged warning names them.

        Changes other tasks make while it flushes are flushed too (in further rounds, up to five;
        documents still changing after that are reported in the ``FlushError``).

        Without ``timeout`` it waits until every pending change is acknowledged, however long the
        server is away. With ``timeout`` it gives up flushing after that many seconds: flushes other
        tasks are awaiting then end too, with a ``FlushError``, and nothing is written after that.
        Either way, changes that could not be written are reported after stopping, in a
        ``FlushError`` naming each document (they are lost with this process unless you act on it).

        Concurrent calls share one stop: each returns (or raises the same ``FlushError``) when it
        is over, and the first to give up ends the flushing for all of them.

        Cancelled (e.g. by an ``asyncio.timeout`` around it), it gives up as a timeout would, still
        stops, then lets the cancellation through: the unwritten documents are only logged.
        """
        if self._state == "new":
            self._state = "stopped"
            return
        if self._state == "starting" and asyncio.current_task() is self._start_task:
            raise DatabaseError("stop() was called from inside start()")  # it would wait for itself
        task = self._stop_task
        if task is None:
            if self._state == "stopped":
                return  # start() failed and released everything itself
            loop = asyncio.get_running_loop()
            self._drain_deadline = loop.time() + _DRAIN_TIMEOUT
            self._stop_outcome = loop.create_future()
            task = self._stop_task = loop.create_task(self._run_stop(), name=f"stop {self!r}")
        elif task.done():
            return  # an earlier stop() is over, and raised what it had to report
        # An event callback awaiting stop() waits for the stop: the stop must not wait for it.
        me = asyncio.current_task()
        if me is not None:
            self._stop_callers.add(me)
            self._wake_drain()
        try:
            done, _ = await asyncio.wait([task], timeout=timeout)
        except asyncio.CancelledError:
            # Cut short from outside (``asyncio.timeout`` around it, a cancelled task): it gives
            # up as a timeout does, and still stops (unbinds, ends the watches, releases the
            # store) before the cancellation goes on; the documents left unwritten are logged.
            self._give_up(DatabaseError("not acknowledged before stop() was cancelled"))
            await asyncio.wait([task])
            raise
        finally:
            if me is not None:
                self._stop_callers.discard(me)
        if not done:
            self._give_up(TimeoutError(f"not acknowledged within stop(timeout={timeout})"))
            await asyncio.wait([task])
        error = task.result()
        if error is not None:
            raise FlushError(list(error.failures))  # one exception per caller: no shared traceback

    def _give_up(self, reason: BaseException) -> None:
        """stop() waits no longer for acknowledgements: the flushes under way end, and what they
        had not written is reported with ``reason``."""
        # The callbacks still running are not waited for any more either.
        self._drain_deadline = min(self._drain_deadline, asyncio.get_running_loop().time())
        self._wake_drain()
        if self._gave_up is not None or self._state != "started":
            return  # already given up, or done flushing
        self._gave_up = reason
        self._unbind()
        flush = self._stop_flush
        if flush is not None and not flush.done():
            flush.cancel()

    async def _run_stop(self) -> FlushError | None:
        """The one stop of this database, whoever asked: flush, then release everything."""
        self._stopping = True
        error: FlushError | None = None
        start = self._start_done
        if start is not None and not start.done():
            await self._abort_start(start)
        if self._state == "stopped":  # start() released everything itself
            if self._stop_outcome is not None and not self._stop_outcome.done():
                self._stop_outcome.set_result(None)
            return None
        if self._state == "started":
            error = await self._flush_for_stop()
        self._state = "stopped"  # no await since the last check: nothing changed in between
        outcome = self._stop_outcome
        if outcome is not None and not outcome.done():
            outcome.set_result(error)  # for flushes that waited their turn behind stop()'s
        late = await self._shutdown()
        if late:
            # Changed (by a callback, say) after the last flush: reported, not silently dropped.
            failures = list(error.failures) if error is not None else []
            known = {(c, k) for c, k, _ in failures}
            reason = DatabaseError("changed after stop()'s last flush: not written")
            failures.extend((c, k, reason) for c, k in late if (c, k) not in known)
            error = FlushError(failures)
        if error is not None:
            log.error("%r: stopped with unwritten changes: %s", self, error)
        return error

    async def _flush_for_stop(self) -> FlushError | None:
        """Flush, and let the event callbacks finish, until nothing is left: a change made while
        a flush was writing (or by a callback) is not in it. Changes still coming after a few
        rounds are reported, not waited for. Returns what could not be written."""
        loop = asyncio.get_running_loop()
        for _ in range(_STOP_ROUNDS):
            exc: BaseException | None = None
            if self._gave_up is None:
                # A task of its own, so that giving up can cancel it whoever is waiting.
                flush = self._stop_flush = loop.create_task(self._stop_round())
                await asyncio.wait([flush])
                self._stop_flush = None
                exc = None if flush.cancelled() else flush.exception()
            if self._gave_up is not None:
                return await self._abandon(self._gave_up)
            if isinstance(exc, FlushError):
                return exc
            if exc is not None:
                log.error("%r: stop() could not flush", self, exc_info=exc)
                return self._unwritten(exc)
            if not self._busy():
                return None
        return self._unwritten(DatabaseError(f"still changing after {_STOP_ROUNDS} flushes by stop()"))

    async def _stop_round(self) -> None:
        await self.flush()
        # What the event callbacks still running change is written by the next round.
        await self._drain_callbacks()

    def _busy(self) -> bool:
        """Whether anything is left to write, or a callback that may change something runs."""
        return any(c.pending or c.deletes for c in self._collections.values()) or bool(
            self._running_callbacks()
        )

    def _unwritten(self, reason: BaseException) -> FlushError:
        """Every document left unwritten: ``reason`` for each, or why it failed."""
        failures: list[tuple[str, str, BaseException]] = []
        for coll in self._collections.values():
            # Also what a flush still holds, and what failed for good.
            keys = (coll.dirty_keys() | set(coll.inflight_ids)) - set(coll.failed)
            failures.extend((coll.name, key, reason) for key in sorted(keys))
            failures.extend((coll.name, key, exc) for key, exc in sorted(coll.failed.items()))
        return FlushError(failures)

    async def _abandon(self, reason: BaseException) -> FlushError | None:
        """stop() gave up: end every flush still writing, then name what is left unwritten."""
        self._cancel_flush_timer()
        task = self._flush_task
        if task is not None and not task.done():
            # The background flush may hold writes still awaiting their acks: back to pending
            # first, so the report names them.
            await cancel_and_wait(task)
        # A flush an application task awaits: interrupted in the same way (it raises FlushError),
        # as often as it takes (see cancel_and_wait), and only while it is inside the flush. Those
        # waiting their turn see the database given up and write nothing.
        lock = self._flush_lock
        while True:
            owner = self._flush_owner
            if owner is not None and not owner.done():
                self._interrupted[owner] = self._interrupted.get(owner, 0) + 1
                owner.cancel()
            try:
                await asyncio.wait_for(lock.acquire(), 0.5)
            except asyncio.TimeoutError:
                continue
            lock.release()
            break
        error = self._unwritten(reason)
        return error if error.failures else None

    def _take_interrupt(self, task: asyncio.Task[Any]) -> bool:
        """Whether the cancellation ``task`` got came from stop() giving up (and from nobody else):
        it then ends with an error of its own, not as cancelled."""
        n = self._interrupted.pop(task, 0)
        if not n:
            return False
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+
        if uncancel is None:
            return True
        left = 0
        for _ in range(n):
            left = uncancel()
        return left == 0

    def _unbind(self) -> None:
        """No longer the default database of its classes."""
        for cls in self._collections:
            dbs = _bound.get(cls)
            if dbs is not None and self in dbs:
                dbs.remove(self)
                if not dbs:
                    del _bound[cls]

    def _cancel_flush_timer(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    async def _shutdown(self) -> list[tuple[str, str]]:
        """Release everything; return the documents changed since the last flush."""
        self._unbind()
        self._cancel_flush_timer()
        task = self._flush_task
        if task is not None and not task.done():
            await cancel_and_wait(task)
        for coll in self._collections.values():
            await coll.stop_watch()
        # The callbacks fired after stop()'s last drain (by the watch, until now): what they
        # change is not written, but reported.
        await self._drain_callbacks()
        late = [(coll.name, key) for coll in self._collections.values() for key in sorted(coll.dirty_keys())]
        for coll in self._collections.values():
            coll.detach_all()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._store is not None and self._own_store:
            await self._store.close()
        return late

    def _running_callbacks(self) -> set[asyncio.Task[Any]]:
        """The async event callbacks this database started that are still running; not those
        awaiting stop() (they wait for it), nor those that would not end when cancelled."""
        tasks: set[asyncio.Task[Any]] = set()
        for coll in self._collections.values():
            tasks |= coll.listeners.running()
            tasks |= coll.class_listeners.running()
        return tasks - self._stop_callers - self._stuck_callbacks

    def _wake_drain(self) -> None:
        wake = self._drain_wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _drain_callbacks(self) -> None:
        """Wait for the async callbacks still running, until ``_drain_deadline`` (``_DRAIN_TIMEOUT``
        after stop() began); cancel those still running then: a callback stuck for ever must not
        make ``stop()`` hang."""
        loop = asyncio.get_running_loop()
        while True:
            tasks = self._running_callbacks()
            if not tasks:
                return
            left = self._drain_deadline - loop.time()
            if left <= 0:
                break
            # Woken early when a callback starts awaiting stop() (no longer to be waited for).
            wake = self._drain_wake = loop.create_future()
            try:
                await asyncio.wait([*tasks, wake], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._drain_wake = None
                wake.cancel()
        for task in tasks:
            log.warning("event callback %r still running at stop(): cancelled", task)
            task.cancel()
        # What they do while unwinding (a finally: block) is still flushed, or reported.
        _, stuck = await asyncio.wait(tasks, timeout=0.5)
        self._stuck_callbacks |= stuck

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- collections -------------------------------------------------------------------------------
    def bucket_name(self, collection: str) -> str:
        """The bucket holding ``collection``: ``{namespace}-{collection}``."""
        return f"{self.namespace}-{collection}"

    def collection(self, cls: type[D]) -> Collection[D]:
        """The engine state of ``cls`` in this database."""
        coll = self._collections.get(cls)
        if coll is None:
            if self._state != "started":
                raise DatabaseError(f"{self!r} is not started: await db.start() first")
            raise DatabaseError(f"{cls.__name__} is not one of this database's documents")
        if self._state != "started":
            raise DatabaseError(f"{self!r} is {self._state}; it serves no documents")
        return coll

    @property
    def documents(self) -> list[type[Document]]:
        return list(self._collections)

    def new_uuid(self) -> str:
        """A UUID1 (RFC 4122) whose node is this database's location hash.

        Built directly rather than with ``uuid.uuid1``, which is 4x slower and draws a new random
        clock sequence per call: here the 100 ns timestamp never repeats within a database (it is
        bumped past the last one), and the clock sequence is random per database, so two processes at
        one location would also need the same tick to collide."""
        ts = time.time_ns() // 100 + _UUID_EPOCH
        if ts <= self._uuid_ts:
            ts = self._uuid_ts + 1
        self._uuid_ts = ts
        high = ts >> 32
        if high != self._uuid_high:  # every 429 s: time_mid and time_hi change
            self._uuid_high = high
            self._uuid_rest = f"-{high & 0xFFFF:04x}-{((high >> 16) & 0x0FFF) | 0x1000:04x}-{self._uuid_tail}"
        return f"{ts & 0xFFFFFFFF:08x}{self._uuid_rest}"

    def background(self, fut: asyncio.Future[Any]) -> None:
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    # -- flush -------------------------------------------------------------------------------------
    def schedule_flush(self) -> None:
        """A change is pending: flush ``flush_interval`` seconds after the first one."""
        if self._flush_handle is not None or self._state != "started" or self._stopping:
            return
        if self._flush_task is not None and not self._flush_task.done():
            return  # the running flush reschedules itself if anything is left
        if self.flush_interval == 0:
            # The task's first step runs on the next loop iteration anyway, after the code making
            # this change has yielded: a timer on top of it would only add an iteration of latency.
            self._start_background_flush()
            return
        loop = asyncio.get_running_loop()
        self._flush_handle = loop.call_later(self.flush_interval, self._start_background_flush)

    def _start_background_flush(self) -> None:
        self._flush_handle = None
        self._flush_task = asyncio.get_running_loop().create_task(self._background_flush())

    async def _background_flush(self) -> None:
        if self._state != "started" or self._stopping:
            # Its timer fired while stop() was flushing; stop() flushes until nothing is left.
            self._flush_task = None
            return
        try:
            await self.flush()
        except FlushError as exc:
            log.error("%r: background flush: %s", self, exc)
        except Exception:
            log.exception("%r: background flush failed", self)
        finally:
            self._flush_task = None
            if self._state == "started" and any(c.pending or c.deletes for c in self._collections.values()):
                self.schedule_flush()

    async def flush(self) -> int:
        """Write every pending change; return when JetStream has acknowledged each of them.

        Returns how many documents were written or deleted. Conflicts are merged and retried, lost
        connections retried until the server answers. Documents that cannot be written at all
        (too large, bad key, bucket gone) are reported together in a ``FlushError`` after every
        other document was written; they stay in memory and dirty.
        """
        if self._state != "started":
            raise DatabaseError(f"{self!r} is not started")
        async with self._flush_lock:
            if self._gave_up is None and self._state == "started":
                me = asyncio.current_task()
                self._flush_owner = me
                try:
                    return await self._flush_locked(me)
                finally:
                    self._flush_owner = None
        # stop() flushed (or gave up on) everything while this flush waited its turn.
        return await self._outcome_of_stop()

    async def _flush_locked(self, me: asyncio.Task[Any] | None) -> int:
        targets: dict[Collection[Any], set[str]] = {}
        for coll in self._collections.values():
            if coll.failed:
                for key in coll.failed:
                    coll.pending[key] = None
                coll.failed.clear()
            keys = coll.dirty_keys()
            if keys:
                targets[coll] = keys
        written = 0
        failures: list[tuple[str, str, BaseException]] = []
        delay = 0.02
        try:
            while targets:
                transient = False
                for coll in list(targets):
                    out = await coll.write(targets[coll])
                    written += out.written
                    failures.extend(out.failures)
                    transient = transient or out.transient
                    if out.retry:
                        targets[coll] = out.retry
                    else:
                        del targets[coll]
                if targets and transient:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
        except BaseException as exc:
            # Cancelled midway (or failed): what it took is pending again, and the background
            # flush writes it later, unless stop() is the one giving up.
            if not self._stopping:
                self.schedule_flush()
            if isinstance(exc, asyncio.CancelledError) and me is not None and self._take_interrupt(me):
                # stop() gave up: this flush ends now, and what it had not written is named.
                reason = DatabaseError(f"not written: stop() gave up on the database ({self._gave_up})")
                failures.extend(
                    (coll.name, key, reason)
                    for coll, keys in targets.items()
                    for key in sorted(keys & (coll.dirty_keys() | set(coll.inflight_ids)))
                )
                if not failures:
                    return written
                raise FlushError(failures) from None
            raise
        if failures:
            raise FlushError(failures)
        return written

    async def _outcome_of_stop(self) -> int:
        """For a flush that waited its turn while stop() ended the database: what stop() wrote
        is written (0 more here), what it could not write is this flush's ``FlushError`` too."""
        outcome = self._stop_outcome
        if outcome is None:
            raise DatabaseError(f"{self!r} is not started")
        error = await asyncio.shield(outcome)
        if error is not None:
            raise FlushError(list(error.failures))
        return 0

    # -- dead letters ------------------------------------------------------------------------------
    async def _dead_letters_bucket(self) -> Bucket:
        if self._dead_bucket is None:
            self._dead_bucket = await self.store.open_bucket(self.bucket_name(DEAD_LETTERS), BucketConfig())
        return self._dead_bucket

    async def dead_letter(
        self, coll: Collection[Any], entry: Entry, exc: BaseException, *, remove: bool = True
    ) -> None:
        """Move an entry that does not decode aside, so the collection still loads.

        ``remove=False`` when the engine writes a good version over it instead."""
        log.error(
            "%s/%s (revision %d) does not decode, moved to dead letters: %s",
            coll.name,
            entry.key,
            entry.revision,
            exc,
        )
        record = DeadLetter(
            collection=coll.name,
            key=entry.key,
            error=str(exc),
            value=entry.value,
            revision=entry.revision,
            location=self.location,
            time=time.time(),
            summary=_error_summary(exc, entry.value),
        ).encode()
        try:
            dead = await self._dead_letters_bucket()
            res = await dead.write([WriteOp(f"{coll.name}.{entry.key}", record)])
            if isinstance(res[0], BaseException):
                raise res[0]
            assert coll.bucket is not None
            if remove:
                # Only that very revision is removed: a fixed version written meanwhile stays.
                # Marked as a removal: a node holding the document writes it back over the marker.
                await coll.bucket.write([WriteOp(entry.key, None, entry.revision, removes=entry.revision)])
        except StoreError as err:
            log.error("could not move %s/%s to dead letters: %s", coll.name, entry.key, err)

    async def dead_letters(self) -> list[DeadLetter]:
        """Entries of this database's collections that did not decode, moved aside."""
        bucket = await self._dead_letters_bucket()
        snap = await bucket.load()
        out: list[DeadLetter] = []
        for e in snap.entries:
            try:
                out.append(DeadLetter.from_entry(e))
            except ValueError as exc:
                log.warning("%s", exc)
        return sorted(out, key=lambda d: (d.collection, d.key))

    async def requeue_dead_letter(
        self, letter: DeadLetter, value: bytes | str | Mapping[str, Any] | None = None
    ) -> Document:
        """Validate a dead letter (or a fixed ``value`` for it) with today's schema and store it.

        ``value`` is the stored form (JSON ``bytes`` or ``str``) or a mapping of the fields, e.g.
        ``orjson.loads(letter.value)`` with the bad field corrected; a mapping is serialised to JSON
        and read back like a stored value, so it is validated exactly as one. Another type is a
        ``TypeError``. Raises ``pydantic.ValidationError`` if it still does not validate, and
        ``ValueError`` if it is not a JSON object (nothing changes then). Returns the document, now
        in its collection.
        """
        from . import codec

        raw = letter.value if value is None else _requeue_bytes(value)
        cls = next((c for c in self._collections if c.__odm__.collection == letter.collection), None)
        if cls is None:
            raise DatabaseError(f"no collection {letter.collection!r} in {self!r}")
        doc = codec.decode(cls, letter.key, raw)
        coll = self.collection(cls)
        existing = coll.docs.get(letter.key)
        if existing is not None:
            raise DatabaseError(f"{letter.collection}/{letter.key} exists again; delete it before requeueing")
        coll.add(doc)
        try:
            await self.flush()
        except FlushError as e:
            if any(c == letter.collection and k == letter.key for c, k, _ in e.failures):
                raise  # not stored: the letter stays, and the document stays pending
            # Stored; what failed are other documents. The letter goes, then they are reported.
            await self._drop_dead_letter(letter)
            raise
        await self._drop_dead_letter(letter)
        return doc

    async def _drop_dead_letter(self, letter: DeadLetter) -> None:
        bucket = await self._dead_letters_bucket()
        await bucket.write([WriteOp(letter.id, None)])


def _requeue_bytes(value: object) -> bytes:
    """The JSON a fixed value for :meth:`Database.requeue_dead_letter` stands for."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, Mapping):
        # Pydantic's writer rather than orjson: integers beyond 64 bits stay exact (orjson refuses
        # them), and the decode path reads them back with Pydantic's reader too.
        try:
            return pydantic_core.to_json(dict(value))
        except pydantic_core.PydanticSerializationError as exc:
            raise TypeError(f"the fixed value for a dead letter is not JSON-serialisable: {exc}") from exc
    raise TypeError(
        "the fixed value for a dead letter must be bytes, a str of JSON or a mapping of the fields, "
        f"not {type(value).__name__}"
    )
