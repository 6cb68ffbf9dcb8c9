"""``QuerySet[D]``: an immutable, chainable, awaitable query over one collection in memory."""

from __future__ import annotations

import decimal
import fractions
import heapq
from collections import abc
from collections.abc import AsyncIterator, Generator, Iterable, Iterator, Sized
from functools import lru_cache
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from .._tracking import same_value
from ..engine.indexes import is_nan
from ..exceptions import QueryError, UniqueViolation
from .lookups import And, Cond, Node, Not, Q, no_condition, orderable, ordered_getter, resolve, resolve_path

if TYPE_CHECKING:
    from ..document import Document
    from ..engine.collection import Collection
    from .manager import Manager

__all__ = ["QuerySet"]

D = TypeVar("D", bound="Document")


class QuerySet(Generic[D]):
    """A lazy query. Each method returns a new ``QuerySet``; awaiting one runs it.

    ``await qs`` → ``list[D]``; ``async for doc in qs``; ``count()``, ``exists()``, ``first()``,
    ``get()``, ``update(**fields)``, ``delete()``.
    """

    __slots__ = ("_limit", "_manager", "_node", "_offset", "_order")

    def __init__(
        self,
        manager: Manager[D],
        node: Node | None = None,
        order: tuple[tuple[Any, bool, str], ...] = (),
        limit: int | None = None,
        offset: int = 0,
    ) -> None:
        self._manager = manager
        self._node = node
        self._order = order
        self._limit = limit
        self._offset = offset

    def _clone(
        self,
        *,
        node: Node | None = None,
        order: tuple[tuple[Any, bool, str], ...] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> QuerySet[D]:
        return QuerySet(
            self._manager,
            self._node if node is None else node,
            self._order if order is None else order,
            self._limit if limit is None else limit,
            self._offset if offset is None else offset,
        )

    def __repr__(self) -> str:
        return f"<QuerySet {self._manager.model.__name__}>"

    # -- building ----------------------------------------------------------------------------------
    def _and(self, node: Node) -> QuerySet[D]:
        if self._node is None:
            return self._clone(node=node)
        return self._clone(node=And((self._node, node)))

    def filter(self, *qs: Q, **lookups: Any) -> QuerySet[D]:
        """Documents matching every lookup (and every ``Q``)."""
        return self._and(resolve(self._manager.model, qs, lookups))

    def exclude(self, *qs: Q, **lookups: Any) -> QuerySet[D]:
        """Documents *not* matching all of the lookups together (``exclude()`` alone: all)."""
        node = resolve(self._manager.model, qs, lookups)
        if no_condition(node):  # no condition (exclude(), exclude(Q())): excludes nothing
            return self
        return self._and(Not(node))

    def order_by(self, *keys: str) -> QuerySet[D]:
        """Sort by fields (``"-priority"`` descending, ``"caller__city"`` nested); ``None`` first.
        Members of a plain ``Enum`` sort by their ``.value``."""
        order = []
        model = self._manager.model
        for key in keys:
            if not isinstance(key, str) or not key.strip("-"):
                raise QueryError(f"order_by() takes field names, got {key!r}")
            desc = key.startswith("-")
            name = key[1:] if desc else key
            what = f"{model.__name__}.order_by({key!r})"
            path = resolve_path(model, name.split("__"), what)
            if not orderable(path.annotation):
                raise QueryError(f"{what}: {name} has no order; order by one of its fields or another field")
            order.append((ordered_getter(path), desc, name))
        return self._clone(order=tuple(order))

    def limit(self, n: int) -> QuerySet[D]:
        """At most ``n`` documents (applied after ``offset``)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise QueryError(f"limit() takes an int >= 0, got {n!r}")
        return self._clone(limit=n)

    def offset(self, n: int) -> QuerySet[D]:
        """Skip the first ``n`` documents (applied before ``limit``)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise QueryError(f"offset() takes an int >= 0, got {n!r}")
        return self._clone(offset=n)

    # -- running -----------------------------------------------------------------------------------
    def _plan(self, coll: Collection[D]) -> tuple[Iterable[D], Node | None]:
        """The documents that can match (from the most selective index, or all of them; consumed
        before anything can change them) and what is left to check on them: a condition the index
        answered exactly is not checked again."""
        node = self._node
        if node is None:
            return coll.docs.values(), None
        conjuncts: list[Node] = []
        stack: list[Node] = [node]
        while stack:
            n = stack.pop()
            if isinstance(n, And):
                stack.extend(reversed(n.children))
            else:
                conjuncts.append(n)
        best: Any = None
        best_cond: Cond | None = None
        best_size = len(coll.docs)
        ranges: list[tuple[Cond, Any, int, int]] = []
        indexes = coll.indexes
        for c in conjuncts:
            if not isinstance(c, Cond) or len(c.path.names) != 1:
                continue
            idx = indexes.get(c.path.names[0])
            if idx is None:
                continue
            op = c.op
            keys: Any = None
            if op == "exact":
                keys = idx.holders(c.value)
            elif op == "isnull" and c.value is True:
                keys = idx.holders(None)
            elif op == "in":
                # Counted first (the values' holders do not overlap); joined only if it wins.
                parts = [idx.holders(v) for v in c.value]
                size = sum(map(len, parts))
                if size < best_size:
                    best, best_cond, best_size = parts, c, size
                    if size == 0:
                        break
                continue
            elif op in ("lt", "lte", "gt", "gte", "range"):
                if op == "range":
                    bounds = idx.bounds(c.value[0], c.value[1])
                elif op in ("lt", "lte"):
                    bounds = idx.bounds(None, c.value, hi_incl=op == "lte")
                else:
                    bounds = idx.bounds(c.value, None, lo_incl=op == "gte")
                if bounds is not None:
                    ranges.append((c, idx, *bounds))
                continue
            if keys is not None and len(keys) < best_size:
                best, best_cond, best_size = keys, c, len(keys)
                if best_size == 0:
                    break
        # Ranges are counted from their bounds; only the winner's keys are materialised.
        for c, idx, lo, hi in ranges:
            if hi - lo < best_size:
                best, best_cond, best_size = idx.keys_between(lo, hi), c, hi - lo
        docs = coll.docs
        if best is None:
            return docs.values(), node
        if best_cond is not None and best_cond.op == "in":
            best = set().union(*best) if len(best) != 1 else best[0]
        found = _Held(best, docs)
        rest = [n for n in conjuncts if n is not best_cond]
        if not rest:
            return found, None
        return found, rest[0] if len(rest) == 1 else And(tuple(rest))

    def _matches(self) -> Iterable[D]:
        """Every match, unordered; consumed before anything can change the collection."""
        candidates, rest = self._plan(self._manager.collection())
        return candidates if rest is None else filter(rest.predicate(), candidates)

    def _run(self) -> list[D]:
        matches = self._matches()
        start = self._offset
        stop = None if self._limit is None else start + self._limit
        if not self._order:
            # Without an order the first matches are the answer: stop there (exists(), first()).
            return list(matches if stop is None and not start else islice(matches, start, stop))
        docs = list(matches)
        last = len(self._order) - 1
        for i, (get, desc, _) in enumerate(reversed(self._order)):
            try:
                # The primary key (sorted last) only has to place the first `stop` documents.
                docs = _sorted(docs, get, desc, stop if i == last else None)
            except (TypeError, ArithmeticError):  # ArithmeticError: a Decimal NaN refuses `<`
                # Values of several types that do not compare (a field typed int | str): by
                # kind first (_kind: numbers together, strs together, other types by name), so
                # the sort is still total and stable; values of one kind that do not compare (a
                # naive and an aware datetime, two dicts in an Any field) by their repr.
                docs.sort(key=_lenient_sort_key(get), reverse=desc)
        if start or stop is not None:
            return docs[start:stop]
        return docs

    def __await__(self) -> Generator[Any, None, list[D]]:
        return self._evaluate().__await__()

    async def _evaluate(self) -> list[D]:
        return self._run()

    def __aiter__(self) -> AsyncIterator[D]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[D]:
        for doc in self._run():
            yield doc

    async def count(self) -> int:
        """How many documents match (after offset/limit)."""
        # Counted without listing them; the order does not change how many.
        matches = self._matches()
        total = len(matches) if isinstance(matches, Sized) else sum(1 for _ in matches)
        n = max(0, total - self._offset)
        return n if self._limit is None else min(n, self._limit)

    async def exists(self) -> bool:
        """Whether any document matches."""
        return bool(self._clone(limit=1)._run()) if self._limit != 0 else False

    async def first(self) -> D | None:
        """The first match (in ``order_by`` order if given), or ``None``."""
        found = self._clone(limit=1)._run() if self._limit != 0 else []
        return found[0] if found else None

    async def get(self, *qs: Q, **lookups: Any) -> D:
        """Exactly one match, else ``DoesNotExist`` / ``MultipleObjectsReturned``."""
        qs_ = self.filter(*qs, **lookups) if qs or lookups else self
        found = qs_._clone(limit=2 if self._limit is None else min(2, self._limit))._run()
        model = self._manager.model
        if not found:
            raise model.DoesNotExist(f"no {model.__name__} matches {_describe(qs, lookups)}")
        if len(found) > 1:
            raise model.MultipleObjectsReturned(
                f"more than one {model.__name__} matches {_describe(qs, lookups)}"
            )
        return found[0]

    async def delete(self) -> int:
        """Delete every match; how many were deleted."""
        coll = self._manager.collection()
        return sum(1 for doc in self._run() if coll.delete(doc))

    async def update(self, **fields: Any) -> int:
        """Assign ``fields`` on every match; how many matched.

        Every value is validated, and unique fields checked, before any document changes: an
        invalid value changes none.
        """
        model = self._manager.model
        info = model.__odm__
        values: dict[str, Any] = {}
        for name, value in fields.items():
            if name not in info.data_fields:
                known = ", ".join(info.data_fields)
                raise QueryError(f"{model.__name__}.update(): no field {name!r} (fields: {known})")
            values[name] = info.adapter(name).validate_python(value)
        docs = self._run()
        coll = self._manager.collection()
        # Field and model validators see the whole document with every value set: check every
        # document before changing any, then set what was validated (assigning field by field
        # would show a model validator half-updated documents). What a model validator derived
        # from the new values (another field) is set too.
        validate = model.__pydantic_validator__.validate_python
        names = info.data_fields if info.validated else tuple(values)
        changes = []
        for doc in docs:
            new = validate({**doc.__dict__, **values}).__dict__
            changes.append({n: new[n] for n in names if n in values or new[n] is not doc.__dict__[n]})
        # Unique values as validated (a validator may have converted them), before any changes:
        # a new value goes to one document, and may not be held by another (not even one this
        # update moves off it: documents change one after the other, as assignments would).
        for name in info.unique:
            taken: dict[Any, str | None] = {}
            for doc, change in zip(docs, changes, strict=True):
                v = change.get(name)
                if v is None or is_nan(v) or same_value(v, doc.__dict__[name]):
                    continue
                if v in taken:
                    raise UniqueViolation(coll.name, name, v, taken[v])
                taken[v] = doc.uuid
                for holder in coll.indexes[name].holders(v):
                    if holder != doc.uuid:
                        raise UniqueViolation(coll.name, name, v, holder)
        for doc, change in zip(docs, changes, strict=True):
            doc._odm_set_many(change, snapshot=True)
        return len(docs)

    if TYPE_CHECKING:
        # Not iterable: type checkers flag `for doc in qs` and `list(qs)` (the manager is).
        __iter__: ClassVar[None]
    else:

        def __iter__(self):
            raise TypeError("a QuerySet is awaited (`await qs`) or iterated with `async for`")


class _Held:
    """The documents an index holds under ``keys``: counted without being listed (``count()``),
    read when iterated (a collection's index and documents change together)."""

    __slots__ = ("docs", "keys")

    def __init__(self, keys: abc.Collection[str], docs: dict[str, Any]) -> None:
        self.keys = keys
        self.docs = docs

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Any]:
        docs = self.docs
        return (docs[k] for k in self.keys if k in docs)


def _sorted(docs: list[D], get: Any, desc: bool, stop: int | None) -> list[D]:
    """``docs`` in a stable order of ``get(doc)``: ``None`` first, a NaN (which compares with
    nothing) after every number, as in PostgreSQL; reversed when ``desc``. With ``stop``, only the
    first ``stop`` documents are returned.

    The values are sorted on their own, not as ``(rank, value)`` tuples: a list of ints or strs
    sorts through CPython's compare fast path, several times faster than tuples do.
    """
    nones: list[D] = []
    nans: list[D] = []
    rest: list[D] = []
    keys: list[Any] = []
    for doc in docs:
        v = get(doc)
        if v is None:
            nones.append(doc)
        elif type(v) is float and v != v:
            # (A Decimal NaN stays with the values: it raises InvalidOperation as soon as it is
            # compared, and the lenient sort places it; checking every value for it would cost
            # the common sort several percent.)
            nans.append(doc)
        else:
            rest.append(doc)
            keys.append(v)
    head, tail = (nans, nones) if desc else (nones, nans)
    at = keys.__getitem__
    want = None if stop is None else stop - len(head)
    if want is not None and want * 8 < len(rest):
        # A few from many (order_by + limit): a heap, stable like the sort it stands for.
        pick = (heapq.nlargest if desc else heapq.nsmallest)(max(want, 0), range(len(rest)), key=at)
    else:
        pick = sorted(range(len(rest)), key=at, reverse=desc)
    return [*head, *(rest[i] for i in pick), *tail]


class _Lenient:
    """A sort key that compares its value with ``<`` where it can, by ``repr`` where it cannot."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __lt__(self, other: _Lenient) -> bool:
        try:
            return bool(self.v < other.v)
        except (TypeError, ArithmeticError):
            return repr(self.v) < repr(other.v)


@lru_cache(maxsize=256)
def _kind(t: type[Any]) -> str:
    """What a value of type ``t`` is grouped with when a field's values do not all compare: numbers
    together, strs together (a str enum too), a list with the lists whether or not it is tracked
    yet (a document loaded from the store holds plain ones until they are read), every other type
    by its name. Values that do compare with each other stay in one group, so the order of two
    documents does not depend on what a third one holds."""
    if issubclass(t, (int, float, decimal.Decimal, fractions.Fraction)):
        return "number"
    for base in (str, bytes, list, tuple, dict, set, frozenset):
        if issubclass(t, base):
            return base.__name__
    return t.__name__


def _lenient_sort_key(get: Any) -> Any:
    def key(doc: Any) -> tuple[int, str, Any]:
        v = get(doc)
        if v is None:
            return (0, "", _Lenient(0))
        if is_nan(v):
            return (2, "", _Lenient(0))
        return (1, _kind(v.__class__), _Lenient(v))

    return key


def _describe(qs: tuple[Q, ...], lookups: dict[str, Any]) -> str:
    parts = [repr(q) for q in qs] + [f"{k}={v!r}" for k, v in lookups.items()]
    return ", ".join(parts) if parts else "the query"
