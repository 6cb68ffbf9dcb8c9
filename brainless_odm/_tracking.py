"""In-place change tracking for the mutable parts of a stored document.

Assigning a document field goes through ``Document.__setattr__``. Everything else that can change a
document without that — ``call.tags.append(x)``, ``call.meta["k"] = v``, ``call.caller.city = "Brno"``
— is caught here:

* lists, dicts and sets inside a tracked field are replaced by ``TrackedList``/``TrackedDict``/
  ``TrackedSet`` (subclasses of the builtins, so ``isinstance`` and ``==`` behave) that report each
  mutation to a :class:`FieldLink`;
* nested Pydantic models get an assignment hook on their class (installed once, when a ``Document``
  class that uses them is created). The hook acts only on instances registered here, i.e. held by a
  stored document; every other instance behaves exactly as before.

A link names one top-level field of one document. When the field is reassigned or the document
leaves its database, the link is cut (``doc = None``), so a stale reference to an old list can no
longer touch the document. Each mutation is validated against the field's type before it counts;
an invalid one is undone and raises ``ValidationError``, leaving the document as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, SupportsIndex

from pydantic import BaseModel

if TYPE_CHECKING:
    from .document import Document

__all__ = ["FieldLink", "TrackedDict", "TrackedList", "TrackedSet", "cut_link", "install_hook", "wrap"]

Revert = Callable[[], None]


class FieldLink:
    """Ties the containers of one field of one document to that document."""

    __slots__ = ("doc", "field", "models")

    def __init__(self, doc: Document, field: str) -> None:
        self.doc: Document | None = doc
        self.field = field
        # Nested models registered to this link, by id. Holding them here keeps each id unique
        # while it is registered (no weak references needed); cut() unregisters them.
        self.models: list[BaseModel] | None = None

    def cut(self) -> None:
        """The field was reassigned or its document left the database: stop reporting."""
        self.doc = None
        models = self.models
        if models:
            for model in models:
                key = id(model)
                if _MODEL_LINKS.get(key) is self:
                    del _MODEL_LINKS[key]
            self.models = None

    def before(self) -> Any:
        """What local event callbacks need to see of the field before a change (usually nothing)."""
        doc = self.doc
        if doc is None:
            return None
        coll = doc._odm_coll
        return coll.snapshot_inplace(doc, self.field) if coll is not None else None

    def changed(self, revert: Revert | None, before: Any = None) -> None:
        doc = self.doc
        if doc is not None:
            doc._odm_inplace_change(self.field, revert, before)


class TrackedList(list[Any]):
    """A ``list`` that reports in-place changes to its document."""

    __slots__ = ("_link",)

    def __init__(self, link: FieldLink, items: Iterable[Any] = ()) -> None:
        super().__init__(items)
        self._link = link
        for i, v in enumerate(self):
            if type(v) not in _SCALARS:
                list.__setitem__(self, i, wrap(v, link))

    def _mutate(self, op: Callable[[], Any]) -> Any:
        before = list(self)

        def revert() -> None:
            list.__setitem__(self, slice(None), before)

        snapshot = self._link.before()
        result = op()
        self._link.changed(revert, snapshot)
        return result

    def append(self, value: Any, /) -> None:
        self._mutate(lambda: list.append(self, wrap(value, self._link)))

    def extend(self, values: Iterable[Any], /) -> None:
        self._mutate(lambda: list.extend(self, [wrap(v, self._link) for v in values]))

    def insert(self, index: SupportsIndex, value: Any, /) -> None:
        self._mutate(lambda: list.insert(self, index, wrap(value, self._link)))

    def remove(self, value: Any, /) -> None:
        self._mutate(lambda: list.remove(self, value))

    def pop(self, index: SupportsIndex = -1, /) -> Any:
        return self._mutate(lambda: list.pop(self, index))

    def clear(self) -> None:
        self._mutate(lambda: list.clear(self))

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        self._mutate(lambda: list.sort(self, key=key, reverse=reverse))

    def reverse(self) -> None:
        self._mutate(lambda: list.reverse(self))

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            value = [wrap(v, self._link) for v in value]
        else:
            value = wrap(value, self._link)
        self._mutate(lambda: list.__setitem__(self, index, value))

    def __delitem__(self, index: Any) -> None:
        self._mutate(lambda: list.__delitem__(self, index))

    def __iadd__(self, values: Iterable[Any]) -> TrackedList:  # type: ignore[misc]
        self.extend(values)
        return self

    def __imul__(self, n: SupportsIndex) -> TrackedList:
        self._mutate(lambda: list.__imul__(self, n))
        return self

    # Copies and pickles are plain lists: they belong to no document.
    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return copy.deepcopy(list(self), memo)

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


class TrackedDict(dict[Any, Any]):
    """A ``dict`` that reports in-place changes to its document."""

    __slots__ = ("_link",)

    def __init__(self, link: FieldLink, items: Iterable[tuple[Any, Any]] = ()) -> None:
        super().__init__(items)
        self._link = link
        for k, v in self.items():
            if type(v) not in _SCALARS:
                dict.__setitem__(self, k, wrap(v, link))

    def _mutate(self, op: Callable[[], Any]) -> Any:
        before = dict(self)

        def revert() -> None:
            dict.clear(self)
            dict.update(self, before)

        snapshot = self._link.before()
        result = op()
        self._link.changed(revert, snapshot)
        return result

    def __setitem__(self, key: Any, value: Any) -> None:
        value = wrap(value, self._link)
        self._mutate(lambda: dict.__setitem__(self, key, value))

    def __delitem__(self, key: Any) -> None:
        self._mutate(lambda: dict.__delitem__(self, key))

    def pop(self, *args: Any) -> Any:
        return self._mutate(lambda: dict.pop(self, *args))

    def popitem(self) -> tuple[Any, Any]:
        result: tuple[Any, Any] = self._mutate(lambda: dict.popitem(self))
        return result

    def clear(self) -> None:
        self._mutate(lambda: dict.clear(self))

    def update(self, *args: Any, **kwargs: Any) -> None:
        new = dict(*args, **kwargs)
        self._mutate(lambda: dict.update(self, {k: wrap(v, self._link) for k, v in new.items()}))

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key in self:
            return self[key]
        self[key] = default
        return self[key]

    def __ior__(self, other: Any) -> TrackedDict:  # type: ignore[misc]
        self.update(other)
        return self

    def __copy__(self) -> dict[Any, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[Any, Any]:
        return copy.deepcopy(dict(self), memo)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


class TrackedSet(set[Any]):
    """A ``set`` that reports in-place changes to its document."""

    __slots__ = ("_link",)

    def __init__(self, link: FieldLink, items: Iterable[Any] = ()) -> None:
        super().__init__(items)
        self._link = link

    def _mutate(self, op: Callable[[], Any]) -> Any:
        before = set(self)

        def revert() -> None:
            set.clear(self)
            set.update(self, before)

        snapshot = self._link.before()
        result = op()
        self._link.changed(revert, snapshot)
        return result

    def add(self, value: Any) -> None:
        self._mutate(lambda: set.add(self, value))

    def discard(self, value: Any) -> None:
        self._mutate(lambda: set.discard(self, value))

    def remove(self, value: Any) -> None:
        self._mutate(lambda: set.remove(self, value))

    def pop(self) -> Any:
        return self._mutate(lambda: set.pop(self))

    def clear(self) -> None:
        self._mutate(lambda: set.clear(self))

    def update(self, *others: Iterable[Any]) -> None:
        self._mutate(lambda: set.update(self, *others))

    def difference_update(self, *others: Iterable[Any]) -> None:
        self._mutate(lambda: set.difference_update(self, *others))

    def intersection_update(self, *others: Iterable[Any]) -> None:
        self._mutate(lambda: set.intersection_update(self, *others))

    def symmetric_difference_update(self, other: Iterable[Any]) -> None:
        self._mutate(lambda: set.symmetric_difference_update(self, other))

    def __ior__(self, other: Any) -> TrackedSet:  # type: ignore[misc]
        self.update(other)
        return self

    def __iand__(self, other: Any) -> TrackedSet:  # type: ignore[misc]
        self.intersection_update(other)
        return self

    def __isub__(self, other: Any) -> TrackedSet:  # type: ignore[misc]
        self.difference_update(other)
        return self

    def __ixor__(self, other: Any) -> TrackedSet:  # type: ignore[misc]
        self.symmetric_difference_update(other)
        return self

    def __copy__(self) -> set[Any]:
        return set(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> set[Any]:
        return copy.deepcopy(set(self), memo)

    def __reduce__(self) -> tuple[Any, ...]:
        return (set, (set(self),))


# Nested model instances held by stored documents: id(instance) -> the link of their field. The
# link holds the instance, so the id cannot be reused while the row exists.
_MODEL_LINKS: dict[int, FieldLink] = {}


def _link_of(model: BaseModel) -> FieldLink | None:
    return _MODEL_LINKS.get(id(model))


def cut_link(value: Any) -> None:
    """Cut the link of a field value (a tracked container or nested model) from its document."""
    t = type(value)
    if t is TrackedList or t is TrackedDict or t is TrackedSet:
        value._link.cut()
    elif t not in _SCALARS and _is_model_type(t):
        link = _MODEL_LINKS.get(id(value))
        if link is not None:
            link.cut()


def _register(model: BaseModel, link: FieldLink) -> None:
    key = id(model)
    old = _MODEL_LINKS.get(key)
    if old is link:
        return
    if old is not None:
        _forget(old, model)
    _MODEL_LINKS[key] = link
    # A list, not a dict: a field usually holds one nested model, and a dict costs 160 bytes more.
    if link.models is None:
        link.models = [model]
    else:
        link.models.append(model)


def _forget(link: FieldLink, model: BaseModel) -> None:
    models = link.models
    if models:
        for i, m in enumerate(models):
            if m is model:
                del models[i]
                break


def _unregister(model: Any, link: FieldLink) -> None:
    """``model`` was replaced inside the field of ``link``: forget it."""
    key = id(model)
    if _MODEL_LINKS.get(key) is link:
        del _MODEL_LINKS[key]
        _forget(link, model)


def _is_model_type(t: type[Any]) -> bool:
    # isinstance(x, BaseModel) goes through Pydantic's metaclass __instancecheck__ (microseconds);
    # this runs for every value of every tracked field on load, so answer once per type.
    known = _MODEL_TYPES.get(t)
    if known is None:
        known = _MODEL_TYPES[t] = issubclass(t, BaseModel) and not hasattr(t, "__odm__")
    return known


_MODEL_TYPES: dict[type[Any], bool] = {}
_SCALARS = frozenset({str, int, float, bool, type(None), bytes})


def wrap(value: Any, link: FieldLink) -> Any:
    """Return ``value`` made to report its in-place changes to ``link`` (recursively)."""
    t = type(value)
    if t in _SCALARS:
        return value
    if t is list or t is TrackedList:
        return TrackedList(link, value)
    if t is dict or t is TrackedDict:
        return TrackedDict(link, value.items())
    if t is set or t is TrackedSet:
        return TrackedSet(link, value)
    if _is_model_type(t):
        held = _link_of(value)
        if held is not None and held is not link and held.doc is not None:
            # One instance assigned to two fields or documents: each gets its own copy, or a
            # change through one would be reported to the other only.
            value = value.model_copy(deep=True)
        _register(value, link)
        d = value.__dict__
        for name, v in d.items():
            tv = type(v)
            if tv in _CONTAINERS or _is_model_type(tv):
                d[name] = wrap(v, link)
    return value


_CONTAINERS = frozenset({list, dict, set, TrackedList, TrackedDict, TrackedSet})


def install_hook(model_cls: type[BaseModel]) -> None:
    """Make assignments on instances of ``model_cls`` held by stored documents count as changes."""
    if model_cls.__dict__.get("__odm_hooked__"):
        return
    original: Callable[[BaseModel, str, Any], None] = model_cls.__setattr__

    def __setattr__(self: BaseModel, name: str, value: Any) -> None:
        link = _link_of(self)
        if link is None or link.doc is None or name not in type(self).model_fields:
            original(self, name, value)
            return
        # Held by a document: validate like the document's own fields do, whatever the nested
        # model's own config says, then keep tracking whatever container was assigned.
        snapshot = link.before()
        old = self.__dict__.get(name)
        self.__pydantic_validator__.validate_assignment(self, name, value)
        new = self.__dict__[name]
        if old is not new and _is_model_type(type(old)):
            _unregister(old, link)
        if type(new) in _CONTAINERS or _is_model_type(type(new)):
            self.__dict__[name] = wrap(new, link)
        link.changed(None, snapshot)

    model_cls.__setattr__ = __setattr__  # type: ignore[method-assign,assignment]
    model_cls.__odm_hooked__ = True  # type: ignore[attr-defined]
