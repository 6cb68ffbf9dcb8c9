"""Secondary indexes over one field of a collection.

A hash index (value → set of keys) answers equality and ``in``; a sorted list of (value, key) answers
``lt``/``lte``/``gt``/``gte``/``range``. ``None`` is kept in the hash index only (it has no order).
Values that cannot be ordered against the others (a field typed ``int | str`` holding both) make
the sorted part give up: range lookups on that field then scan, and still answer correctly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sortedcontainers import SortedList

__all__ = ["FieldIndex"]

_EMPTY: frozenset[str] = frozenset()


class FieldIndex:
    """Hash + sorted index of one field."""

    __slots__ = ("field", "hash", "sorted", "unique")

    def __init__(self, field: str, *, unique: bool = False) -> None:
        self.field = field
        self.unique = unique
        self.hash: dict[Any, set[str]] = {}
        self.sorted: SortedList | None = SortedList()

    def add(self, key: str, value: Any) -> None:
        bucket = self.hash.get(value)
        if bucket is None:
            self.hash[value] = {key}
        else:
            bucket.add(key)
        if value is not None and self.sorted is not None:
            try:
                self.sorted.add((value, key))
            except TypeError:
                self.sorted = None  # mixed, unorderable values: range lookups fall back to a scan

    def bulk_load(self, pairs: Iterable[tuple[str, Any]]) -> None:
        """Index many (key, value) pairs at once (load): one sort instead of n inserts."""
        ordered: list[tuple[Any, str]] = []
        for key, value in pairs:
            bucket = self.hash.get(value)
            if bucket is None:
                self.hash[value] = {key}
            else:
                bucket.add(key)
            if value is not None:
                ordered.append((value, key))
        if self.sorted is not None:
            try:
                self.sorted.update(ordered)
            except TypeError:
                self.sorted = None

    def remove(self, key: str, value: Any) -> None:
        bucket = self.hash.get(value)
        if bucket is not None:
            bucket.discard(key)
            if not bucket:
                del self.hash[value]
        if value is not None and self.sorted is not None:
            self.sorted.discard((value, key))

    def holders(self, value: Any) -> set[str] | frozenset[str]:
        """Keys whose value equals ``value``."""
        try:
            return self.hash.get(value, _EMPTY)
        except TypeError:  # unhashable lookup value: nothing can equal it in a hash index
            return _EMPTY

    def range(
        self, lo: Any = None, hi: Any = None, *, lo_incl: bool = True, hi_incl: bool = True
    ) -> Iterator[str] | None:
        """Keys with ``lo <(=) value <(=) hi`` (either bound optional); ``None`` if it cannot tell."""
        s = self.sorted
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
        return (key for _, key in s.islice(start, stop)) if start < stop else iter(())

    def clear(self) -> None:
        self.hash.clear()
        self.sorted = SortedList()


class _Max:
    """Sorts after every string key, so (v, _MAX) bounds all (v, key) pairs from above."""

    __slots__ = ()

    def __lt__(self, other: object) -> bool:
        return False

    def __gt__(self, other: object) -> bool:
        return True


_MAX: Any = _Max()
