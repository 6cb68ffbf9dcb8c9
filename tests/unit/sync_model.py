"""Random programs of three nodes, checked against the history the bucket stored (the machinery
of ``test_sync_model.py``, on a ``MemoryStore``, and of ``tests/integration/test_sync_model_nats.py``).

Three ``Database`` objects share one store. Hypothesis draws a program of steps: adds (from a small
pool of explicit uuids, so nodes create the same key and re-create deleted ones), assignments (one
field is ``Unique``, which holds per node only), in-place list edits, deletes, flushes, restarts,
unreadable bytes written under a key by someone else, and where the store allows it a node's watch
going deaf (what the bucket stores waits for it) and hearing again, in part or all at once. A flush
can meet one fault: every ack lost after the writes landed, before they reached the store, or after
half of them landed; the flush cancelled while its writes await their acks, landed or not; or the
read that resolves a conflict lost.

Every version the bucket stores is recorded, so what is checked is the history, not one outcome:

* nothing is lost: a change a node made and then flushed (the flush returned) is in a stored version
  newer than the one the change was made on, that changed that field to that value (or that is a
  write of this node's sent again as it was, carrying that value), unless the document was deleted
  meanwhile;
* nothing is reverted: a version changes only the fields its ``_odm.ch`` names, the others are the
  previous version's (a create names them all). The one allowed exception is a write of unknown
  outcome sent again as it was (see ``Collection._build_ops``): it may land over a later version,
  and the version after it then writes every field it stored stale. Nor does a version that names a
  field put back an assigned value stored before, unless it repairs what such a probe overwrote
  and no version has changed that field since the probe;
* nothing is applied twice: a value assigned on a node is written by that node once (a retry of a
  write that had landed would undo what another node wrote in between), except by a write that puts
  the last good version back over an unreadable one (one made on that unreadable revision, sent
  then or later, as a probe), or the repair of what a probe stored stale over it;
* nothing is written for nothing: a version changes at least one field, unless it puts the last good
  version back over an unreadable one;
* between any two steps, each index answers what a scan answers, and a node that deleted a stored
  document holds it again only once another node created it after that delete;
* all converge: once every node has flushed and its watch caught up, every node holds exactly what
  the bucket holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

import orjson
from hypothesis import event
from hypothesis import strategies as st
from pydantic import Field

from brainless_odm import Database, Document, DocumentConfig, Indexed, Registry, Unique, UniqueViolation
from brainless_odm.exceptions import ConnectionLost
from brainless_odm.store.base import Entry, Operation, WriteOp, WriteResult

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Item(Base):
    a: int = 0
    b: str = ""
    n: Annotated[int, Indexed()] = 0
    tags: list[str] = Field(default_factory=list)
    # Unique per node only (docs/documents.md): two nodes can take one value at once, and each then
    # holds both documents; its index must keep both.
    u: Annotated[str | None, Unique()] = None


FIELDS = ("a", "b", "n", "tags", "u")
KEYS = ("k0", "k1", "k2")
NODES = 3

#: Steps per program; ``MODEL_STEPS=100`` (with ``MODEL_EXAMPLES=20000``) for a long hunt.
STEPS = int(os.environ.get("MODEL_STEPS", "40"))
FAULTS = ("none", "lost_landed", "lost_dropped", "lost_half", "cancel_landed", "cancel_dropped", "get_lost")


class Faulty:
    """A node's bucket that can meet one fault on its next write (or, for ``get_lost``, its next
    read: conflicts are resolved by reading the latest version); it counts every write id sent."""

    def __init__(self, inner: Any, sent: dict[str, int], on: dict[str, int | None]) -> None:
        self.inner = inner
        self.sent = sent
        self.on = on
        self.fault = "none"
        self.holding = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get(self, key: str) -> Entry | None:
        if self.fault == "get_lost":
            self.fault = "none"
            event("fault: get_lost")
            raise ConnectionLost("no answer (injected)")
        entry: Entry | None = await self.inner.get(key)
        return entry

    async def write(self, ops: Sequence[WriteOp]) -> list[WriteResult]:
        for op in ops:
            if op.msg_id is not None:
                self.sent[op.msg_id] = self.sent.get(op.msg_id, 0) + 1
                self.on.setdefault(op.msg_id, op.expected_revision)
        if self.fault in ("none", "get_lost") or all(op.msg_id is None for op in ops):
            # (Writes without an id are not a flush's: a dead letter's removal of the bad entry.)
            results: list[WriteResult] = await self.inner.write(ops)
            return results
        fault, self.fault = self.fault, "none"
        event(f"fault: {fault}")
        if fault == "lost_landed":
            await self.inner.write(ops)
        elif fault == "lost_half":
            await self.inner.write(ops[: (len(ops) + 1) // 2])
        elif fault in ("cancel_landed", "cancel_dropped"):
            if fault == "cancel_landed":
                await self.inner.write(ops)
            self.holding.set()
            await asyncio.Event().wait()  # until the flush is cancelled
        return [ConnectionLost("no publish ack (injected)")] * len(ops)


class Ears:
    """What a node's watch hears: deaf, the bucket's new versions wait here until let through."""

    def __init__(self, queue: asyncio.Queue[Entry | None]) -> None:
        self.queue = queue
        self.deaf = False
        self.held: list[Entry | None] = []

    def put_nowait(self, entry: Entry | None) -> None:
        if self.deaf:
            self.held.append(entry)
        else:
            self.queue.put_nowait(entry)

    def hear(self, count: int | None = None) -> None:
        count = len(self.held) if count is None else count
        for entry in self.held[:count]:
            self.queue.put_nowait(entry)
        del self.held[:count]


@dataclass
class Owed:
    """A change a node made that its next successful flush must have stored."""

    doc: Item
    value: Any
    after: int  # the revision of the document it was made on


class Backend(Protocol):
    """Where the nodes run: a ``MemoryStore`` or a real nats-server."""

    def database(self, node: int) -> Database:
        """A new, unstarted ``Database`` of ``Item`` for ``node``, with location ``n<node>``."""

    async def ears(self, db: Database, old: Ears | None) -> Ears | None:
        """After ``db`` started: its watch's ``Ears`` (replacing ``old``), if it can have any."""

    async def ready(self, world: World) -> None:
        """The nodes have started (the bucket exists): record every version it stores from now on
        into ``world.history``, in order."""

    async def last_revision(self) -> int:
        """The bucket's last revision."""

    async def poison(self, key: str) -> None:
        """Store bytes under ``key`` that no node can decode (an operator's mistake, a bad client)."""

    # Optional: ``async def prepare(self) -> None``, run before the first node starts.


@dataclass
class World:
    backend: Backend
    nodes: list[Database] = field(default_factory=list)
    faulty: list[Faulty] = field(default_factory=list)
    ears: list[Ears | None] = field(default_factory=list)
    history: list[Entry] = field(default_factory=list)  # every version the bucket stored
    sent: dict[str, int] = field(default_factory=dict)  # write id -> times sent
    on: dict[str, int | None] = field(default_factory=dict)  # write id -> the revision it expected
    owed: list[dict[tuple[str, str], Owed]] = field(default_factory=list)
    # node -> {key: the bucket's revision when the node deleted its stored document of that key}
    deleted: list[dict[str, int]] = field(default_factory=lambda: [{} for _ in range(NODES)])
    # ("a" or "b", value) -> the location that assigned it: every assignment of those is unique
    origin: dict[tuple[str, Any], str] = field(default_factory=dict)

    def latest(self, key: str) -> Entry | None:
        return next((e for e in reversed(self.history) if e.key == key), None)

    @property
    def revision(self) -> int:
        return self.history[-1].revision if self.history else 0

    async def caught_up(self) -> None:
        """Until ``history`` holds every version the bucket has stored so far."""
        last = await self.backend.last_revision()
        for _ in range(2000):
            if self.revision >= last:
                return
            await asyncio.sleep(0.002)
        raise AssertionError(f"the history stopped at revision {self.revision} of {last}")

    def objects(self, node: int) -> Any:
        return Item.objects.using(self.nodes[node])

    def held(self, node: int, key: str) -> Item | None:
        objects = self.objects(node)
        return objects[key] if key in objects else None  # noqa: SIM401 (Manager.get is a query)

    def pick(self, node: int, slot: int) -> Item | None:
        """One of the documents ``node`` holds (``slot`` modulo how many), so edits mostly land."""
        docs = sorted(self.objects(node), key=lambda d: d.uuid)
        return docs[slot % len(docs)] if docs else None


async def start_node(world: World, i: int) -> None:
    """Start node ``i`` (again, after a restart) with its faulty bucket and its ears."""
    db = world.backend.database(i)
    await db.start()
    restart = i < len(world.nodes)
    ears = await world.backend.ears(db, world.ears[i] if restart else None)
    coll = db.collection(Item)
    faulty = Faulty(coll.bucket, world.sent, world.on)
    coll.bucket = faulty
    if restart:
        world.nodes[i], world.faulty[i], world.ears[i] = db, faulty, ears
    else:
        world.nodes.append(db)
        world.faulty.append(faulty)
        world.ears.append(ears)
        world.owed.append({})


# -- the program ------------------------------------------------------------------------------------
node_ids = st.integers(0, NODES - 1)
keys = st.sampled_from(KEYS)
slots = st.integers(0, len(KEYS) - 1)
values = {
    "a": st.integers(0, 3),
    "b": st.sampled_from(["", "x", "y", "z"]),
    "n": st.integers(0, 2),
    "tags": st.lists(st.sampled_from(["p", "q"]), max_size=2),
    "u": st.sampled_from([None, "u0", "u1"]),
}
ARGS: dict[str, Any] = {
    "add": (node_ids, keys, st.integers(0, 3)),
    "set": (node_ids, slots, st.sampled_from(FIELDS)),
    "append": (node_ids, slots, st.sampled_from(["p", "q"])),
    "delete": (node_ids, slots),
    "flush": (node_ids, st.sampled_from(FAULTS)),
    "pump": (st.integers(1, 6),),
    "deaf": (node_ids,),
    "hear": (node_ids, st.none() | st.integers(1, 3)),
    "restart": (node_ids,),
    "poison": (keys,),
}
#: Weighted by repetition: mostly edits and flushes, so that programs store many versions.
KINDS = ["add"] * 3 + ["set"] * 6 + ["append", "delete"] + ["flush"] * 6
#: ``poison``: unreadable bytes under a key, as another program might write (the cases it found are
#: fixed, each with its test in test_review_races.py / test_sync_memory.py).
KINDS += ["pump", "deaf", "hear", "restart", "poison"]


def _step(kind: str) -> st.SearchStrategy[tuple[Any, ...]]:
    """Plain tuples ``(kind, *args)``, so that a failing program prints as one."""
    drawn = st.tuples(st.just(kind), *ARGS[kind])
    if kind == "set":  # the value is drawn for the field
        return drawn.flatmap(lambda t: st.tuples(*map(st.just, t), values[t[3]]))
    return drawn


steps = st.sampled_from(KINDS).flatmap(_step)


def owe(world: World, node: int, doc: Item, name: str) -> None:
    restore_only = world.nodes[node].collection(Item).restoring.get(doc.uuid or "", ())
    # Dirty only to restore over an unreadable version (an assignment of the value it had is
    # no edit): no change of this node's.
    if name in doc.dirty_fields and name not in restore_only:
        value = list(doc.tags) if name == "tags" else getattr(doc, name)
        world.owed[node][(doc.uuid or "", name)] = Owed(doc, value, doc._odm_rev)


async def run_step(world: World, step: tuple[Any, ...]) -> None:
    kind = step[0]
    if kind == "poison":
        await world.backend.poison(step[1])
        return
    if kind == "pump":
        for _ in range(step[1]):
            await asyncio.sleep(0)
        return
    node = step[1]
    objects = world.objects(node)
    ears = world.ears[node]
    if kind == "deaf":
        if ears is not None:
            ears.deaf = True
    elif kind == "hear":
        if ears is not None:
            ears.hear(step[2])
            ears.deaf = step[2] is not None
    elif kind == "add":
        with contextlib.suppress(UniqueViolation):
            doc = objects.add(uuid=step[2], a=step[3], b="new", n=step[3] % 3)
            world.owed[node] = {k: o for k, o in world.owed[node].items() if k[0] != step[2]}
            world.deleted[node].pop(step[2], None)
            for name in FIELDS:
                owe(world, node, doc, name)
    elif kind == "set":
        doc = world.pick(node, step[2])
        if doc is not None:
            name, value = step[3], step[4]
            if name in ("a", "b"):  # a value no other assignment makes, to follow it
                value = 100 + len(world.origin) if name == "a" else f"v{len(world.origin)}"
                world.origin[(name, value)] = f"n{node}"
            try:
                setattr(doc, name, value)
            except UniqueViolation:
                return  # another document here holds it: nothing changed
            owe(world, node, doc, name)
    elif kind == "append":
        doc = world.pick(node, step[2])
        if doc is not None:
            doc.tags.append(step[3])
            owe(world, node, doc, "tags")
    elif kind == "delete":
        doc = world.pick(node, step[2])
        if doc is not None:
            # What the node had seen when it deleted: taken at once (the node's watch may apply
            # another node's delete of it during an await, and then this one deletes nothing).
            seen = max(doc._odm_rev, world.nodes[node].collection(Item).applied)
            if objects.delete(doc) and doc._odm_rev:  # a stored version: the delete is stored too
                world.deleted[node][doc.uuid or ""] = seen
    elif kind == "flush":
        await flush(world, node, step[2])
    elif kind == "restart":
        docs = world.nodes[node].collection(Item).docs  # what it held when it stopped
        stop = asyncio.ensure_future(world.nodes[node].stop())  # flushes everything first
        await patiently(world, node, stop)
        stop.result()
        await check_owed(world, node, docs)
        await start_node(world, node)


async def patiently(world: World, node: int, *waiting: asyncio.Future[Any]) -> None:
    """Until one of ``waiting`` is done. A deaf watch is a slow one, not a dead one: a flush may
    wait for it (to resolve a conflict with a version it has not reached), so after a while it
    hears everything."""
    done, _ = await asyncio.wait(waiting, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
    if not done:
        ears = world.ears[node]
        if ears is not None:
            ears.deaf = False
            ears.hear()
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)


async def flush(world: World, node: int, fault: str) -> None:
    db = world.nodes[node]
    faulty = world.faulty[node]
    faulty.fault = fault
    if not fault.startswith("cancel"):
        task = asyncio.ensure_future(db.flush())
        await patiently(world, node, task)
        task.result()
        faulty.fault = "none"
        await check_owed(world, node)
        return
    faulty.holding.clear()
    task = asyncio.ensure_future(db.flush())
    holding = asyncio.ensure_future(faulty.holding.wait())
    await patiently(world, node, task, holding)
    holding.cancel()
    faulty.fault = "none"
    if task.done():
        task.result()  # nothing to write: it finished
        await check_owed(world, node)
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# -- the checks -------------------------------------------------------------------------------------
async def check_step(world: World) -> None:
    """What holds between any two steps: each index answers what a scan answers, and a node that
    deleted a stored document holds it again only once another node created it after that delete
    (not because a version older than the delete reached it late)."""
    held = [{d.uuid for d in world.objects(i)} for i in range(NODES)]
    await world.caught_up()  # the history has every version a node can have applied
    for i in range(NODES):
        objects = world.objects(i)
        for n in range(3):
            hits = {d.uuid for d in await objects.filter(n=n)}
            assert hits == {d.uuid for d in objects if d.n == n}, f"node {i}: index n={n}"
        for u in ("u0", "u1"):
            hits = {d.uuid for d in await objects.filter(u=u)}
            assert hits == {d.uuid for d in objects if d.u == u}, f"node {i}: unique index u={u}"
        for key, when in world.deleted[i].items():
            if key not in held[i]:
                continue
            since = [e for e in world.history if e.key == key and e.revision > when]
            marker = next((e.revision for e in since if e.operation is not Operation.PUT), None)
            what = f"node {i} holds {key} again after deleting it (since: {[e.revision for e in since]})"
            assert marker is not None, what
            assert any(e.revision > marker and e.operation is Operation.PUT for e in since), what


#: What ``poison`` stores: not JSON, so no node can decode it (they restore the last good version).
POISON = b"not json {"


def readable(e: Entry) -> bool:
    return e.operation is Operation.PUT and e.value != POISON


def stored_fields(value: bytes) -> tuple[dict[str, Any], set[str], str, str]:
    """A stored version: its fields, the ones it changed, its write id and its writer."""
    data = orjson.loads(value)
    meta = data.pop("_odm")
    return data, set(meta["ch"]), str(meta["w"]), str(meta["loc"])


async def check_owed(world: World, node: int, docs: dict[str, Item] | None = None) -> None:
    """After a flush that returned: every change it owed is in a stored version."""
    await world.caught_up()
    for (key, name), owed in world.owed[node].items():
        held = docs.get(key) if docs is not None else world.held(node, key)
        if held is not owed.doc:
            continue  # deleted since (here or elsewhere): its changes went with it
        found = False
        for e in world.history:
            if e.key == key and e.revision > owed.after and readable(e):
                data, ch, write_id, loc = stored_fields(e.value)
                # Nodes take a version's whole value (``ch`` only says what its writer changed),
                # so a write of this node's sent again as it was (a probe) also stores the change
                # when it carries the same value.
                probe = loc == f"n{node}" and world.sent.get(write_id, 0) >= 2
                if (name in ch or probe) and data[name] == owed.value:
                    found = True
                    break
        assert found, f"node {node}: {key}.{name} = {owed.value!r} was flushed but never stored"
    world.owed[node].clear()


_NOTHING = object()


def check_history(world: World) -> None:
    previous: dict[str, dict[str, Any] | None] = {}
    applied: set[tuple[str, Any]] = set()
    poisoned: set[str] = set()
    unreadable = {e.revision for e in world.history if e.operation is Operation.PUT and not readable(e)}
    # Per key: the assigned values of a and b stored so far, and the values a write sent again as
    # it was (a probe) overwrote, which a later version may put back until a version names them.
    stored: dict[str, set[tuple[str, Any]]] = {}
    repairable: dict[str, dict[str, Any]] = {}
    for e in world.history:
        if e.operation is not Operation.PUT and e.removes is not None and e.key in poisoned:
            # A node holding no such document moved the unreadable version out: no delete, the
            # next version is still measured against the last good one (nodes restore it).
            continue
        if e.operation is not Operation.PUT:
            previous[e.key] = None
            poisoned.discard(e.key)
            stored.pop(e.key, None)
            repairable.pop(e.key, None)
            continue
        if not readable(e):
            poisoned.add(e.key)
            continue  # what follows is measured against the last good version
        data, ch, write_id, loc = stored_fields(e.value)
        # The last good version written back over an unreadable one: right after it, or later,
        # as a probe of a write made on it (see the docstring).
        restore = e.key in poisoned or world.on.get(write_id) in unreadable
        poisoned.discard(e.key)
        # A version changing nothing is a wasted write (and a wake-up for every node), unless it
        # puts the last good version back over an unreadable one.
        assert ch or restore, f"revision {e.revision} of {e.key} by {loc} changes nothing"
        for name in ("a", "b"):
            made = (name, data[name])
            if name in ch and world.origin.get(made) == loc and not restore:
                # Written again by the node that made it: a retry of a write that had landed,
                # which would undo whatever another node wrote to the field in between. Unless
                # it repairs what a probe stored stale over it (see below): that puts it back.
                repairs = repairable.get(e.key, {}).get(name, _NOTHING) == data[name]
                assert repairs or made not in applied, (
                    f"revision {e.revision}: {loc} wrote {made} a second time"
                )
                applied.add(made)
        before = previous.get(e.key)
        probe = world.sent.get(write_id, 0) >= 2  # a write sent again as it was (see the docstring)
        seen = stored.setdefault(e.key, set())
        repair = repairable.setdefault(e.key, {})
        if before is None:
            assert ch == set(FIELDS), f"revision {e.revision}: a create of {e.key} that names only {ch}"
            seen.clear()
            repair.clear()
        elif not probe:
            for name in FIELDS:
                if name not in ch:
                    assert data[name] == before[name], (
                        f"revision {e.revision} of {e.key} reverted {name}: {before[name]!r} -> "
                        f"{data[name]!r} (it changed only {sorted(ch)})"
                    )
            for name in ("a", "b"):
                made = (name, data[name])
                if name in ch and made in world.origin and made in seen and not restore:
                    # An assigned value stored before and written again: only as the repair of
                    # what a probe overwrote, and only until a version changed that field since.
                    event("history: an older value put back by a repair")
                    assert repair.get(name, made) == data[name], (
                        f"revision {e.revision} of {e.key} by {loc} put an older {name} back: "
                        f"{before[name]!r} -> {data[name]!r}"
                    )
            for name in ch:
                repair.pop(name, None)
        else:
            event("history: a probe landed over a version")
            repair.update({n: before[n] for n in ("a", "b") if data[n] != before[n]})
        seen.update((n, data[n]) for n in ("a", "b"))
        previous[e.key] = data


async def converge(world: World) -> None:
    """Flush everywhere until nothing is left and every watch has applied the last revision."""
    for ears in world.ears:
        if ears is not None:
            ears.deaf = False
            ears.hear()
    for _ in range(200):
        for db in world.nodes:
            await db.flush()
        for _ in range(5):
            await asyncio.sleep(0)
        last = await world.backend.last_revision()
        colls = [db.collection(Item) for db in world.nodes]
        if all(c.applied >= last and not c.pending and not c.deletes for c in colls):
            await world.caught_up()
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the nodes did not settle")


def check_converged(world: World) -> None:
    live: dict[str, dict[str, Any]] = {}
    for e in world.history:
        if e.operation is Operation.PUT:
            assert readable(e) or e is not world.latest(e.key), f"{e.key} is left poisoned"
            if readable(e):
                live[e.key] = stored_fields(e.value)[0]
        else:
            live.pop(e.key, None)
    for i in range(NODES):
        objects = world.objects(i)
        held = {doc.uuid: doc.model_dump(exclude={"uuid"}) for doc in objects}
        assert held == live, f"node {i} holds {held}, the bucket {live}"


async def run_program(world: World, program: list[tuple[Any, ...]]) -> None:
    """Run ``program`` on ``world``'s nodes, let them converge, and check the history; stops them."""
    try:
        prepare = getattr(world.backend, "prepare", None)
        if prepare is not None:
            await prepare()
        for i in range(NODES):
            await start_node(world, i)
        await world.backend.ready(world)
        for step in program:
            # A step that hangs is a failure Hypothesis can shrink, not a test run that times out.
            await asyncio.wait_for(run_step(world, step), 10)
            await check_step(world)
        await asyncio.wait_for(converge(world), 30)
        event(f"versions stored: {min(len(world.history) // 5 * 5, 40)}+")
        for i in range(NODES):
            await check_owed(world, i)
        check_history(world)
        check_converged(world)
        await check_step(world)
    finally:
        for db in world.nodes:
            await db.stop()
