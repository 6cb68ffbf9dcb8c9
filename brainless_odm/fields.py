"""Field markers used inside ``Annotated[...]``: ``Indexed`` and ``Unique``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Indexed", "Unique"]


@dataclass(frozen=True, slots=True)
class Indexed:
    """Keep a hash index (equality, ``in``) and a sorted index (``lt``/``gt``/``range``) on a field.

    ``queue_id: Annotated[int, Indexed()]``. Lookups on an indexed field do not scan the collection.
    The field's values must be hashable scalars (str, int, float, bool, enums, dates, UUIDs...).
    """

    def __repr__(self) -> str:
        return "Indexed()"


@dataclass(frozen=True, slots=True)
class Unique(Indexed):
    """An ``Indexed`` field whose non-``None`` values are held by at most one document.

    Enforced on ``add()``, on assignment and on ``update()`` (``UniqueViolation``); any number of
    documents may hold ``None``.
    """

    def __repr__(self) -> str:
        return "Unique()"
