"""One collection of one database: the documents in memory, their indexes, and their sync.

Invariants (per key):

* ``doc._odm_rev`` is the revision of the stored version the document's *clean* fields reflect; it
  is the compare-and-set base of the next write. ``0`` means never stored by anyone we know of.
* ``doc._odm_dirty`` are fields changed here and not yet handed to a write; ``doc._odm_inflight``
  the ones in the write under way. Both are protected: nothing arriving from elsewhere overwrites
  them. Everything else follows the newest stored version seen.
* An entry from the watch is applied only if its revision is newer than ``_odm_rev``: the echo of
  our own write (or anything older) can never roll local state back.
* A delete wins over concurrent edits: a remote delete drops local pending edits, and a local delete
  is written unconditionally.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .. import codec
from .._fieldsets import share
from .._tracking import exclusive, plain_copy, same_value
from ..document import Document, mark_dirty
from ..exceptions import (
    ConnectionClosed,
    ConnectionLost,
    DatabaseError,
    StoreError,
    UniqueViolation,
)
from ..store.base import Bucket, Conflict, Entry, Operation, Snapshot, WriteOp, WriteResult
from .events import Listeners
from .indexes import FieldIndex

if TYPE_CHECKING:
    from ..database import Database

__all__ = ["Collection", "FlushOutcome"]

log = logging.getLogger("brainless_odm.engine")

D = TypeVar("D", bound=Document)

_slot_coll = Document.__dict__["_odm_coll"].__set__
_slot_rev = Document.__dict__["_odm_rev"].__set__
_slot_dirty = Document.__dict__["_odm_dirty"].__set__
_slot_inflight = Document.__dict__["_odm_inflight"].__set__
_slot_raw = Document.__dict__["_odm_raw"].__set__
_NONE: frozenset[str] = frozenset()


class _Repair(frozenset[str]):
    """In ``Collection.restoring``: fields dirty only to repair the remote values a probe of ours
    stored stale when it landed (see ``Collection._landed``). An unreadable version's restore is
    superseded by any readable version; a repair only field by field, by a version that changed
    the field (the others it carries over from the probe, stale)."""

    __slots__ = ()


#: Writes per round of a large flush (two rounds are under way at a time, well inside the
#: bucket's window of unacknowledged publishes).
_ROUND = 1024
_OUTCOME_UNKNOWN = ConnectionLost("the write was interrupted before its ack came")
#: The fields of a probe: a write of unknown outcome sent again as it was (see ``_build_ops``).
_PROBE: frozenset[str] = frozenset({"<probe>"})


class _GcPaused:
    """No cyclic GC passes inside: loads and flushes allocate a few objects per document and free
    almost none, which would make the GC run full passes over every document in memory, again and
    again (measured: half of a 20k-document flush). Reference counting still frees what it can.

    A class rather than ``@contextmanager``: it is entered twice per flush round, also for one
    change with ``flush_interval=0``, where the generator machinery cost ~2 µs."""

    __slots__ = ("paused",)

    def __init__(self) -> None:
        self.paused = False

    def __enter__(self) -> None:
        self.paused = gc.isenabled()
        if self.paused:
            gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.paused:
            gc.enable()


def gc_paused() -> _GcPaused:
    return _GcPaused()


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended.

    One ``cancel()`` is not always enough: before Python 3.12, ``asyncio.wait_for`` returns the
    result instead of raising ``CancelledError`` when the awaited reply arrives in the same loop
    iteration as the cancellation (nats-py awaits every request that way). The task then goes on,
    e.g. into a watch waiting forever, and ``Database.stop()`` hung on it. So: ask again until it ends.
    """
    task.cancel()
    while True:
        done, _ = await asyncio.wait([task], timeout=0.5)
        if done:
            break
        task.cancel()
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.result()  # retrieve it, so asyncio does not log "exception never retrieved"


class FlushOutcome:
    """What one write round of one collection came to."""

    __slots__ = ("failures", "retry", "transient", "written")

    def __init__(self) -> None:
        self.written = 0
        self.retry: set[str] = set()
        self.transient = False
        self.failures: list[tuple[str, str, BaseException]] = []


class Collection(Generic[D]):
    """The in-memory state and sync machinery of one ``Document`` class in one ``Database``."""

    def __init__(self, db: Database, cls: type[D], listeners: Listeners) -> None:
        self.db = db
        self.cls = cls
        self.info = cls.__odm__
        self.name = self.info.collection
        self.bucket: Bucket | None = None
        self.docs: dict[str, D] = {}
        self.indexes: dict[str, FieldIndex] = {
            f: FieldIndex(f, unique=f in self.info.unique) for f in self.info.indexed
        }
        self.class_listeners = listeners  # registered on Call.objects: every database
        self.listeners = Listeners()  # registered on Call.objects.using(db): this one
        self.pending: dict[str, None] = {}  # keys with changes to write, in change order
        # Keys deleted here whose delete is not acknowledged yet: its write id once sent (a retry
        # sends the same one, so a delete that did land is a duplicate and removes nothing again).
        self.deletes: dict[str, str | None] = {}
        # What the watch brought for a key in ``deletes`` meanwhile: applied if the delete turns
        # out to have landed before it.
        self.set_aside: dict[str, Entry] = {}
        # CAS base for re-creating a key that has a delete marker; 0 for a key re-added before its
        # delete was written (it may still hold a version: a delete of it must be written).
        self.base: dict[str, int] = {}
        self.tombstones: dict[str, int] = {}  # our acknowledged deletes, until the watch passes them
        self.failed: dict[str, BaseException] = {}  # permanent write failures, until changed again
        self.unknown: dict[str, tuple[str, bytes]] = {}  # key -> (write id, value) of unknown outcome
        # key in ``unknown`` -> the latest remote version merged into it meanwhile (revision, doc):
        # merged with that write's fields protected, it is merged again once the write turns out
        # to have landed before it.
        self.shadow: dict[str, tuple[int, D]] = {}
        # Key in ``unknown`` -> the highest revision any attempt of that write expected. Every
        # version applied since carries the revision its own write expected (``_odm.on``): while
        # each is the one held before it, the versions since the write are all known and none is
        # ours, so once one is past every attempt's revision the write cannot have landed, nor
        # ever will (its compare-and-set is older). A key in ``unknown_gap`` met a version that
        # broke that chain (a skipped version, a write by another tool): no proof, it is probed.
        self.unknown_on: dict[str, int] = {}
        self.unknown_gap: set[str] = set()
        self.applied = 0  # the last revision applied from the bucket
        self.watch_task: asyncio.Task[None] | None = None
        self._write_ids = itertools.count(1)
        self.poison: list[tuple[Entry, Exception]] = []  # entries load could not decode
        self.inflight_ids: dict[str, str] = {}  # key -> write id of the put under way
        self.restoring: dict[str, frozenset[str]] = {}  # key -> fields dirty only to undo poison/a probe

    # -- events ------------------------------------------------------------------------------------
    def _wants_change(self, local: bool) -> bool:
        return self.class_listeners.wants_change(local) or self.listeners.wants_change(local)

    def _wants_field(self, name: str, local: bool) -> bool:
        return self.class_listeners.wants_field(name, local) or self.listeners.wants_field(name, local)

    def _fire_change(self, old: D | None, new: D, local: bool) -> None:
        self.class_listeners.fire_change(old, new, local)
        self.listeners.fire_change(old, new, local)

    def _fire_delete(self, doc: D, local: bool) -> None:
        self.class_listeners.fire_delete(doc, local)
        self.listeners.fire_delete(doc, local)

    def _fire_field(self, doc: D, name: str, old: Any, new: Any, local: bool) -> None:
        self.class_listeners.fire_field(doc, name, old, new, local)
        self.listeners.fire_field(doc, name, old, new, local)

    def snapshot_for_events(self, doc: D) -> D | None:
        """A copy of ``doc`` before a local change, if a local on_change callback will want it."""
        return doc._odm_snapshot() if self._wants_change(True) else None

    # -- local changes -----------------------------------------------------------------------------
    def check_unique(self, doc: D, values: dict[str, Any]) -> None:
        """``UniqueViolation`` if ``doc`` taking ``values`` would share a unique value."""
        self._check_unique(doc.uuid, values)

    def _check_unique(self, key: str | None, values: dict[str, Any]) -> None:
        for name in self.info.unique:
            value = values.get(name)
            if value is None:
                continue
            holders = self.indexes[name].holders(value)
            if holders and (key is None or len(holders) > 1 or key not in holders):
                holder = next(iter(holders))
                raise UniqueViolation(self.name, name, value, None if holder == key else holder)

    def _attach(self, doc: D, key: str, rev: int, *, plain: bool = False) -> None:
        """Store ``doc`` under ``key``. ``plain``: no one else holds its containers (the engine
        decoded it from stored bytes, or ``exclusive`` says so), so their tracking can wait for
        their first read."""
        _slot_coll(doc, self)
        _slot_rev(doc, rev)
        if plain:
            if self.info.tracked:
                _slot_raw(doc, True)
        else:
            for name in self.info.tracked:
                doc._odm_track(name)
        self.docs[key] = doc
        d = doc.__dict__
        for name, idx in self.indexes.items():
            idx.add(key, d[name])

    def _detach(self, key: str, doc: D) -> None:
        del self.docs[key]
        d = doc.__dict__
        for name, idx in self.indexes.items():
            idx.remove(key, d[name])
        _slot_coll(doc, None)
        doc._odm_untrack()

    def add(self, doc: D) -> D:
        if doc._odm_coll is not None:
            if doc._odm_coll is self:
                return doc
            raise DatabaseError(
                f"this {self.cls.__name__} is already stored in another database; add a copy: "
                "doc.model_copy(update={'uuid': None})"
            )
        key = doc.uuid
        if key is None:
            key = self.db.new_uuid()
        elif key in self.docs:
            raise UniqueViolation(self.name, "uuid", key, key)
        self._check_unique(None, doc.__dict__)
        doc.__dict__["uuid"] = key
        share(doc)
        _slot_dirty(doc, _NONE)
        _slot_inflight(doc, _NONE)
        aside = None
        if key in self.deletes:
            # Re-added before its delete was written: the write becomes an overwrite. The key
            # still holds the version that delete was for, so deleting this one must be written.
            del self.deletes[key]
            aside = self.set_aside.pop(key, None)
            self.base.setdefault(key, 0)
        tracked = self.info.tracked
        self._attach(doc, key, 0, plain=bool(tracked) and exclusive(doc.__dict__, tracked))
        self._changed(key)
        if aside is not None:
            # What the watch brought meanwhile is the version this overwrites (as if it came now).
            self._apply_entry(aside)
        if self._wants_change(True):
            self._fire_change(None, doc, True)
        return doc

    def delete(self, doc_or_key: Document | str) -> bool:
        key = doc_or_key if isinstance(doc_or_key, str) else doc_or_key.uuid
        if key is None:
            return False
        doc = self.docs.get(key)
        if doc is None or (isinstance(doc_or_key, Document) and doc is not doc_or_key):
            return False
        self._detach(key, doc)
        self.pending.pop(key, None)
        self.failed.pop(key, None)
        # A write of unknown outcome (ack lost, flush cancelled) may have stored it: delete it too.
        maybe_stored = self._forget_unknown(key)
        if doc._odm_rev or doc._odm_inflight or key in self.base or maybe_stored:
            self.deletes[key] = None
            self.db.schedule_flush()
        self._fire_delete(doc, True)
        return True

    def assigned(self, doc: D, name: str, old: Any, new: Any, before: D | None) -> None:
        """``doc.name`` went from ``old`` to ``new`` (validated). Raises before changing anything."""
        key = doc.uuid
        assert key is not None
        idx = self.indexes.get(name)
        if idx is not None:
            if idx.unique:
                self._check_unique(key, {name: new})
            idx.remove(key, old)
            idx.add(key, new)
        if name in self.info.tracked:
            doc._odm_track(name, old)
        mark_dirty(doc, (name,))
        if self.restoring:
            self._edited_while_restoring(key, name)
        self._changed(key)
        self._fire_field(doc, name, old, new, True)
        if before is not None:
            self._fire_change(before, doc, True)

    def snapshot_inplace(self, doc: D, name: str) -> tuple[Any, D | None] | None:
        """Before an in-place change of ``doc.name``: its old value and old document, if a local
        callback will want them (copies cost, so only then)."""
        wants_field = self._wants_field(name, True)
        wants_change = self._wants_change(True)
        if not wants_field and not wants_change:
            return None
        old_value = plain_copy(doc.__dict__[name]) if wants_field else None
        return old_value, doc._odm_snapshot() if wants_change else None

    def touched(self, doc: D, name: str, before: tuple[Any, D | None] | None = None) -> None:
        """A container or nested model inside ``doc.name`` changed in place."""
        key = doc.uuid
        assert key is not None
        mark_dirty(doc, (name,))
        if self.restoring:
            self._edited_while_restoring(key, name)
        self._changed(key)
        if before is not None:
            old_value, old_doc = before
            if self._wants_field(name, True):
                self._fire_field(doc, name, old_value, doc.__dict__[name], True)
            if old_doc is not None:
                self._fire_change(old_doc, doc, True)

    def _edited_while_restoring(self, key: str, name: str) -> None:
        """``name`` was edited here after an unreadable version of ``key`` arrived: no longer a
        field dirty only to restore the last good version (see ``_apply_entry``), so it is kept
        if another node's restore lands first."""
        restore_only = self.restoring.get(key)
        if restore_only is not None and name in restore_only:
            self.restoring[key] = type(restore_only)(restore_only - {name})

    def _changed(self, key: str) -> None:
        self.pending[key] = None
        if self.failed:
            self.failed.pop(key, None)
        self.db.schedule_flush()

    # -- load and watch ----------------------------------------------------------------------------
    async def load(self, bucket: Bucket) -> int:
        """Read the whole bucket into memory; the number of documents loaded."""
        self.bucket = bucket
        with gc_paused():
            self._load_entries(await bucket.load())
        return len(self.docs)

    def _load_entries(self, snap: Snapshot) -> None:
        cls = self.cls
        validate = cls.model_validate_json
        fast = self.info.fast_decode
        tracked = self.info.tracked
        docs = self.docs
        poison: list[tuple[Entry, Exception]] = []
        for entry in snap.entries:
            try:
                doc = validate(entry.value) if fast else codec.decode_fields(cls, entry.value)
            except Exception as exc:
                try:
                    if not fast:
                        raise
                    # A stored "uuid" member, which the key overrides (see codec.decode_fields).
                    doc = codec.decode_fields(cls, entry.value)
                except Exception:
                    poison.append((entry, exc))
                    continue
            doc.__dict__["uuid"] = entry.key
            share(doc)
            _slot_coll(doc, self)
            _slot_rev(doc, entry.revision)
            if tracked:
                _slot_raw(doc, True)  # tracked from the first read of a container (_TrackedField)
            docs[entry.key] = doc
        for name, idx in self.indexes.items():
            idx.bulk_load((k, d.__dict__[name]) for k, d in docs.items())
        self.applied = snap.revision
        self.poison = poison

    def start_watch(self) -> None:
        self.watch_task = asyncio.get_running_loop().create_task(
            self._watch(), name=f"brainless_odm watch {self.name}"
        )

    async def _watch(self) -> None:
        assert self.bucket is not None
        delay = 0.05
        while True:
            applied = self.applied
            watch = self.bucket.watch(applied)
            try:
                deliver_to = getattr(watch, "deliver_to", None)
                if deliver_to is not None:
                    # The store can hand entries over as they arrive (NATS: from the connection's
                    # reader): no queue and no task switch per entry, which is most of what the
                    # echo of a large flush and a remote change's latency cost.
                    deliver_to(self._apply_logged)
                async for entry in watch:
                    self._apply_logged(entry)
                log.warning("%s: the watch ended (bucket deleted?); restarting it", self.name)
            except ConnectionClosed as err:
                log.error("%s: watch stopped: %s", self.name, err)
                return
            except StoreError as err:
                log.warning(
                    "%s: watch interrupted (%s); resuming after revision %d", self.name, err, self.applied
                )
            finally:
                # Closed here, not left to the finalizer: a sink must not apply entries to a
                # collection whose watch was cancelled (Database.stop).
                aclose = getattr(watch, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
            if self.applied > applied:
                delay = 0.05  # it made progress before failing: not a failing loop
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _apply_logged(self, entry: Entry) -> None:
        try:
            self.apply(entry)
        except Exception:
            log.exception("%s: applying revision %d of %s failed", self.name, entry.revision, entry.key)

    def apply(self, entry: Entry) -> None:
        """Apply one entry from the bucket made by anyone (ourselves included)."""
        if entry.revision <= self.applied:
            return
        self.applied = entry.revision
        self._apply_entry(entry)

    def _apply_entry(self, entry: Entry) -> None:
        key = entry.key
        tomb = self.tombstones.get(key)
        if tomb is not None:
            if entry.revision < tomb:
                return  # older than our own delete
            del self.tombstones[key]
            if entry.revision == tomb:
                return  # the echo of our delete
        if key in self.deletes:
            # Our own delete is on its way and wins, unless it already landed, before this entry
            # (its ack lost, another node then created the key again): see _settle.
            if entry.operation is Operation.PUT:
                self.set_aside[key] = entry
            else:
                self.set_aside.pop(key, None)
            return
        doc = self.docs.get(key)
        if entry.operation is not Operation.PUT:
            if doc is not None and self._removes_ours(key, doc, entry):
                return
            # A document added here and not yet stored (_odm_rev 0) is not the one deleted: its
            # create is a compare-and-set, so it meets this marker as a conflict and re-creates.
            # Unless that create's outcome is unknown: it landed, and this deletes it.
            if doc is not None and (
                (doc._odm_rev and entry.revision > doc._odm_rev)
                or (doc._odm_rev == 0 and self._deleted_after_create(key, entry.revision))
            ):
                self._remote_delete(key, doc)
            return
        if doc is not None:
            if entry.revision <= doc._odm_rev:
                return  # older than what we have, or our own write already acknowledged
            write_id = self.inflight_ids.get(key)
            if write_id is not None and codec.written_with(entry.value, write_id):
                # The echo of our write in flight: it landed, at this revision. That is as good as
                # its ack, so its fields stop being protected now: a write on top of it (the next
                # entry) must be applied, or we would keep our value while everyone has the later one.
                del self.inflight_ids[key]
                self.restoring.pop(key, None)
                prior = self.unknown.get(key)
                if prior is not None and prior[0] == write_id:
                    self._forget_unknown(key)  # a write of unknown outcome sent again: it landed
                _slot_rev(doc, entry.revision)
                _slot_inflight(doc, _NONE)
                return
            prior = self.unknown.get(key)
            if prior is not None and codec.written_with(entry.value, prior[0]):
                self._landed(key, doc, entry)
                return
            if doc._odm_rev and codec.is_create(entry.value):
                # Created after the version we hold: that one was deleted in between (the bucket
                # keeps one revision a key, so this watch, behind or started again, may never see
                # the marker). The delete wins over our edits; what follows is a new document.
                self._remote_delete(key, doc)
                doc = None
        try:
            remote = codec.decode(self.cls, key, entry.value)
        except Exception as exc:
            if key in self.unknown:
                self.unknown_gap.add(key)  # what it was made on cannot be read
            if doc is not None:
                # It replaced a document we hold: the last good version goes back over it (a CAS
                # on the unreadable revision), so the document survives on every node. Fields
                # marked only for that are remembered: if another node's restore (or any readable
                # version) lands first, they are not real edits and must not overwrite it.
                # Fields still marked only to restore over an earlier unreadable version are no
                # edits either (a second one arrived before that restore was written).
                edited = (doc._odm_dirty | doc._odm_inflight) - self.restoring.get(key, _NONE)
                if doc._odm_rev == 0 and not doc._odm_inflight:
                    # Added here and not written yet: every field is an edit of this node's (its
                    # create), to be written over the unreadable version, not a mere restore.
                    mark_dirty(doc, self.info.data_fields)
                    edited = doc._odm_dirty
                restore_only = frozenset(f for f in self.info.data_fields if f not in edited)
                self._over_unreadable(key, doc, entry.revision)
                mark_dirty(doc, restore_only)
                self.restoring[key] = restore_only
                self._changed(key)
            task = asyncio.ensure_future(self.db.dead_letter(self, entry, exc, remove=doc is None))
            self.db.background(task)
            return
        share(remote)
        if doc is None:
            self.base.pop(key, None)
            self._attach(remote, key, entry.revision, plain=True)
            if self._wants_change(False):
                self._fire_change(None, remote, False)
            return
        if doc._odm_rev == 0:
            # Added here, not yet written, and the same uuid was created elsewhere: what we add
            # is a change of every field, written over theirs (as on a conflict, see _resolve).
            mark_dirty(doc, self.info.data_fields)
        if key in self.unknown:
            self._follow_chain(key, doc, entry.value)
            self.shadow[key] = (entry.revision, remote)
            self._merge(doc, remote, entry.revision, stored=entry.value)
        else:
            self._merge(doc, remote, entry.revision, donor=True, stored=entry.value)

    def _over_unreadable(self, key: str, doc: D, revision: int) -> None:
        """``doc`` is written over the unreadable version at ``revision`` (a compare-and-set on it).

        A document added here and never stored stays one (``_odm_rev`` 0, the revision as its
        ``base``): a delete marker after it is not a delete of this document but a removal of the
        bytes (another node's dead letter), and its create meets it as a conflict and re-creates,
        as over any marker. Holding the unreadable revision as the one it was made on, the node
        took such a marker for a delete and dropped the add, unwritten and without an error."""
        if doc._odm_rev:
            _slot_rev(doc, revision)
        else:
            self.base[key] = revision

    def _removes_ours(self, key: str, doc: D, marker: Entry) -> bool:
        """Whether ``marker`` moved out the unreadable version ``doc`` is to be written over (a
        node holding no such document, a starting one say, put it in its dead letters): no delete.
        The document goes over the marker instead, and other nodes take it back from there."""
        if marker.removes is None or marker.removes != (doc._odm_rev or self.base.get(key)):
            return False
        restoring = self.restoring.get(key)
        if restoring is None or type(restoring) is _Repair:
            # A version this node reads, removed by one whose classes cannot (a rolling upgrade):
            # a delete, as everywhere else. Written back, that node would remove it again.
            return False
        self._over_unreadable(key, doc, marker.revision)
        if doc._odm_dirty:  # else its write is in flight: refused by the marker, it is retried
            self._changed(key)
        return True

    def _landed(self, key: str, doc: D, entry: Entry) -> None:
        """The echo (or the stored version) of our write whose outcome we never learnt (ack lost,
        flush cancelled): it landed, at ``entry.revision``. Its fields were made dirty again for a
        retry; those whose value is still the one it stored are not edits any more, or a retry
        would write them over a later remote value (their merge would keep ours).

        If it landed over what we hold (a probe, sent with the current revision, that had not
        landed before), it stored the values the document had back then: every field changed here
        since (an edit, or a remote value merged meanwhile) is dirty, to be written over it."""
        shadow = self.shadow.get(key)
        later = shadow if shadow is not None and shadow[0] > entry.revision else None
        self._forget_unknown(key)
        self.base.pop(key, None)
        restore_only = self.restoring.pop(key, _NONE)
        on_top = later is None and entry.revision > doc._odm_rev
        if on_top:
            names: Iterable[str] = [n for n in self.info.data_fields if n not in doc._odm_inflight]
        else:
            names = doc._odm_dirty
        if names:
            edited = doc._odm_dirty - restore_only
            unlike = self._unlike_stored(doc, entry.value, names)
            if unlike is not None:
                _slot_dirty(doc, unlike or _NONE)
                repair = _Repair(unlike - edited) if on_top else _NONE
                if repair:
                    # Remote values it stored stale: written again to repair it, but no edits
                    # of ours. A later version that changes one of them wins (see _merge).
                    self.restoring[key] = repair
            elif on_top:
                mark_dirty(doc, names)
        if entry.revision > doc._odm_rev:
            _slot_rev(doc, entry.revision)
        if later is not None:
            self._merge_again(doc, later)
        if not doc._odm_dirty and not doc._odm_inflight and key not in self.deletes:
            self.pending.pop(key, None)
        elif doc._odm_dirty:
            self._changed(key)

    def _deleted_after_create(self, key: str, marker: int) -> bool:
        """A delete marker above the revision our create of unknown outcome expected: that create
        landed (nobody else knows a new uuid), and another node deleted it since."""
        return key in self.unknown and marker > self.base.get(key, 0)

    def _forget_unknown(self, key: str) -> bool:
        """The outcome of ``key``'s write is known (or no longer matters); True if it was unknown."""
        self.shadow.pop(key, None)
        self.unknown_on.pop(key, None)
        self.unknown_gap.discard(key)
        return self.unknown.pop(key, None) is not None

    def _follow_chain(self, key: str, doc: D, value: bytes) -> None:
        """A version not ours arrives for ``key``, whose write's outcome is unknown: it keeps the
        chain of known versions (see ``unknown_on``) if it was made on the one held."""
        if codec.made_on(value) != (doc._odm_rev or self.base.get(key, 0)):
            self.unknown_gap.add(key)

    def _unknown_sent(self, key: str, doc: D, op: WriteOp) -> None:
        """``op`` (a write of ``doc``) may have landed or not: remember it as unknown."""
        if key not in self.unknown and (doc._odm_rev or self.base.get(key, 0)) != op.expected_revision:
            self.unknown_gap.add(key)  # versions applied while it was in flight: not followed
        assert op.msg_id is not None
        assert op.value is not None
        self.unknown[key] = (op.msg_id, op.value)
        self.unknown_on[key] = max(self.unknown_on.get(key, 0), op.expected_revision or 0)

    def _cannot_have_landed(self, key: str, expected: int) -> bool:
        """Whether every version since ``key``'s write of unknown outcome is known, none is ours,
        and the latest is past every revision an attempt of it expected (see ``unknown_on``)."""
        return key not in self.unknown_gap and expected > self.unknown_on.get(key, expected)

    def _merge_again(self, doc: D, shadow: tuple[int, D]) -> None:
        """Our write of unknown outcome landed *before* the remote version ``shadow``, which was
        merged with that write's fields kept: the remote values are the later ones, so they go in
        now for every field not edited here since."""
        revision, remote = shadow
        self._merge(doc, remote, max(revision, doc._odm_rev))

    def _unlike_stored(self, doc: D, value: bytes, names: Iterable[str]) -> set[str] | None:
        """Those of ``names`` whose value here differs from the one stored in ``value`` (bytes we
        encoded); None if they do not decode (cannot happen: then nothing is known)."""
        try:
            stored = codec.decode(self.cls, doc.uuid or "", value).__dict__
        except Exception:
            return None
        d = doc.__dict__
        unlike = set()
        for name in names:
            if name not in stored or not same_value(d[name], stored[name]):
                unlike.add(name)
        return unlike

    def _remote_delete(self, key: str, doc: D) -> None:
        self.restoring.pop(key, None)
        self._detach(key, doc)
        self.pending.pop(key, None)
        self.failed.pop(key, None)
        self._forget_unknown(key)
        self._fire_delete(doc, False)

    def _merge(
        self, doc: D, remote: D, revision: int, *, donor: bool = False, stored: bytes | None = None
    ) -> None:
        """Take ``remote``'s values for every field not changed here; rebase on ``revision``.

        ``donor``: nothing keeps ``remote`` after this, so its containers may make up the ``old``
        document of ``on_change`` (see :meth:`_old_version`). ``stored``: ``remote``'s bytes, which
        say what fields its write changed (unknown without them: all)."""
        key = doc.uuid
        assert key is not None
        restore_only = marked = self.restoring.pop(key, None)
        if type(restore_only) is _Repair and stored is not None:
            ch = codec.read_meta(stored).get("ch")
            kept = restore_only.difference(ch) if isinstance(ch, list) else _NONE
            if kept:
                self.restoring[key] = _Repair(kept)
                restore_only = restore_only - kept
        if restore_only:
            # This version replaces the unreadable one (or changed fields we repair): fields
            # marked only to restore over it are no changes of ours any more, neither waiting
            # nor in a write still in flight (which then is not sent again for them if it
            # fails, see _requeue).
            if type(doc._odm_dirty) is set:
                doc._odm_dirty.difference_update(restore_only)
            if doc._odm_inflight & restore_only:
                _slot_inflight(doc, doc._odm_inflight - restore_only)
            prior = self.unknown.get(key)
            if prior is not None and marked and marked.issuperset(codec.read_meta(prior[1]).get("ch", "?")):
                # A write of unknown outcome that only restored: landed or not, this version is
                # later (it cannot land after it: its compare-and-set is older), so nothing of it
                # is owed any more, and a probe sent now could land its stale values on top.
                self._forget_unknown(key)
            if not doc._odm_dirty and not doc._odm_inflight and key not in self.unknown:
                # Pending only to restore over an unreadable version: nothing is left to write
                # (a write now would store a version changing nothing).
                self.pending.pop(key, None)
        protected = doc._odm_dirty | doc._odm_inflight if doc._odm_dirty or doc._odm_inflight else _NONE
        wants_change = self._wants_change(False)
        # A document still raw has handed none of its containers out: the ones this merge
        # replaces are nobody's afterwards, and can be the old document's without a copy.
        donate = donor and wants_change and doc._odm_raw
        before = doc._odm_snapshot() if wants_change and not donate else None
        d = doc.__dict__
        rd = remote.__dict__
        changes: list[tuple[str, Any, Any]] = []
        for name in self.info.data_fields:
            if name in protected:
                continue
            old = d[name]
            new = rd[name]
            if same_value(old, new):
                continue
            d[name] = new
            idx = self.indexes.get(name)
            if idx is not None:
                idx.remove(key, old)
                idx.add(key, new)
            if name in self.info.tracked and (not doc._odm_raw or self._wants_field(name, False)):
                # A document still raw keeps the remote's container plain (nobody holds it), unless
                # a callback is about to be handed it as ``new``.
                doc._odm_track(name, old)
            changes.append((name, old, new))
        _slot_rev(doc, revision)
        if donate and changes:
            before = self._old_version(doc, rd, changes, protected)
        for name, old, new in changes:
            self._fire_field(doc, name, old, new, False)
        if changes and before is not None:
            self._fire_change(before, doc, False)

    def _old_version(
        self,
        doc: D,
        rd: dict[str, Any],
        changes: list[tuple[str, Any, Any]],
        protected: frozenset[str] | set[str],
    ) -> D:
        """``on_change``'s ``old`` for a merge into a document that was raw, without copying what
        nobody holds: a replaced container (unless a field callback is handed it too) and, for an
        unchanged field, the remote's equal one (the remote document is dropped after the merge).
        Only a protected field's container, still the document's, is copied. The snapshot taken
        before the merge copied every container: ~12 µs of a benchmark document's ~30 µs apply."""
        values = dict(doc.__dict__)
        changed = {name: old for name, old, _new in changes}
        # A field callback made the merge wrap the document's containers (see _merge): those it
        # replaced after that were wrapped ones, linked to the document until cut; copy them.
        still_raw = doc._odm_raw
        for name in self.info.tracked:
            if name in protected:
                values[name] = plain_copy(values[name])
            elif name in changed:
                old = changed[name]
                reuse = still_raw and not self._wants_field(name, False)
                values[name] = old if reuse else plain_copy(old)
            else:
                values[name] = rd[name]
        for name, old in changed.items():
            if name not in self.info.tracked:
                values[name] = old
        return doc._odm_snapshot(values)

    # -- flush -------------------------------------------------------------------------------------
    def dirty_keys(self) -> set[str]:
        return set(self.pending) | set(self.deletes)

    def _write_id(self) -> str:
        return f"{self.db.node_id}.{self.name}.{next(self._write_ids)}"

    async def write(self, keys: Iterable[str]) -> FlushOutcome:
        """Write ``keys``: every one written, to retry, or failed.

        Many keys go in rounds of ``_ROUND``, two at a time: while the server stores one round,
        this process encodes the next (one after the other, the server would sit idle through
        every encode). Cancelled, each round puts back what it had not settled."""
        out = FlushOutcome()
        keys = keys if isinstance(keys, list) else list(keys)
        if len(keys) <= _ROUND:
            await self._round(keys, out)
            return out
        rounds: list[asyncio.Future[None]] = []
        try:
            for start in range(0, len(keys), _ROUND):
                if len(rounds) == 2:
                    await rounds[0]
                    del rounds[0]
                rounds.append(asyncio.ensure_future(self._round(keys[start : start + _ROUND], out)))
                await asyncio.sleep(0)  # it encodes and publishes before the next one starts
            while rounds:
                await rounds[0]
                del rounds[0]
        except BaseException:
            for r in rounds:
                r.cancel()
            await asyncio.gather(*rounds, return_exceptions=True)
            raise
        return out

    async def _round(self, keys: Iterable[str], out: FlushOutcome) -> None:
        """One write round for ``keys``; what came of each goes into ``out``."""
        bucket = self.bucket
        assert bucket is not None
        location = self.db.location
        ops: list[WriteOp] = []
        docs: list[D | None] = []
        fields: list[frozenset[str]] = []
        all_fields = self.info.all_dirty
        with gc_paused():
            self._build_ops(keys, ops, docs, fields, all_fields, location, out.failures)
        if not ops:
            return
        try:
            results = await bucket.write(ops)
        except BaseException:
            # Cancelled while publishes await their acks (``wait_for(db.flush(), t)``,
            # ``stop(timeout=t)``), or the store raised: each may have landed or not, as after a
            # lost connection. Back to pending and dirty (unless the watch brought its echo); a
            # retry sends the same write id, so one that did land is not applied twice.
            with gc_paused():
                self._settle(ops, docs, fields, [_OUTCOME_UNKNOWN] * len(ops), FlushOutcome())
            raise
        with gc_paused():
            conflicts = self._settle(ops, docs, fields, results, out)
        if conflicts:
            latest = await asyncio.gather(
                *(bucket.get(op.key) for op, _ in conflicts), return_exceptions=True
            )
            for (op, doc), entry in zip(conflicts, latest, strict=True):
                if isinstance(entry, BaseException):
                    out.transient = True
                    continue
                if self.docs.get(op.key) is not doc:
                    continue  # deleted (or replaced) while we were asking: nothing to rebase
                if self._resolve(op, doc, entry, out) and not doc._odm_dirty:
                    out.written += 1  # stored after all; with edits left, their write counts it

    def _build_ops(
        self,
        keys: Iterable[str],
        ops: list[WriteOp],
        docs: list[D | None],
        fields: list[frozenset[str]],
        all_fields: frozenset[str],
        location: str,
        failures: list[tuple[str, str, BaseException]],
    ) -> None:
        for key in keys:
            if key in self.deletes:
                delete_id = self.deletes[key]
                if delete_id is None:
                    delete_id = self.deletes[key] = self._write_id()
                ops.append(WriteOp(key, None, None, delete_id))
                docs.append(None)
                fields.append(_NONE)
                continue
            if key not in self.pending:
                continue  # written meanwhile by another round
            del self.pending[key]
            doc = self.docs.get(key)
            if doc is None:
                continue
            changed = frozenset(doc._odm_dirty) if doc._odm_rev else all_fields
            prior = self.unknown.get(key)
            value = None
            expected = doc._odm_rev or self.base.get(key, 0)
            if prior is not None and self._cannot_have_landed(key, expected):
                # Another node's version made on the one it expected came since, and every one
                # after: it did not land and never will. Its fields are dirty again: a new write.
                self._forget_unknown(key)
                prior = None
            try:
                if prior is not None:
                    # Same bytes as a write whose outcome we never learnt: same id, so JetStream's
                    # duplicate window makes the retry a no-op if the first one did land.
                    candidate = codec.encode(
                        doc,
                        location=location,
                        changed=changed,
                        write_id=prior[0],
                        create=not doc._odm_rev,
                        on=codec.made_on(prior[1]),
                    )
                    if candidate == prior[1]:
                        write_id, value = prior[0], codec.with_on(candidate, expected)
                    else:
                        # Edited since. Written as a new write, its fields would go over any
                        # later remote values of them that we kept out while it was unknown.
                        # So first learn its outcome: send it again as it was (same id: a no-op
                        # if it landed; only its ``on`` says what it is sent on now); the edits
                        # stay dirty and follow it.
                        ops.append(WriteOp(key, codec.with_on(prior[1], expected), expected, prior[0]))
                        docs.append(doc)
                        fields.append(_PROBE)
                        self.pending[key] = None
                        continue
                if value is None:
                    write_id = self._write_id()
                    value = codec.encode(
                        doc,
                        location=location,
                        changed=changed,
                        write_id=write_id,
                        create=not doc._odm_rev,
                        on=expected,
                    )
            except Exception as exc:
                # A value Pydantic validated but cannot serialise (an ``Any`` field holding an
                # arbitrary object): this document fails alone, still dirty; the round goes on.
                self.failed[key] = exc
                failures.append((self.name, key, exc))
                continue
            _slot_dirty(doc, _NONE)
            _slot_inflight(doc, changed | doc._odm_inflight)
            self.inflight_ids[key] = write_id
            ops.append(WriteOp(key, value, expected, write_id))
            docs.append(doc)
            fields.append(changed)

    def _settle(
        self,
        ops: list[WriteOp],
        docs: list[D | None],
        fields: list[frozenset[str]],
        results: list[WriteResult],
        out: FlushOutcome,
    ) -> list[tuple[WriteOp, D]]:
        """Apply the results of one write round; the conflicts, to be resolved."""
        conflicts: list[tuple[WriteOp, D]] = []
        inflight_ids = self.inflight_ids
        for op, doc, changed, res in zip(ops, docs, fields, results, strict=True):
            key = op.key
            if changed is _PROBE:
                assert doc is not None
                self._settle_probe(op, doc, res, out, conflicts)
                continue
            if doc is not None:
                if inflight_ids.get(key) == op.msg_id:
                    del inflight_ids[key]
                elif isinstance(res, ConnectionLost) and self.docs.get(key) is doc:
                    # No ack in time, but the watch brought its echo (which settled the
                    # document): it landed. Putting its fields back would write them again,
                    # over whatever came after it.
                    res = doc._odm_rev
            if isinstance(res, int):
                out.written += 1
                if doc is None:
                    self.deletes.pop(key, None)
                    if key not in self.docs:
                        # Stored: a document added under this key later is a new one (else its
                        # delete before its first write would be sent, see delete()).
                        self.base.pop(key, None)
                    aside = self.set_aside.pop(key, None)
                    if aside is not None and aside.revision > res:
                        # A retry answered as a duplicate: the delete landed before this version,
                        # which stays (another node's create after it).
                        self._apply_entry(aside)
                    elif res > self.applied:  # else the watch has already passed it
                        self.tombstones[key] = res
                    continue
                # A retry of a write of unknown outcome (a shadow exists only for those) answered
                # with a revision below a remote version merged since: a duplicate, so the first
                # attempt landed back then, under that version (merged with its fields kept).
                shadow = self.shadow.get(key)
                self._forget_unknown(key)
                self.base.pop(key, None)
                self.restoring.pop(key, None)
                if self.docs.get(key) is doc:
                    if res > doc._odm_rev:
                        _slot_rev(doc, res)
                    _slot_inflight(doc, _NONE)
                    if shadow is not None and shadow[0] > res:
                        self._merge_again(doc, shadow)
                else:
                    # Deleted here while the write was in flight: that delete must follow it.
                    _slot_inflight(doc, _NONE)
                    if key in self.deletes:
                        out.retry.add(key)
                continue
            if doc is not None:
                if changed and not changed & doc._odm_inflight and self._superseded(key, doc):
                    continue
                self._requeue(key, doc, changed)
            if isinstance(res, Conflict):
                if doc is not None and self.docs.get(key) is doc:
                    conflicts.append((op, doc))
                out.retry.add(key)
            elif isinstance(res, ConnectionLost):
                if (
                    doc is not None
                    and op.value is not None
                    and op.msg_id is not None
                    and self.docs.get(key) is doc
                ):
                    self._unknown_sent(key, doc, op)
                out.retry.add(key)
                out.transient = True
            else:
                if doc is not None:
                    self.pending.pop(key, None)
                    self.failed[key] = res
                else:
                    self.deletes.pop(key, None)
                    aside = self.set_aside.pop(key, None)
                    if aside is not None:
                        # The delete failed for good: what the store holds is what we hold.
                        self._apply_entry(aside)
                out.failures.append((self.name, key, res))
        return conflicts

    def _settle_probe(
        self, op: WriteOp, doc: D, res: WriteResult, out: FlushOutcome, conflicts: list[tuple[WriteOp, D]]
    ) -> None:
        """The result of a probe (see ``_build_ops``): the document's edits are written next."""
        key = op.key
        if self.docs.get(key) is not doc:
            return  # deleted here meanwhile: the delete follows (see delete())
        out.retry.add(key)
        prior = self.unknown.get(key)
        if prior is None or prior[0] != op.msg_id:
            return  # settled meanwhile (its echo came)
        if isinstance(res, int):
            # It landed: earlier if the answer is a duplicate (a revision at or below the one
            # expected), now if not.
            self._landed(key, doc, Entry(key, op.value or b"", res, Operation.PUT))
        elif isinstance(res, Conflict):
            conflicts.append((op, doc))  # rebase on the latest version; probe again
        elif isinstance(res, ConnectionLost):
            self._unknown_sent(key, doc, op)  # sent on another revision: that one may land too
            out.transient = True
        else:
            # Still unknown (a new write now could go over later remote values): reported as a
            # failure, probed again by the next flush.
            self.pending.pop(key, None)
            self.failed[key] = res
            out.failures.append((self.name, key, res))

    def _superseded(self, key: str, doc: D) -> bool:
        """A write that did not land, all of whose fields were marked only to restore over an
        unreadable version that a readable one has replaced since (see _merge): nothing of it is
        to be written again. Its outcome is known even without an ack: had it landed, its echo
        would have come before that readable version, and settled it."""
        if self.docs.get(key) is not doc or not doc._odm_rev:
            return False
        if not doc._odm_dirty and not doc._odm_inflight and key not in self.unknown:
            self.pending.pop(key, None)
        return True

    def _requeue(self, key: str, doc: D, changed: frozenset[str]) -> None:
        """A write did not land: its fields are dirty again (unless stored by then), those still
        in flight: a field marked only to restore over an unreadable version leaves the write
        once a readable version replaced that (see _merge)."""
        if self.docs.get(key) is not doc:
            _slot_inflight(doc, _NONE)
            return
        if doc._odm_rev:
            mark_dirty(doc, changed & doc._odm_inflight)
        _slot_inflight(doc, _NONE)
        self.pending[key] = None

    def _resolve(self, op: WriteOp, doc: D, entry: Entry | None, out: FlushOutcome) -> bool:
        """After a CAS conflict: rebase ``doc`` on the latest stored version of its key. True if
        that version is our own write of unknown outcome (it landed: nothing is left to write)."""
        key = op.key
        if entry is not None and doc._odm_rev and entry.revision <= doc._odm_rev:
            return False  # the watch already brought this or newer: retry on what we have
        if entry is None or entry.operation is not Operation.PUT:
            marker = entry.revision if entry is not None else 0
            if entry is not None and self._removes_ours(key, doc, entry):
                pass
            elif doc._odm_rev == 0 and self._deleted_after_create(key, marker):
                self._remote_delete(key, doc)
            elif doc._odm_rev == 0:
                self.base[key] = marker  # a new document whose key has a delete marker: re-create it
            else:
                self._remote_delete(key, doc)  # deleted elsewhere: the delete wins
            return False
        meta = codec.read_meta(entry.value)
        ours = {op.msg_id, self.unknown.get(key, ("",))[0]}
        if meta.get("w") in ours:
            # Our own write landed after all (a retry of a landed write is refused by its stale
            # compare-and-set before JetStream looks at its id). Fields still holding what it
            # stored are clean; anything edited since is still dirty and written next.
            self._landed(key, doc, entry)
            return True
        if doc._odm_rev and meta.get("new") is True:
            # Deleted and created again since the version we hold (see _apply_entry): the delete
            # wins; the watch brings the new document.
            self._remote_delete(key, doc)
            return False
        if doc._odm_rev == 0:
            # The same uuid created elsewhere first: what we add counts as a change of every field.
            mark_dirty(doc, self.info.data_fields)
        try:
            remote = codec.decode(self.cls, key, entry.value)
        except Exception:
            if entry.revision > self.applied:
                # Unreadable, and the watch has not reached it: what came before it (a change
                # or a delete this node has not seen) decides what goes back over it. The watch
                # brings it (see _apply_entry); the write is retried after that.
                out.transient = True
                return False
            if key in self.unknown:
                self.unknown_gap.add(key)
            self._over_unreadable(key, doc, entry.revision)  # our version replaces it
            return False
        if key in self.unknown:
            self._follow_chain(key, doc, entry.value)
            self.shadow[key] = (entry.revision, remote)
        # The watch brings this entry too; _merge set _odm_rev, so it will be skipped there.
        self._merge(doc, remote, entry.revision, stored=entry.value)
        return False

    # -- lifecycle ---------------------------------------------------------------------------------
    async def stop_watch(self) -> None:
        task = self.watch_task
        self.watch_task = None
        if task is not None:
            await cancel_and_wait(task)

    def detach_all(self) -> None:
        for doc in self.docs.values():
            _slot_coll(doc, None)
            doc._odm_untrack()
