"""Random documents and random queries: QuerySet results equal a plain-Python reference evaluator.

The reference below is written from the contract (api.md, docs/queries.md), not from the query code:
comparisons and string lookups against ``None`` (or through a ``None`` nested model) do not match;
``ne``/``nin`` match ``None`` unless ``None`` is among the values; ``=None`` is ``isnull=True``;
``exclude`` keeps the documents that do not match all of its lookups together; a NaN equals nothing
and compares with nothing; a plain ``Enum`` member compares and sorts as its ``.value``; on an ``Any``
field ``contains`` is Python's ``in`` and a value that does not take the lookup does not match;
``None`` sorts first ascending, NaN after the numbers, values that do not all compare by kind
(numbers, lists, strs).

Every query runs on two collections holding the same documents: ``Row``, whose fields are
``Indexed``/``Unique`` (lookups answered from the indexes), and ``Bare``, without indexes (scans).
"""

from __future__ import annotations

import enum
import math
import random
from typing import Annotated, Any

import pytest
from helpers import DbFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from brainless_odm import (
    Database,
    Document,
    DocumentConfig,
    Indexed,
    MemoryStore,
    Q,
    QuerySet,
    Registry,
    Unique,
)

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Level(enum.Enum):  # a plain enum, defined out of value order
    high = 3
    low = 1
    mid = 2


class Sub(BaseModel):
    # Its NaN and infinities stored as strings, as the documents' own (else a write refuses them).
    model_config = ConfigDict(ser_json_inf_nan="strings")

    x: int | None = None
    y: str = ""
    f: float = 0.0


class Row(Base):
    k: Annotated[int, Unique()]
    code: Annotated[str | None, Unique()] = None
    name: Annotated[str, Indexed()] = ""
    n: Annotated[int, Indexed()] = 0
    m: Annotated[int | None, Indexed()] = None
    s: Annotated[str | None, Indexed()] = None
    x: Annotated[float | None, Indexed()] = None
    lvl: Annotated[Level | None, Indexed()] = None
    tags: list[str] = Field(default_factory=list)
    sub: Sub | None = None
    data: Any = None


class Bare(Base):
    """``Row`` without an index: every lookup scans."""

    k: int
    code: str | None = None
    name: str = ""
    n: int = 0
    m: int | None = None
    s: str | None = None
    x: float | None = None
    lvl: Level | None = None
    tags: list[str] = Field(default_factory=list)
    sub: Sub | None = None
    data: Any = None


# -- data ------------------------------------------------------------------------------------------
# Empty strings, case pairs, and strings whose case folding is not lower(): ß → ss, İ → i̇,
# final sigma, the ﬁ ligature.
WORDS = ["", "a", "ab", "B", "abc", "Ba", "ca", "ß", "SS", "Straße", "STRASSE", "İ", "i̇", "ΣΑΣ", "σας", "ﬁ"]
words = st.sampled_from(WORDS)
small_ints = st.integers(-3, 3)
opt_ints = st.none() | small_ints
opt_words = st.none() | words
floats = st.sampled_from([-1.5, -0.0, 0.0, 0.5, 1.0, 2.0, math.nan, math.inf])
opt_floats = st.none() | floats
levels = st.sampled_from(list(Level))
opt_levels = st.none() | levels
# what an Any field holds: numbers (bools, a NaN), strs, lists of strs, plain enum members
anything = st.one_of(
    st.none(),
    small_ints,
    st.booleans(),
    floats,
    words,
    st.lists(words, max_size=2),
    levels,
)

rows = st.fixed_dictionaries(
    {
        "code": st.none() | words,  # made unique by appending the row's number
        "name": words,
        "n": small_ints,
        "m": opt_ints,
        "s": opt_words,
        "x": opt_floats,
        "lvl": opt_levels,
        "tags": st.lists(words, max_size=3),
        "sub": st.none() | st.fixed_dictionaries({"x": opt_ints, "y": words, "f": floats}),
        "data": anything,
    }
)

# field path -> kind
FIELDS: dict[str, str] = {
    "k": "key",
    "code": "code",
    "name": "str",
    "n": "int",
    "m": "optint",
    "s": "optstr",
    "x": "float",
    "lvl": "enum",
    "tags": "list",
    "data": "any",
    "sub__x": "optint",
    "sub__y": "str",
    "sub__f": "float",
}
RANGES = ["lt", "lte", "gt", "gte", "range"]
OPS: dict[str, list[str]] = {
    "key": ["exact", "in", *RANGES],
    "code": ["exact", "ne", "in", "nin", "lt", "gte", "icontains", "startswith", "isnull"],
    "int": ["exact", "ne", "in", "nin", "isnull", *RANGES],
    "optint": ["exact", "ne", "in", "nin", "isnull", *RANGES],
    "str": ["exact", "ne", "lt", "gte", "in", "nin", "contains", "icontains", "startswith", "endswith"],
    "optstr": ["exact", "ne", "in", "nin", "contains", "icontains", "startswith", "endswith", "isnull"],
    "float": ["exact", "ne", "in", "nin", "isnull", *RANGES],
    "enum": ["exact", "ne", "in", "nin", "isnull", *RANGES],
    "list": ["contains", "icontains"],
    "any": ["exact", "ne", "in", "nin", "isnull", "contains", "icontains", "startswith", "endswith", *RANGES],
}
ALL_OPS = {o for ops in OPS.values() for o in ops}

keys = st.integers(0, 10)


def scalar(kind: str) -> st.SearchStrategy[Any]:
    """A value for exact/ne/in/nin: what the field holds, or what validates to it."""
    if kind == "key":
        return keys
    if kind == "int":
        return small_ints | small_ints.map(str)  # "2" means 2
    if kind == "optint":
        return opt_ints
    if kind in ("optstr", "code"):
        return opt_words | st.sampled_from(["a0", "B1", "ß2", "3"])
    if kind == "float":
        return opt_floats | small_ints  # 1 means 1.0
    if kind == "enum":
        return opt_levels | st.integers(1, 3)  # 2 means Level.mid
    if kind == "any":
        return anything
    return words


def bound(kind: str) -> st.SearchStrategy[Any]:
    """A value for lt/lte/gt/gte and each end of a range."""
    if kind == "key":
        return keys
    if kind in ("str", "code"):
        return words
    if kind == "float":
        return floats | small_ints
    if kind == "enum":
        return levels | st.integers(1, 3)
    if kind == "any":
        return small_ints | floats | words | levels
    return small_ints


@st.composite
def lookup(draw: st.DrawFn) -> tuple[str, Any]:
    # indexed fields twice as likely: they take the index path, which the scan must agree with
    path = draw(st.sampled_from([*sorted(FIELDS), "k", "code", "name", "n", "m", "s", "x", "lvl"]))
    kind = FIELDS[path]
    op = draw(st.sampled_from(OPS[kind]))
    if op == "isnull":
        value: Any = draw(st.booleans())
    elif op in ("in", "nin"):
        value = draw(st.lists(scalar(kind), max_size=3))
    elif op == "range":
        value = (draw(bound(kind)), draw(bound(kind)))
    elif op in ("lt", "lte", "gt", "gte"):
        value = draw(bound(kind))
    elif op == "contains" and kind == "any":
        value = draw(small_ints | words | levels)
    elif op in ("contains", "icontains", "startswith", "endswith"):
        value = draw(words)
    else:  # exact / ne
        value = draw(scalar(kind))
    key = path if op == "exact" and draw(st.booleans()) else f"{path}__{op}"
    return key, value


lookups = st.lists(lookup(), min_size=1, max_size=3).map(dict)
more_steps = st.lists(
    st.one_of(
        st.tuples(st.just("filter"), lookups),
        st.tuples(st.just("exclude"), lookups),
        st.tuples(st.just("or"), st.tuples(lookups, lookups)),
        st.tuples(st.just("not"), lookups),
    ),
    max_size=2,
)
steps = st.tuples(st.tuples(st.just("filter"), lookups), more_steps).map(lambda t: [t[0], *t[1]])
order_keys = st.lists(
    st.sampled_from(
        ["code", "name", "n", "m", "s", "x", "lvl", "tags", "data", "sub__x", "sub__y", "sub__f"]
    ).flatmap(lambda f: st.sampled_from([f, f"-{f}"])),
    max_size=3,
    unique_by=lambda key: key.lstrip("-"),
)


# -- reference evaluator ---------------------------------------------------------------------------
def get(row: dict[str, Any], path: str) -> Any:
    value: Any = row
    for part in path.split("__"):
        if value is None:
            return None
        value = value[part]
    return value


def coerce(path: str, value: Any) -> Any:
    """A lookup value as the field's type validates it (Any: as it is)."""
    kind = FIELDS[path]
    if value is None:
        return None
    if kind in ("int", "key") and isinstance(value, str):
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "enum" and not isinstance(value, Level):
        return Level(value)
    return value


def plain(v: Any) -> Any:
    """What a value compares and sorts as: a plain enum member as its value."""
    return v.value if isinstance(v, Level) else v


def is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def matches(row: dict[str, Any], key: str, value: Any) -> bool:
    parts = key.split("__")
    op = "exact"
    if parts[-1] in ALL_OPS:
        op = parts.pop()
    path = "__".join(parts)
    v = get(row, path)
    if op in ("exact", "ne"):
        want = coerce(path, value)
        eq = v is None if want is None else bool(v == want)
        return eq if op == "exact" else not eq
    if op in ("in", "nin"):
        vals = [coerce(path, x) for x in value]
        member = any((v is None) if x is None else bool(v == x) for x in vals)
        return member if op == "in" else not member
    if op == "isnull":
        return (v is None) is value
    if v is None:
        return False
    if op in ("lt", "lte", "gt", "gte", "range"):
        if op == "range":
            lo, hi = (plain(coerce(path, b)) for b in value)
        else:
            lo = hi = plain(coerce(path, value))
        a = plain(v)
        try:
            if op == "lt":
                return bool(a < hi)
            if op == "lte":
                return bool(a <= hi)
            if op == "gt":
                return bool(a > lo)
            if op == "gte":
                return bool(a >= lo)
            return bool(lo <= a <= hi)
        except TypeError:  # an Any field: values of other types do not match
            return False
    if op == "contains":
        try:
            return value in v
        except TypeError:
            return False
    if op == "icontains":
        if isinstance(v, str):
            return value.casefold() in v.casefold()
        if isinstance(v, list):
            return any(isinstance(item, str) and item.casefold() == value.casefold() for item in v)
        return False
    if op == "startswith":
        return isinstance(v, str) and v.startswith(value)
    if op == "endswith":
        return isinstance(v, str) and v.endswith(value)
    raise AssertionError(op)


def all_match(row: dict[str, Any], lk: dict[str, Any]) -> bool:
    return all(matches(row, k, v) for k, v in lk.items())


def sort_key(v: Any) -> tuple[int, str, Any]:
    """None first, NaN last, the rest by kind (lists < numbers < strs), then by value."""
    v = plain(v)
    if v is None:
        return (0, "", 0)
    if is_nan(v):
        return (2, "", 0)
    if isinstance(v, (bool, int, float)):
        return (1, "number", v)
    return (1, type(v).__name__, v)  # "list" or "str"


def reference(
    data: list[dict[str, Any]], plan: list[tuple[str, Any]], order: list[str], offset: int, limit: int | None
) -> list[int]:
    out = []
    for row in data:
        ok = True
        for kind, arg in plan:
            if kind == "filter":
                ok = ok and all_match(row, arg)
            elif kind == "exclude":
                ok = ok and not all_match(row, arg)
            elif kind == "or":
                ok = ok and (all_match(row, arg[0]) or all_match(row, arg[1]))
            else:
                ok = ok and not all_match(row, arg)
        if ok:
            out.append(row)
    for key in reversed([*order, "k"]):  # stable sorts, the last key first
        path = key.lstrip("-")
        out.sort(key=lambda row, path=path: sort_key(get(row, path)), reverse=key.startswith("-"))
    ks = [r["k"] for r in out]
    end = None if limit is None else offset + limit
    return ks[offset:end]


def build(qs: QuerySet[Any], plan: list[tuple[str, Any]]) -> QuerySet[Any]:
    for kind, arg in plan:
        if kind == "filter":
            qs = qs.filter(**arg)
        elif kind == "exclude":
            qs = qs.exclude(**arg)
        elif kind == "or":
            qs = qs.filter(Q(**arg[0]) | Q(**arg[1]))
        else:
            qs = qs.filter(~Q(**arg))
    return qs


@pytest.fixture
async def db(make_db: DbFactory) -> Database:
    return await make_db(Row, Bare, flush_interval=60)


EDITS = st.lists(
    st.tuples(st.integers(0, 24), small_ints, opt_ints, opt_floats, opt_levels, anything, st.booleans()),
    max_size=5,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.lists(rows, min_size=1, max_size=25),
    edits=EDITS,
    plan=steps,
    order=order_keys,
    offset=st.integers(0, 5) | st.just(0),
    limit=st.none() | st.integers(0, 6),
    limit_first=st.booleans(),
)
async def test_queryset_matches_the_reference(
    db: Database,
    data: list[dict[str, Any]],
    edits: list[tuple[int, int, int | None, float | None, Level | None, Any, bool]],
    plan: list[tuple[str, Any]],
    order: list[str],
    offset: int,
    limit: int | None,
    limit_first: bool,
) -> None:
    initial = [
        {**row, "k": i, "code": None if row["code"] is None else f"{row['code']}{i}"}
        for i, row in enumerate(data)
    ]
    final = list(initial)
    for i, n, m, x, lvl, value, drop_code in edits:  # assigned after the add: indexes must follow
        if i < len(final):
            code = None if drop_code else final[i]["code"]
            final[i] = {**final[i], "n": n, "m": m, "x": x, "lvl": lvl, "data": value, "code": code}
    for cls in (Row, Bare):
        await check(cls.objects.using(db), initial, final, plan, order, offset, limit, limit_first)
    for cls in (Row, Bare):  # never written: a NaN in the Any field would be refused (test_nan.py)
        clear(cls.objects.using(db))


def clear(objects: Any) -> None:
    for doc in list(objects):
        objects.delete(doc)


EDITED = ("n", "m", "x", "lvl", "data", "code")


async def check(
    objects: Any,
    initial: list[dict[str, Any]],
    data: list[dict[str, Any]],
    plan: list[tuple[str, Any]],
    order: list[str],
    offset: int,
    limit: int | None,
    limit_first: bool,
) -> None:
    """Add ``initial``, assign what differs in ``data``, then query and compare with the reference."""
    clear(objects)
    docs = [objects.add(row) for row in initial]
    for doc, before, after in zip(docs, initial, data, strict=True):
        for name in EDITED:
            if after[name] is not before[name]:
                setattr(doc, name, after[name])

    qs = build(objects.filter(), plan).order_by(*order, "k")
    if limit_first and limit is not None:
        qs = qs.limit(limit).offset(offset)
    else:
        qs = qs.offset(offset)
        if limit is not None:
            qs = qs.limit(limit)
    expected = reference(data, plan, order, offset, limit)
    who = objects.model.__name__  # indexed or not
    assert [d.k for d in await qs] == expected, who
    assert await qs.count() == len(expected), who
    assert await qs.exists() == bool(expected), who
    first = await qs.first()
    assert (first.k if first is not None else None) == (expected[0] if expected else None), who
    unordered = build(objects.filter(), plan)
    assert sorted(d.k for d in await unordered) == sorted(reference(data, plan, [], 0, None)), who
    # each lookup on its own too: a lone lookup on an indexed field is answered by the index alone
    for _, arg in plan:
        for lk in arg if isinstance(arg, tuple) else (arg,):
            for key, value in lk.items():
                single = [("filter", {key: value})]
                want = reference(data, single, [], 0, None)
                found = sorted(d.k for d in await objects.filter(**{key: value}))
                assert found == want, (who, key, value)
                assert await objects.count(**{key: value}) == len(want), (who, key, value)


# -- documents loaded from the store ---------------------------------------------------------------
# A database that loaded its documents holds them as they were decoded (containers not tracked until
# read, indexes built in bulk): the same queries must give the same answers there. Stored values
# are JSON, so an Any field gives back what JSON holds (an enum member's value): the reference reads
# the loaded values. A NaN or infinity is not stored in it (the write is refused, test_nan.py).
FLOATS = [-1.5, -0.0, 0.0, 0.5, 1.0, 2.0, math.nan, math.inf]
FINITE = [f for f in FLOATS if math.isfinite(f)]


def _random_row(rng: random.Random, i: int) -> dict[str, Any]:
    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.25 else value

    def word() -> str:
        return rng.choice(WORDS)

    pool: list[Any] = [
        rng.randint(-3, 3),
        rng.random() < 0.5,
        rng.choice(FINITE),
        word(),
        [word()],
        rng.choice(list(Level)),
    ]
    code = maybe(word())
    return {
        "k": i,
        "code": None if code is None else f"{code}{i}",
        "name": word(),
        "n": rng.randint(-3, 3),
        "m": maybe(rng.randint(-3, 3)),
        "s": maybe(word()),
        "x": maybe(rng.choice(FLOATS)),
        "lvl": maybe(rng.choice(list(Level))),
        "tags": [word() for _ in range(rng.randint(0, 3))],
        "sub": maybe({"x": maybe(rng.randint(-3, 3)), "y": word(), "f": rng.choice(FLOATS)}),
        "data": maybe(rng.choice(pool)),
    }


def as_loaded(doc: Any) -> dict[str, Any]:
    """A loaded document's values, read from its __dict__ (which does not start tracking them)."""
    values = dict(doc.__dict__)
    sub = values["sub"]
    values["sub"] = None if sub is None else dict(sub.__dict__)
    return values


@pytest.fixture
async def loaded(make_db: DbFactory) -> tuple[Database, list[dict[str, Any]]]:
    store = MemoryStore()
    writer = await make_db(Row, Bare, store=store, flush_interval=60)
    rng = random.Random(20240611)
    for i in range(40):
        row = _random_row(rng, i)
        for cls in (Row, Bare):
            cls.objects.using(writer).add(row)
    await writer.flush()
    reader = await make_db(Row, Bare, store=store, location="reader", flush_interval=60)
    data = sorted((as_loaded(d) for d in Row.objects.using(reader)), key=lambda row: row["k"])
    return reader, data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    plan=steps, order=order_keys, offset=st.integers(0, 5) | st.just(0), limit=st.none() | st.integers(0, 6)
)
async def test_loaded_documents_match_the_reference(
    loaded: tuple[Database, list[dict[str, Any]]],
    plan: list[tuple[str, Any]],
    order: list[str],
    offset: int,
    limit: int | None,
) -> None:
    reader, data = loaded
    assert len(data) == 40
    assert any(d._odm_raw for d in Row.objects.using(reader))  # some are not tracked yet
    for cls in (Row, Bare):
        objects = cls.objects.using(reader)
        qs = build(objects.filter(), plan).order_by(*order, "k").offset(offset)
        if limit is not None:
            qs = qs.limit(limit)
        expected = reference(data, plan, order, offset, limit)
        assert [d.k for d in await qs] == expected, cls
        assert await qs.count() == len(expected), cls
