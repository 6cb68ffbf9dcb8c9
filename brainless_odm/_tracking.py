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
import dataclasses
import decimal
import sys
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, SupportsIndex, cast

from pydantic import BaseModel

from ._fieldsets import SharedFieldsSet, unshare

if TYPE_CHECKING:
    from .document import Document

__all__ = [
    "FieldLink",
    "TrackedDict",
    "TrackedList",
    "TrackedSet",
    "cut_link",
    "exclusive",
    "holds_raw_data",
    "install_hook",
    "plain_copy",
    "validate_assignment",
    "wrap",
]

Revert = Callable[[], None]


class FieldLink:
    """Ties the containers of one field of one document to that document."""

    __slots__ = ("doc", "field", "models")

    def __init__(self, doc: Document, field: str) -> None:
        self.doc: Document | None = doc
        self.field = field
        # Nested models registered to this link, by id. Holding them here keeps each id unique
        # while it is registered (no weak references needed); cut() unregisters them. One model
        # is held as itself, several in a list: most fields hold one, and a list is one more
        # object per document for the cyclic GC to visit.
        self.models: Any = None

    def cut(self) -> None:
        """The field was reassigned or its document left the database: stop reporting."""
        self.doc = None
        models = self.models
        if models is not None:
            for model in models if type(models) is list else (models,):
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

    def check(self) -> None:
        """Run the document's own validators over it, if they look at this field (raises)."""
        doc = self.doc
        if doc is not None:
            doc._odm_check_validators(self.field)

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
        if not _same_items(before, self):
            self._link.changed(revert, snapshot)
        _detach_removed(before, self, self._link)
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
        if not _same_entries(before, self):
            self._link.changed(revert, snapshot)
        _detach_removed(before.values(), self.values(), self._link)
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
        if before != self:  # an element equal to one held is not added: no change of type either
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
    elif t is tuple:
        # A tuple is not wrapped, its items are (see wrap): a model in it stays registered.
        for item in value:
            cut_link(item)
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
    held = link.models  # None, one model, or a list of them (see FieldLink)
    if held is None:
        link.models = model
    elif type(held) is list:
        held.append(model)
    else:
        link.models = [held, model]


def _forget(link: FieldLink, model: BaseModel) -> None:
    models = link.models
    if models is None:
        return
    if type(models) is list:
        for i, m in enumerate(models):
            if m is model:
                del models[i]
                break
    elif models is model:
        link.models = None


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
        known = _MODEL_TYPES[t] = (issubclass(t, BaseModel) and not hasattr(t, "__odm__")) or (
            dataclasses.is_dataclass(t) and not t.__dataclass_params__.frozen  # type: ignore[attr-defined]
        )
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
    if t is tuple:
        items = tuple(wrap(v, link) for v in value)
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if _is_model_type(t):
        held = _link_of(value)
        if held is not None and held is not link and held.doc is not None:
            # One instance assigned to two fields or documents: each gets its own copy, or a
            # change through one would be reported to the other only.
            value = copy.deepcopy(value)
        _register(value, link)
        d = getattr(value, "__dict__", None)
        if d is not None:
            for name, v in d.items():
                tv = type(v)
                if tv in _CONTAINERS or _is_model_type(tv):
                    d[name] = wrap(v, link)
    return value


def plain_copy(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """``copy.deepcopy(value)`` for the value of a tracked field, with plain containers (as the
    tracked ones' ``__deepcopy__`` give): lists, dicts, sets, tuples and Pydantic models are
    copied here, without ``deepcopy``'s dispatch per object (the snapshot of a benchmark
    document for ``on_change``'s ``old`` went from ~24 µs to ~12 µs); anything else, and any
    model with its own ``__deepcopy__`` or private attributes, goes to ``deepcopy``."""
    t = type(value)
    if t in _SCALARS:
        return value
    if memo is None:
        memo = {}
    else:
        done = memo.get(id(value))
        if done is not None:
            return done
    if t is list or t is TrackedList:
        items: list[Any] = []
        memo[id(value)] = items
        items.extend([v if type(v) in _SCALARS else plain_copy(v, memo) for v in value])
        return items
    if t is dict or t is TrackedDict:
        if not all(type(k) in _SCALARS for k in value):
            return copy.deepcopy(value, memo)
        mapping: dict[Any, Any] = {}
        memo[id(value)] = mapping
        mapping.update({k: v if type(v) in _SCALARS else plain_copy(v, memo) for k, v in value.items()})
        return mapping
    if (t is set or t is TrackedSet or t is tuple) and all(type(v) in _SCALARS for v in value):
        if t is tuple:
            return value  # as deepcopy: nothing in it to copy
        members = memo[id(value)] = set(value)
        return members
    if _copies_plainly(t) and getattr(value, "__pydantic_private__", None) is None:
        model = cast("Any", t).__new__(t)
        memo[id(value)] = model
        d = {k: v if type(v) in _SCALARS else plain_copy(v, memo) for k, v in value.__dict__.items()}
        object.__setattr__(model, "__dict__", d)
        extra = value.__pydantic_extra__
        object.__setattr__(model, "__pydantic_extra__", None if extra is None else copy.deepcopy(extra, memo))
        object.__setattr__(model, "__pydantic_fields_set__", set(value.__pydantic_fields_set__))
        object.__setattr__(model, "__pydantic_private__", None)
        return model
    return copy.deepcopy(value, memo)


def _copies_plainly(t: type[Any]) -> bool:
    """A Pydantic model class whose deep copy is BaseModel's own (which ``plain_copy`` repeats)."""
    known = _PLAIN_COPY_TYPES.get(t)
    if known is None:
        known = _PLAIN_COPY_TYPES[t] = (
            issubclass(t, BaseModel)
            and getattr(t, "__deepcopy__", None) is BaseModel.__deepcopy__
            and not hasattr(t, "__odm__")
        )
    return known


_PLAIN_COPY_TYPES: dict[type[Any], bool] = {}


def exclusive(values: dict[str, Any], names: Iterable[str]) -> bool:
    """Whether nothing but ``values`` (a document's ``__dict__``) holds the containers and models
    of fields ``names``, or anything mutable inside them.

    Then their wrapping for change tracking can wait for their first read through the document
    (see ``document._TrackedField``): no one can change them in place before that. A document
    validated from plain data (``objects.add(name=..., tags=[...])``) qualifies; one holding a
    nested model or a list that the caller also holds does not, and is wrapped at once, so a
    change made through the caller's reference is tracked as before. Decided by reference
    counts (CPython), against a baseline measured when this module is imported, and weak
    references; where the baseline cannot be measured (another Python, a tracer running at
    import), nothing qualifies and every document is wrapped at once."""
    limit = _SOLE_REFS
    return limit is not None and _exclusive_at(values, names, limit)


def _exclusive_at(values: dict[str, Any], names: Iterable[str], limit: int) -> bool:
    for name in names:
        v = values[name]
        if type(v) not in _SCALARS and not _sole(v, limit):
            return False
    return True


def _sole(value: Any, limit: int) -> bool:
    # Called as ``_sole(v, ...)`` with ``v`` a local of the caller, everywhere (the count of
    # references it sees must mean the same at every level).
    t = type(value)
    if t in _SCALARS:
        return True
    if t is list or t is dict or t is tuple:
        if _refs(value) > limit:
            return False
    elif t is set or _is_model_type(t):
        # These can be weakly referenced (an identity map of models, say): counts miss that.
        if _refs(value) > limit or _weakrefs(value):
            return False
    else:
        return t is not TrackedList and t is not TrackedDict and t is not TrackedSet
    items: Iterable[Any]
    if t is dict:
        items = value.values()
    elif t is list or t is set or t is tuple:
        items = value
    else:
        d = getattr(value, "__dict__", None)
        if d is None:
            return False  # a slotted dataclass: not worth looking into
        items = d.values()
    for v in items:  # noqa: SIM110  # not all(...): a generator frame would count differently
        if type(v) not in _SCALARS and not _sole(v, limit):
            return False
    return True


_refs = sys.getrefcount
_weakrefs = weakref.getweakrefcount


def _calibrate() -> int | None:
    """The reference count ``_sole`` sees for a value held by one container only; ``None``
    where counts do not tell (another Python, or one that does not count every reference)."""
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 14):
        return None  # 3.14 borrows references on the stack: not checked there yet
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return None  # a tracer reading frame locals would inflate every count measured here
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if is_gil_enabled is not None and not is_gil_enabled():
        return None  # free-threaded: deferred and biased counts

    @dataclasses.dataclass
    class Probe:
        items: list[Any]

    def fresh() -> dict[str, Any]:
        return {"a": [[1]], "b": {"k": [1]}, "c": Probe([[1]]), "d": ([1],)}

    names = ("a", "b", "c", "d")
    found = next((n for n in range(1, 16) if _exclusive_at(fresh(), names, n)), None)
    if found is None:
        return None
    reach: list[Callable[[dict[str, Any]], Any]] = [
        lambda d: d["a"],
        lambda d: d["a"][0],
        lambda d: d["b"],
        lambda d: d["b"]["k"],
        lambda d: d["c"],
        lambda d: d["c"].items,
        lambda d: d["c"].items[0],
        lambda d: d["d"][0],
    ]
    for path in reach:
        d = fresh()
        extra = path(d)  # one more holder: must be seen
        if _exclusive_at(d, names, found):
            return None
        del extra
    return found


_SOLE_REFS: int | None = None


_DEAD = FieldLink.__new__(FieldLink)  # the link of values that left their document: reports nowhere
_DEAD.doc = None
_DEAD.field = ""
_DEAD.models = None


def _detach(value: Any, link: FieldLink) -> None:
    """``value`` left the field of ``link`` (removed, popped, replaced): stop it reporting there,
    with everything inside it, so it can be used elsewhere (or in another document) on its own."""
    t = type(value)
    if t in _SCALARS:
        return
    if t is TrackedList or t is TrackedDict or t is TrackedSet:
        if value._link is link:
            value._link = _DEAD
            for v in value.values() if t is TrackedDict else value:
                _detach(v, link)
    elif t is tuple:
        for v in value:
            _detach(v, link)
    elif _is_model_type(t):
        _unregister(value, link)
        for v in getattr(value, "__dict__", {}).values():
            _detach(v, link)


def holds_raw_data(current: Any, validated: Any) -> tuple[Any, str] | None:
    """Where ``current`` holds raw data (a dict) that validation turned into a model: that data
    and the model's class name; ``None`` if it holds model instances wherever models belong."""
    if isinstance(validated, BaseModel):
        if not _is_model_type(type(current)):
            return current, type(validated).__name__
        cd = current.__dict__
        for k, v in validated.__dict__.items():
            found = holds_raw_data(cd.get(k), v)
            if found is not None:
                return found
        return None
    pairs: Iterable[tuple[Any, Any]] = ()
    if isinstance(validated, (list, tuple)) and isinstance(current, (list, tuple)):
        pairs = zip(current, validated, strict=False)
    elif isinstance(validated, dict) and isinstance(current, dict):
        pairs = ((current.get(k), v) for k, v in validated.items())
    for c, v in pairs:
        found = holds_raw_data(c, v)
        if found is not None:
            return found
    return None


def _detach_removed(before: Iterable[Any], after: Iterable[Any], link: FieldLink) -> None:
    kept: set[int] | None = None
    for v in before:
        if type(v) in _SCALARS:
            continue
        if kept is None:
            kept = {id(x) for x in after}
        if id(v) not in kept:
            _detach(v, link)


_CONTAINERS = frozenset({list, dict, set, tuple, TrackedList, TrackedDict, TrackedSet})


_NUMBERS = frozenset({bool, int, float, decimal.Decimal})
_MISSING: Any = object()


def same_value(old: Any, new: Any) -> bool:
    """Whether assigning ``new`` over ``old`` changes nothing. ``1``, ``1.0`` and ``True`` are
    equal in Python but not in what is stored, so the type counts too; values that refuse to
    compare count as changed."""
    if old is new:
        return True
    to, tn = type(old), type(new)
    if to is not tn and (to in _NUMBERS or tn in _NUMBERS):
        return False
    try:
        return bool(old == new)
    except Exception:
        return False


def _same_items(before: list[Any], after: list[Any]) -> bool:
    """Whether an in-place list operation changed nothing (``del tags[:]`` of an empty list,
    ``tags[0] = tags[0]``): then it is no change to write, as assigning an equal value is not."""
    return len(before) == len(after) and all(map(same_value, before, after))


def _same_entries(before: dict[Any, Any], after: dict[Any, Any]) -> bool:
    """``_same_items`` for a dict (``d.update({})``, ``d.pop(k, None)`` of a missing key)."""
    if len(before) != len(after):
        return False
    for key, old in before.items():
        new = after.get(key, _MISSING)
        if new is _MISSING or not same_value(old, new):
            return False
    return True


def validate_assignment(
    model: BaseModel, name: str, value: Any, then: Callable[[], None] | None = None
) -> None:
    """Pydantic's assignment validation, followed by ``then`` (a further check), undone
    completely when either fails.

    Pydantic has already installed the new value when a ``model_validator(mode="after")`` rejects
    it; the old ``__dict__`` (Pydantic builds a new one) and fields-set go back, so a rejected
    assignment changes nothing."""
    old_dict = model.__dict__
    fields_set = model.__pydantic_fields_set__
    was_set = name in fields_set
    if not was_set and type(fields_set) is SharedFieldsSet:
        object.__setattr__(model, "__pydantic_fields_set__", set(fields_set))  # see _fieldsets
    try:
        model.__pydantic_validator__.validate_assignment(model, name, value)
        if then is not None:
            then()
    except BaseException:
        object.__setattr__(model, "__dict__", old_dict)
        if not was_set:
            model.__pydantic_fields_set__.discard(name)
        raise


def install_hook(model_cls: type[Any]) -> None:
    """Make assignments on instances of ``model_cls`` (a nested Pydantic model or a dataclass) held
    by stored documents count as changes."""
    if model_cls.__dict__.get("__odm_hooked__"):
        return
    original: Callable[[Any, str, Any], None] = model_cls.__setattr__  # type: ignore[assignment]
    is_model = issubclass(model_cls, BaseModel)

    def __setattr__(self: Any, name: str, value: Any) -> None:
        link = _link_of(self)
        if link is None or link.doc is None:
            if is_model:
                unshare(self, name)  # Pydantic may add ``name`` to its fields-set (_fieldsets)
            original(self, name, value)
            return
        fields = type(self).model_fields if is_model else self.__dataclass_fields__
        if name not in fields:
            if is_model:
                unshare(self, name)  # an extra="allow" attribute joins the fields-set
            original(self, name, value)
            return
        snapshot = link.before()
        old = self.__dict__.get(name)
        # Then the document's own validators, over the document as it is now (link.check).
        if is_model:
            # Held by a document: validate like the document's own fields do, whatever the
            # nested model's own config says.
            validate_assignment(self, name, value, then=link.check)
        else:
            original(self, name, value)
            try:
                link.check()
            except BaseException:
                original(self, name, old)
                raise
        d = self.__dict__
        new = d[name]
        if same_value(old, new):
            d[name] = old  # keep the tracked original; an equal value is no change
            return
        if old is not new:
            _detach(old, link)
        if type(new) in _CONTAINERS or _is_model_type(type(new)):
            d[name] = wrap(new, link)
        link.changed(None, snapshot)

    __setattr__._odm_hook = True  # type: ignore[attr-defined]  # its fields-set may be shared
    model_cls.__setattr__ = __setattr__  # type: ignore[assignment]
    model_cls.__odm_hooked__ = True


_SOLE_REFS = _calibrate()
