"""``QuerySet[D]``: an immutable, chainable, awaitable query over one collection in memory."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..exceptions import QueryError, UniqueViolation
from .lookups import And, Cond, Node, Not, Q, orderable, resolve, resolve_path

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
        if not qs and not lookups:
            return self
        return self._and(Not(resolve(self._manager.model, qs, lookups)))

    def order_by(self, *keys: str) -> QuerySet[D]:
        """Sort by fields (``"-priority"`` descending, ``"caller__city"`` nested); ``None`` first."""
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
            order.append((path.get, desc, name))
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
    def _candidates(self, coll: Collection[D]) -> Iterable[D]:
        """The documents that can match: from the best index, or all of them."""
        node = self._node
        conds: list[Cond] = []
        if isinstance(node, Cond):
            conds = [node]
        elif isinstance(node, And):
            stack: list[Node] = [node]
            while stack:
                n = stack.pop()
                if isinstance(n, And):
                    stack.extend(n.children)
                elif isinstance(n, Cond):
                    conds.append(n)
        best: Any = None
        best_size = len(coll.docs)
        for c in conds:
            if len(c.path.names) != 1:
                continue
            idx = coll.indexes.get(c.path.names[0])
            if idx is None:
                continue
            keys: Any = None
            if c.op == "exact":
                keys = idx.holders(c.value)
            elif c.op == "isnull" and c.value is True:
                keys = idx.holders(None)
            elif c.op == "in":
                keys = set().union(*(idx.holders(v) for v in c.value)) if c.value else set()
            elif c.op in ("lt", "lte", "gt", "gte", "range"):
                if c.op == "range":
                    it = idx.range(c.value[0], c.value[1])
                elif c.op in ("lt", "lte"):
                    it = idx.range(None, c.value, hi_incl=c.op == "lte")
                else:
                    it = idx.range(c.value, None, lo_incl=c.op == "gte")
                if it is not None:
                    keys = list(it)
            if keys is not None and len(keys) < best_size:
                best, best_size = keys, len(keys)
                if best_size == 0:
                    break
        docs = coll.docs
        if best is None:
            return list(docs.values())
        return [docs[k] for k in best if k in docs]

    def _run(self) -> list[D]:
        coll = self._manager.collection()
        docs = self._candidates(coll)
        if self._node is not None:
            pred = self._node.predicate()
            docs = [d for d in docs if pred(d)]
        elif not isinstance(docs, list):
            docs = list(docs)
        if self._order:
            docs = list(docs)
            for get, desc, _ in reversed(self._order):
                docs.sort(key=_sort_key(get), reverse=desc)
        start = self._offset
        stop = None if self._limit is None else start + self._limit
        if start or stop is not None:
            return list(itertools.islice(docs, start, stop))
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
        return len(self._run())

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
        # Nothing matched: nothing changes, so no value can collide with another document's.
        for name in info.unique if docs else ():
            if name in values and values[name] is not None:
                v = values[name]
                keys = {d.uuid for d in docs}
                if len(docs) > 1:
                    raise UniqueViolation(coll.name, name, v)
                holders = coll.indexes[name].holders(v)
                if holders - keys:
                    raise UniqueViolation(coll.name, name, v, next(iter(holders - keys)))
        for doc in docs:
            for name, value in values.items():
                setattr(doc, name, value)
        return len(docs)

    def __iter__(self) -> Iterator[D]:
        raise TypeError("a QuerySet is awaited (`await qs`) or iterated with `async for`")


def _sort_key(get: Any) -> Any:
    def key(doc: Any) -> tuple[bool, Any]:
        v = get(doc)
        return (v is not None, v) if v is not None else (False, 0)

    return key


def _describe(qs: tuple[Q, ...], lookups: dict[str, Any]) -> str:
    parts = [repr(q) for q in qs] + [f"{k}={v!r}" for k, v in lookups.items()]
    return ", ".join(parts) if parts else "the query"
