"""Secondary indexes over one field of a collection.

A hash index (value → set of keys) answers equality and ``in``; a sorted list of (value, key) answers
``lt``/``lte``/``gt``/``gte``/``range``. ``None`` is kept in the hash index only (it has no order);
so is a NaN (float or ``Decimal``), which no lookup matches (it equals nothing, itself included, and
compares with nothing: in the sorted list it would break the order every lookup bisects).
A member of a plain ``Enum`` (one without an order of its own) is ordered by its ``.value``
(:func:`order_value`), in the sorted part and in the bounds of a lookup, as the query layer orders it.
Values that cannot be ordered against the others (a field typed ``int | str`` holding both) make
the sorted part give up: range lookups on that field then scan, and still answer correctly. Once
some value has been removed, the next range lookup tries to build it again: when the value that
did not compare is gone, the index serves range lookups again.

The sorted part is built on the first range lookup of its field and maintained from then on: most
indexed fields are only ever compared for equality, and for them it would cost memory (a tuple per
document) and time on every add and load for nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sortedcontainers import SortedList

__all__ = ["FieldIndex", "is_nan", "order_value", "plain_enum"]


def is_nan(value: Any) -> bool:
    """A float or ``Decimal`` NaN: equal to nothing, ordered against nothing (a ``Decimal`` NaN
    raises ``InvalidOperation`` when compared with ``<``)."""
    t = type(value)
    if t is float:
        return bool(value != value)
    return t is Decimal and bool(value.is_nan())


@lru_cache(maxsize=256)
def plain_enum(cls: type[Any]) -> bool:
    """An ``Enum`` class whose members have no order of their own (no ``int``/``str``/``float`` mixin,
    no ``__lt__``...): such members are ordered by their ``.value`` (:func:`order_value`)."""
    return issubclass(cls, enum.Enum) and all(
        getattr(cls, op) is getattr(object, op) for op in ("__lt__", "__le__", "__gt__", "__ge__")
    )


def order_value(value: Any) -> Any:
    """What ``value`` is ordered by: a member of a plain ``Enum`` by its ``.value`` (so it sorts as
    that value would: ``None`` first, a NaN after the numbers), anything else by itself.

    By value rather than by definition order: the value is what is stored and what other tools
    read, a member's place in the class may change with an edit of the code, and an ``IntEnum`` or
    ``StrEnum`` already compares by value.
    """
    if isinstance(value, enum.Enum) and plain_enum(type(value)):
        return value.value
    return value


def _sort_value(value: Any) -> Any:
    """The value the sorted part holds for ``value``, or ``None`` when it holds none (``None`` and
    NaN have no place in an order)."""
    v = order_value(value)
    return None if v is None or is_nan(v) else v


class FieldIndex:
    """Hash + sorted index of one field."""

    __slots__ = ("field", "hash", "orderable", "retry", "sorted", "unique")

    def __init__(self, field: str, *, unique: bool = False) -> None:
        self.field = field
        self.unique = unique
        self.hash: dict[Any, str | set[str]] = {}
        self.sorted: SortedList | None = None  # built on the first range lookup
        self.orderable = True  # False once values turned out not to be mutually comparable
        self.retry = False  # not orderable, but a value was removed since: worth another build

    def _build_sorted(self) -> SortedList | None:
        pairs: list[tuple[Any, str]] = []
        for held_value, held in self.hash.items():
            value = _sort_value(held_value)
            if value is None:
                continue
            if isinstance(held, str):
                pairs.append((value, held))
            else:
                pairs.extend((value, k) for k in held)
        try:
            self.sorted = SortedList(pairs)
        except TypeError:
            self.orderable = False
            self.sorted = None
        return self.sorted

    # A value held by one document maps to its key itself, by several to a set of keys: most
    # indexed values (and every unique one) have one holder, and a set each costs ~200 bytes.
    def _hash_add(self, key: str, value: Any) -> None:
        h = self.hash
        held = h.get(value)
        if held is None:
            h[value] = key
        elif isinstance(held, str):
            if held != key:
                h[value] = {held, key}
        else:
            held.add(key)

    def add(self, key: str, value: Any) -> None:
        self._hash_add(key, value)
        if self.sorted is not None and (v := _sort_value(value)) is not None:
            try:
                self.sorted.add((v, key))
            except TypeError:
                self.sorted = None  # mixed, unorderable values: range lookups fall back to a scan
                self.orderable = False

    def bulk_load(self, pairs: Iterable[tuple[str, Any]]) -> None:
        """Index many (key, value) pairs at once (load): one sort instead of n inserts."""
        if self.sorted is None:  # the usual case: _hash_add inlined, it runs once per document
            h = self.hash
            for key, value in pairs:
                held = h.get(value)
                if held is None:
                    h[value] = key
                elif type(held) is str:
                    if held != key:
                        h[value] = {held, key}
                else:
                    held.add(key)  # type: ignore[union-attr]
            return
        ordered: list[tuple[Any, str]] = []
        for key, value in pairs:
            self._hash_add(key, value)
            v = _sort_value(value)
            if v is not None:
                ordered.append((v, key))
        if ordered and self.sorted is not None:
            try:
                self.sorted.update(ordered)
            except TypeError:
                self.sorted = None
                self.orderable = False

    def remove(self, key: str, value: Any) -> None:
        h = self.hash
        held = h.get(value)
        if held is not None:
            if isinstance(held, str):
                if held == key:
                    del h[value]
            else:
                held.discard(key)
                if len(held) == 1:
                    h[value] = next(iter(held))
                elif not held:
                    del h[value]
        if self.sorted is not None:
            v = _sort_value(value)
            if v is not None:
                self.sorted.discard((v, key))
        elif not self.orderable:
            self.retry = True

    def holders(self, value: Any) -> Collection[str]:
        """Keys whose value equals ``value``."""
        if is_nan(value):
            return ()  # NaN equals nothing (the hash index finds the very same NaN object)
        try:
            held = self.hash.get(value)
        except TypeError:  # unhashable lookup value: nothing can equal it in a hash index
            return ()
        if held is None:
            return ()
        return (held,) if isinstance(held, str) else held

    def bounds(
        self, lo: Any = None, hi: Any = None, *, lo_incl: bool = True, hi_incl: bool = True
    ) -> tuple[int, int] | None:
        """Positions in the sorted index of ``lo <(=) value <(=) hi`` (either bound optional), so
        the number of matches is known without materialising them; ``None`` if it cannot tell.
        A bound that has no place in the order (a NaN, a plain enum member whose value is ``None``)
        is below and above nothing: no value lies within it."""
        if lo is not None:
            lo = _sort_value(lo)
            if lo is None:
                return 0, 0
        if hi is not None:
            hi = _sort_value(hi)
            if hi is None:
                return 0, 0
        s = self.sorted
        if s is None:
            if not self.orderable:
                if not self.retry:
                    return None
                self.orderable, self.retry = True, False
            s = self._build_sorted()
            if s is None:
                return None
        try:
            if lo is None:
                start = 0
            else:
                start = s.bisect_left((lo,)) if lo_incl else s.bisect_right((lo, _MAX))
            if hi is None:
                stop = len(s)
            else:
                stop = s.bisect_right((hi, _MAX)) if hi_incl else s.bisect_left((hi,))
        except TypeError:
            return None
        return start, max(start, stop)

    def keys_between(self, start: int, stop: int) -> list[str]:
        """Keys at sorted positions ``start:stop`` (from :meth:`bounds`)."""
        if start >= stop:
            return []
        assert self.sorted is not None
        return [key for _, key in self.sorted.islice(start, stop)]


class _Max:
    """Sorts after every string key, so (v, _MAX) bounds all (v, key) pairs from above."""

    __slots__ = ()

    def __lt__(self, other: object) -> bool:
        return False

    def __gt__(self, other: object) -> bool:
        return True


_MAX: Any = _Max()
