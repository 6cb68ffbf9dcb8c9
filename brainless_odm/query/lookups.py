"""``field__op=value`` → a checked condition with a predicate. Pure: no storage here.

Everything is resolved when a query is *built*: an unknown field, an unknown lookup, a lookup that
does not apply to the field's type, or a value that does not validate against it raises
``QueryError`` then, never an empty result later.
"""

from __future__ import annotations

import enum
import operator
import types
import typing
from collections import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Union

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..engine.indexes import is_nan, order_value, plain_enum
from ..exceptions import QueryError

__all__ = [
    "LOOKUPS", "And", "Cond", "Node", "Not", "Or", "Q", "by_value", "orderable", "ordered_getter", "resolve",
    "resolve_path",
]  # fmt: skip

LOOKUPS = frozenset(
    {
        "exact", "ne", "lt", "lte", "gt", "gte", "in", "nin", "contains", "icontains",
        "startswith", "endswith", "isnull", "range",
    }
)  # fmt: skip
COMPARISONS = frozenset({"lt", "lte", "gt", "gte"})
INDEXABLE = frozenset({"exact", "in", "lt", "lte", "gt", "gte", "range", "isnull"})

Getter = Callable[[Any], Any]
Predicate = Callable[[Any], bool]


# -- field types ---------------------------------------------------------------------------------
def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether ``None`` was allowed)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _strip_optional(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        nullable = len(args) != len(typing.get_args(tp))
        if len(args) == 1:
            inner, inner_null = _strip_optional(args[0])
            return inner, nullable or inner_null
        return typing.Union[tuple(args)], nullable  # noqa: UP007 - built from a runtime tuple
    return tp, tp is type(None) or tp is Any


def _model_of(tp: Any) -> type[BaseModel] | None:
    base, _ = _strip_optional(tp)
    return base if isinstance(base, type) and issubclass(base, BaseModel) else None


def _element_of(tp: Any) -> Any | None:
    """The item type if ``tp`` is a list/set/tuple-like, else ``None``: a union of the item types
    of a ``tuple[int, str]``, whose items differ."""
    base, _ = _strip_optional(tp)
    origin = typing.get_origin(base)
    if isinstance(origin, type) and issubclass(origin, (abc.Sequence, abc.Set)):
        args = list(dict.fromkeys(a for a in typing.get_args(base) if a is not Ellipsis))
        if not args:
            return Any
        return args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007 - runtime tuple
    if base in (list, set, frozenset, tuple):
        return Any
    return None


def _is_any(tp: Any) -> bool:
    """``Any`` or ``object``: a field that holds whatever it is given."""
    return tp is Any or tp is object


def _is_str(tp: Any) -> bool:
    """Whether ``tp`` may hold a str (``Any`` may)."""
    if tp is None:
        return False
    base, _ = _strip_optional(tp)
    if _is_any(base):
        return True
    if typing.get_origin(base) is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(base))
    if typing.get_origin(base) in (Union, types.UnionType):
        return any(_is_str(a) for a in typing.get_args(base))
    return isinstance(base, type) and issubclass(base, str)


def orderable(tp: Any, *, inside: bool = False) -> bool:
    """Can values of type ``tp`` be ordered? (Models, mappings and sets cannot.)

    Decided from the declared type when a query is built, so that ``order_by("caller")`` or
    ``meta__gt=...`` on such a field is a ``QueryError`` then, not a ``TypeError`` (or a silently
    empty result) when the query runs. A plain ``Enum`` (no order of its own) is ordered by its
    members' values (:func:`by_value`), but not ``inside`` a list or tuple: ``<`` between two lists
    compares their items themselves.
    """
    base, _ = _strip_optional(tp)
    origin = typing.get_origin(base)
    if origin is typing.Literal or base is Any:
        return True
    if origin in (Union, types.UnionType):
        return all(orderable(a, inside=inside) for a in typing.get_args(base))
    if origin is not None:
        # Mapping[...] and AbstractSet[...] as dict and set: a mapping has no order, and sets
        # compare as subsets (no total order to sort by).
        if not isinstance(origin, type) or issubclass(origin, (abc.Mapping, abc.Set)):
            return False
        if issubclass(origin, abc.Sequence):  # list, tuple, Sequence: ordered by their items
            return all(orderable(a, inside=True) for a in typing.get_args(base) if a is not Ellipsis)
        return True
    if isinstance(base, type):
        if issubclass(base, (BaseModel, abc.Mapping, abc.Set)):
            return False
        if issubclass(base, enum.Enum):
            return not (inside and plain_enum(base))
    return True


def by_value(tp: Any) -> bool:
    """Whether values of type ``tp`` may be members of a plain ``Enum``, which are compared and
    sorted by their ``.value`` (``order_value``): the field's values then go through it."""
    base, _ = _strip_optional(tp)
    if base is Any or base is object:
        return True
    origin = typing.get_origin(base)
    if origin is typing.Literal:
        return any(isinstance(a, enum.Enum) and plain_enum(type(a)) for a in typing.get_args(base))
    if origin in (Union, types.UnionType):
        return any(by_value(a) for a in typing.get_args(base))
    return isinstance(base, type) and plain_enum(base)


@lru_cache(maxsize=1024)
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def _validate(tp: Any, value: Any, what: str) -> Any:
    try:
        return _adapter(tp).validate_python(value)
    except ValidationError as exc:
        msg = exc.errors()[0].get("msg", str(exc))
        raise QueryError(f"{what}: {value!r} is not a valid {_type_name(tp)} ({msg})") from exc
    except TypeError:  # an unhashable annotation (rare): accept the value as given
        return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


@dataclass(frozen=True)
class FieldPath:
    """A resolved (possibly nested) field: its names, declared type and a None-safe getter."""

    names: tuple[str, ...]
    annotation: Any
    get: Getter

    @property
    def dotted(self) -> str:
        return "__".join(self.names)


def _getter(names: tuple[str, ...]) -> Getter:
    if len(names) == 1:
        name = names[0]
        return lambda doc: doc.__dict__[name]

    first, rest = names[0], names[1:]

    def get(doc: Any) -> Any:
        # The document's own field from __dict__ (reading it as an attribute would set up change
        # tracking of a freshly loaded document just to compare a value); nested ones as attributes.
        obj = doc.__dict__[first]
        for n in rest:
            if obj is None:
                return None
            obj = getattr(obj, n)
        return obj

    return get


def resolve_path(cls: type[BaseModel], parts: Iterable[str], what: str) -> FieldPath:
    """Resolve ``caller__city`` (as parts) on ``cls``; ``QueryError`` if a part is not a field."""
    model: type[BaseModel] | None = cls
    names: list[str] = []
    annotation: Any = None
    for part in parts:
        if model is None:
            raise QueryError(f"{what}: {'__'.join(names)} is not a model, it has no field {part!r}")
        finfo = model.model_fields.get(part)
        if finfo is None:
            fields = ", ".join(sorted(model.model_fields))
            raise QueryError(f"{what}: {model.__name__} has no field {part!r} (fields: {fields})")
        names.append(part)
        annotation = finfo.annotation
        model = _model_of(annotation)
    if not names:
        raise QueryError(f"{what}: no field named")
    return FieldPath(tuple(names), annotation, _getter(tuple(names)))


def ordered_getter(path: FieldPath) -> Getter:
    """``path.get``, giving what a value is ordered by (a plain enum member's ``.value``)."""
    get = path.get
    if not by_value(path.annotation):
        return get
    return lambda doc: order_value(get(doc))


# -- conditions ------------------------------------------------------------------------------------
class Node:
    """A resolved filter tree node."""

    def predicate(self) -> Predicate:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Cond(Node):
    path: FieldPath
    op: str
    value: Any
    test: Predicate

    def predicate(self) -> Predicate:
        return self.test


@dataclass(frozen=True, eq=False)
class And(Node):
    children: tuple[Node, ...]

    def predicate(self) -> Predicate:
        preds = [c.predicate() for c in self.children]
        if not preds:
            return lambda doc: True
        if len(preds) == 1:
            return preds[0]
        return lambda doc: all(p(doc) for p in preds)


@dataclass(frozen=True, eq=False)
class Or(Node):
    children: tuple[Node, ...]

    def predicate(self) -> Predicate:
        preds = [c.predicate() for c in self.children]
        return lambda doc: any(p(doc) for p in preds)


@dataclass(frozen=True, eq=False)
class Not(Node):
    child: Node

    def predicate(self) -> Predicate:
        p = self.child.predicate()
        return lambda doc: not p(doc)


def _safe(cmp: Callable[[Any, Any], bool], get: Getter, value: Any) -> Predicate:
    def test(doc: Any) -> bool:
        v = get(doc)
        if v is None:
            return False
        try:
            return bool(cmp(v, value))
        except (TypeError, ArithmeticError):  # ArithmeticError: a Decimal NaN
            return False

    return test


def _hashable_set(values: list[Any]) -> frozenset[Any] | None:
    try:
        return frozenset(values)
    except TypeError:
        return None


def make_cond(cls: type[BaseModel], key: str, value: Any) -> Cond:
    """``key`` is ``field[__sub...][__op]``; check everything and build the predicate."""
    parts = key.split("__")
    op = "exact"
    if len(parts) > 1 and parts[-1] in LOOKUPS:
        op = parts.pop()
    elif len(parts) > 1 and _model_of_path(cls, parts[:-1]) is None:
        # `priority__foo`: priority is not a model, so foo can only be meant as a lookup.
        raise QueryError(f"{key}: unknown lookup {parts[-1]!r} (lookups: {', '.join(sorted(LOOKUPS))})")
    what = f"{cls.__name__}.{key}"
    path = resolve_path(cls, parts, what)
    tp = path.annotation
    get = path.get
    base, _ = _strip_optional(tp)

    if op == "exact" and value is None:
        op, value = "isnull", True
    if op in ("exact", "ne"):
        v = _validate(tp, value, what) if value is not None else None
        eq: Predicate = lambda doc: get(doc) == v  # noqa: E731
        return Cond(path, op, v, eq if op == "exact" else (lambda doc: not eq(doc)))
    if (op in COMPARISONS or op == "range") and not orderable(tp):
        raise QueryError(f"{what}: {path.dotted} is a {_type_name(base)}, which has no order")
    if op in COMPARISONS:
        if value is None:
            raise QueryError(f"{what}: cannot compare with None; use {path.dotted}__isnull")
        v = _validate(base, value, what)
        cmp = {"lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge}[op]
        return Cond(path, op, v, _safe(cmp, ordered_getter(path), order_value(v)))
    if op in ("in", "nin"):
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise QueryError(f"{what}: needs an iterable of values (a list, set, tuple...), got {value!r}")
        vals = [_validate(tp, x, what) if x is not None else None for x in value]
        vals = [x for x in vals if not is_nan(x)]  # equal to nothing (a set would find itself)
        hs = _hashable_set(vals)
        if hs is not None:

            def member(doc: Any) -> bool:
                v = get(doc)
                try:
                    return v in hs
                except TypeError:  # an unhashable value (a list in an Any field) is no member
                    return any(v == x for x in vals)

        else:
            member = lambda doc: any(get(doc) == x for x in vals)  # noqa: E731
        return Cond(path, op, tuple(vals), member if op == "in" else (lambda doc: not member(doc)))
    if op == "isnull":
        if not isinstance(value, bool):
            raise QueryError(f"{what}: isnull takes True or False, got {value!r}")
        want = value
        return Cond(path, op, want, lambda doc: (get(doc) is None) is want)
    if op == "range":
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise QueryError(f"{what}: range takes a (low, high) pair, got {value!r}")
        pair = list(value)
        if len(pair) != 2 or pair[0] is None or pair[1] is None:
            raise QueryError(f"{what}: range takes a (low, high) pair of values, got {value!r}")
        lo, hi = (_validate(base, x, what) for x in pair)
        get_ordered, lo_v, hi_v = ordered_getter(path), order_value(lo), order_value(hi)

        def in_range(doc: Any) -> bool:
            v = get_ordered(doc)
            if v is None:
                return False
            try:
                return bool(lo_v <= v <= hi_v)
            except (TypeError, ArithmeticError):
                return False

        return Cond(path, op, (lo, hi), in_range)
    alts = _alternatives(tp)
    if op == "contains":
        return Cond(path, op, value, _contains(alts, get, value, what, path))
    if op == "icontains":
        if not any(_is_str(a) or _is_str(_element_of(a)) for a in alts):
            raise QueryError(
                f"{what}: icontains needs a str or list[str] field, {path.dotted} is {_type_name(tp)}"
            )
        folded: str = _validate(str, value, what).casefold()

        def icontains(doc: Any) -> bool:
            a = get(doc)
            if isinstance(a, str):
                return folded in a.casefold()
            if isinstance(a, (list, tuple, set, frozenset)):
                return any(isinstance(x, str) and x.casefold() == folded for x in a)
            return False  # None, or another type (an Any field): no match, never an error

        return Cond(path, op, folded, icontains)
    # startswith / endswith
    if not _is_str(tp):
        raise QueryError(f"{what}: {op} needs a str field, {path.dotted} is {_type_name(tp)}")
    v = _validate(str, value, what)
    method = str.startswith if op == "startswith" else str.endswith
    return Cond(path, op, v, _safe(lambda a, b: isinstance(a, str) and method(a, b), get, v))


def _alternatives(tp: Any) -> list[Any]:
    """The types a value of ``tp`` may have: a union's members (nested ones too), without ``None``."""
    base, _ = _strip_optional(tp)
    if typing.get_origin(base) in (Union, types.UnionType):
        return [alt for a in typing.get_args(base) for alt in _alternatives(a)]
    return [base]


def _contains(alts: list[Any], get: Getter, value: Any, what: str, path: FieldPath) -> Predicate:
    """``value in`` the field's value. The argument is validated as each kind of value the field may
    hold takes it: a ``str`` for a str, an item for a list (``tags__contains="5"`` on a
    ``list[int]`` means ``5``; on a ``tuple[int, str]`` both ``5`` and ``"5"``), as it is for an
    ``Any`` field. A document whose value does not take
    the argument (``5 in "abc"``, an ``int`` in an ``Any`` field) does not match."""
    args: list[Any] = []
    error: QueryError | None = None

    def take(tp: Any) -> None:
        nonlocal error
        try:
            arg = _validate(tp, value, what)
        except QueryError as exc:
            error = error or exc
            return
        if not any(arg is a or (type(arg) is type(a) and _equal(arg, a)) for a in args):
            args.append(arg)

    if any(_is_str(a) and not _is_any(a) for a in alts):
        take(str)
    # Each item type on its own: validated against a union, "2" would stay a str for a
    # tuple[int, str] (Pydantic's smart mode), and never find the int 2.
    items = [t for a in alts if (e := _element_of(a)) is not None for t in _union_members(e)]
    for t in dict.fromkeys(items):
        take(t)
    if any(_is_any(a) for a in alts):
        args.append(value)
    if not args:
        if error is not None:
            raise error
        raise QueryError(
            f"{what}: contains needs a str or list field, {path.dotted} is {_type_name(path.annotation)}"
        )
    if len(args) == 1:
        (arg,) = args

        def contains(doc: Any) -> bool:
            v = get(doc)
            if v is None:
                return False
            try:
                return arg in v
            except TypeError:  # a value that holds no such thing (5 in "abc", 5 in 7)
                return False

        return contains

    def contains_any(doc: Any) -> bool:
        v = get(doc)
        if v is None:
            return False
        for a in args:
            try:
                if a in v:
                    return True
            except TypeError:
                pass
        return False

    return contains_any


def _union_members(tp: Any) -> list[Any]:
    """The members of a union (nested ones too, ``None`` included), or ``[tp]``."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [m for a in typing.get_args(tp) for m in _union_members(a)]
    return [tp]


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def _model_of_path(cls: type[BaseModel], parts: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = cls
    for part in parts:
        if model is None:
            return None
        finfo = model.model_fields.get(part)
        if finfo is None:
            return model  # let resolve_path report the unknown field
        model = _model_of(finfo.annotation)
    return model


# -- Q -----------------------------------------------------------------------------------------------
class Q:
    """A reusable filter: ``Q(state="a") | Q(priority__gt=5)``, ``~Q(...)``, ``Q(...) & Q(...)``.

    Keyword lookups inside one ``Q`` are AND-ed. A ``Q`` is checked against a document class when
    it is used in ``filter()``/``exclude()``.
    """

    __slots__ = ("children", "connector", "lookups", "negated")

    def __init__(self, *children: Q, **lookups: Any) -> None:
        for c in children:
            if not isinstance(c, Q):
                raise QueryError(f"Q() takes Q objects and keyword lookups, got {c!r}")
        self.children: tuple[Q, ...] = children
        self.lookups: dict[str, Any] = lookups
        self.connector = "AND"
        self.negated = False

    @classmethod
    def _combine(cls, connector: str, *qs: Q) -> Q:
        q = cls(*qs)
        q.connector = connector
        return q

    def __or__(self, other: Q) -> Q:
        if not isinstance(other, Q):
            return NotImplemented
        return Q._combine("OR", self, other)

    def __and__(self, other: Q) -> Q:
        if not isinstance(other, Q):
            return NotImplemented
        return Q._combine("AND", self, other)

    def __invert__(self) -> Q:
        q = Q._combine("AND", self)
        q.negated = True
        return q

    def __repr__(self) -> str:
        inner = [repr(c) for c in self.children] + [f"{k}={v!r}" for k, v in self.lookups.items()]
        body = f" {self.connector} ".join(inner) if self.connector == "OR" else ", ".join(inner)
        return f"{'~' if self.negated else ''}Q({body})"

    def resolve(self, cls: type[BaseModel]) -> Node:
        # An empty Q is no condition at all (as in Django): Q(), ~Q() and Q(a=1) | Q() drop it.
        nodes: list[Node] = [n for n in (c.resolve(cls) for c in self.children) if not no_condition(n)]
        nodes += [make_cond(cls, k, v) for k, v in self.lookups.items()]
        if not nodes:
            return And(())
        node: Node = Or(tuple(nodes)) if self.connector == "OR" else And(tuple(nodes))
        return Not(node) if self.negated else node


def no_condition(node: Node) -> bool:
    return isinstance(node, And) and not node.children


def resolve(cls: type[BaseModel], qs: tuple[Q, ...], lookups: dict[str, Any]) -> Node:
    """``filter(*qs, **lookups)`` arguments → one resolved node (an AND)."""
    for q in qs:
        if not isinstance(q, Q):
            raise QueryError(f"filter()/exclude() take Q objects and keyword lookups, got {q!r}")
    nodes: list[Node] = [n for n in (q.resolve(cls) for q in qs) if not no_condition(n)]
    nodes += [make_cond(cls, k, v) for k, v in lookups.items()]
    return And(tuple(nodes))
