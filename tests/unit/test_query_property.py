"""Random documents and random queries: QuerySet results equal a plain-Python reference evaluator.

The reference below is written from the contract (api.md), not from the query code: comparisons and
string lookups against ``None`` (or through a ``None`` nested model) do not match; ``ne``/``nin``
match ``None`` unless ``None`` is among the values; ``=None`` is ``isnull=True``; ``exclude`` keeps
the documents that do not match all of its lookups together; ``None`` sorts first ascending.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

import pytest
from helpers import DbFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from brainless_odm import Database, Document, DocumentConfig, Indexed, Q, QuerySet, Registry, Unique

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Sub(BaseModel):
    x: int | None = None
    y: str = ""


class Row(Base):
    k: Annotated[int, Unique()]
    name: Annotated[str, Indexed()] = ""
    n: Annotated[int, Indexed()] = 0
    m: Annotated[int | None, Indexed()] = None
    s: str | None = None
    tags: list[str] = Field(default_factory=list)
    sub: Sub | None = None


# -- data ------------------------------------------------------------------------------------------
WORDS = ["", "a", "ab", "B", "abc", "Ba", "ca"]
words = st.sampled_from(WORDS)
small_ints = st.integers(-3, 3)
opt_ints = st.none() | small_ints
opt_words = st.none() | words

rows = st.fixed_dictionaries(
    {
        "name": words,
        "n": small_ints,
        "m": opt_ints,
        "s": opt_words,
        "tags": st.lists(words, max_size=3),
        "sub": st.none() | st.fixed_dictionaries({"x": opt_ints, "y": words}),
    }
)

# field path -> kind
FIELDS: dict[str, str] = {
    "k": "key",
    "name": "str",
    "n": "int",
    "m": "optint",
    "s": "optstr",
    "tags": "list",
    "sub__x": "optint",
    "sub__y": "str",
}
OPS: dict[str, list[str]] = {
    "key": ["exact", "lt", "lte", "gt", "gte", "in", "range"],
    "int": ["exact", "ne", "lt", "lte", "gt", "gte", "in", "nin", "range", "isnull"],
    "optint": ["exact", "ne", "lt", "lte", "gt", "gte", "in", "nin", "range", "isnull"],
    "str": ["exact", "ne", "lt", "gte", "in", "nin", "contains", "icontains", "startswith", "endswith"],
    "optstr": ["exact", "ne", "in", "nin", "contains", "icontains", "startswith", "endswith", "isnull"],
    "list": ["contains", "icontains"],
}


keys = st.integers(0, 10)


def scalar(kind: str) -> st.SearchStrategy[Any]:
    if kind == "key":
        return keys
    if kind == "int":
        return small_ints | small_ints.map(str)  # "2" means 2
    if kind == "optint":
        return opt_ints
    if kind == "optstr":
        return opt_words
    return words


@st.composite
def lookup(draw: st.DrawFn) -> tuple[str, Any]:
    # indexed fields twice as likely: they take the index path, which the scan must agree with
    path = draw(st.sampled_from([*sorted(FIELDS), "k", "name", "n", "m"]))
    kind = FIELDS[path]
    op = draw(st.sampled_from(OPS[kind]))
    if op == "isnull":
        value: Any = draw(st.booleans())
    elif op in ("in", "nin"):
        value = draw(st.lists(scalar(kind), max_size=3))
    elif op == "range":
        bound = keys if kind == "key" else small_ints
        value = (draw(bound), draw(bound))
    elif op in ("lt", "lte", "gt", "gte"):
        value = draw({"key": keys, "str": words}.get(kind, small_ints))
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
    st.sampled_from(["name", "n", "m", "s", "sub__x", "sub__y"]).flatmap(
        lambda f: st.sampled_from([f, f"-{f}"])
    ),
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
    if FIELDS[path] in ("int", "key") and isinstance(value, str):
        return int(value)
    return value


def matches(row: dict[str, Any], key: str, value: Any) -> bool:
    parts = key.split("__")
    op = "exact"
    if parts[-1] in {o for ops in OPS.values() for o in ops}:
        op = parts.pop()
    path = "__".join(parts)
    v = get(row, path)
    if op in ("exact", "ne"):
        want = coerce(path, value)
        eq = v is None if want is None else v == want
        return eq if op == "exact" else not eq
    if op in ("in", "nin"):
        vals = [coerce(path, x) for x in value]
        member = any((v is None) if x is None else v == x for x in vals)
        return member if op == "in" else not member
    if op == "isnull":
        return (v is None) is value
    if v is None:
        return False
    if op == "lt":
        return bool(v < value)
    if op == "lte":
        return bool(v <= value)
    if op == "gt":
        return bool(v > value)
    if op == "gte":
        return bool(v >= value)
    if op == "range":
        return bool(value[0] <= v <= value[1])
    if op == "contains":
        return value in v
    if op == "icontains":
        if isinstance(v, list):
            return any(item.casefold() == value.casefold() for item in v)
        return bool(value.casefold() in v.casefold())
    if op == "startswith":
        return bool(v.startswith(value))
    if op == "endswith":
        return bool(v.endswith(value))
    raise AssertionError(op)


def all_match(row: dict[str, Any], lk: dict[str, Any]) -> bool:
    return all(matches(row, k, v) for k, v in lk.items())


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

    def cmp(r1: dict[str, Any], r2: dict[str, Any]) -> int:
        for key in [*order, "k"]:
            desc = key.startswith("-")
            a, b = get(r1, key.lstrip("-")), get(r2, key.lstrip("-"))
            if a == b:
                continue
            if a is None:
                result = -1
            elif b is None:
                result = 1
            else:
                result = -1 if a < b else 1
            return -result if desc else result
        return 0

    out.sort(key=functools.cmp_to_key(cmp))
    ks = [r["k"] for r in out]
    end = None if limit is None else offset + limit
    return ks[offset:end]


def build(qs: QuerySet[Row], plan: list[tuple[str, Any]]) -> QuerySet[Row]:
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
    return await make_db(Row, flush_interval=60)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.lists(rows, min_size=1, max_size=25),
    edits=st.lists(st.tuples(st.integers(0, 24), small_ints, opt_ints), max_size=5),
    plan=steps,
    order=order_keys,
    offset=st.integers(0, 5) | st.just(0),
    limit=st.none() | st.integers(0, 6),
    limit_first=st.booleans(),
)
async def test_queryset_matches_the_reference(
    db: Database,
    data: list[dict[str, Any]],
    edits: list[tuple[int, int, int | None]],
    plan: list[tuple[str, Any]],
    order: list[str],
    offset: int,
    limit: int | None,
    limit_first: bool,
) -> None:
    objects = Row.objects.using(db)
    for doc in list(objects):
        objects.delete(doc)
    data = [{**row, "k": i} for i, row in enumerate(data)]
    docs = [objects.add(row) for row in data]
    for i, n, m in edits:  # assignments after add: the indexes must follow them
        if i < len(docs):
            docs[i].n = n
            docs[i].m = m
            data[i] = {**data[i], "n": n, "m": m}

    qs = build(objects.filter(), plan).order_by(*order, "k")
    if limit_first and limit is not None:
        qs = qs.limit(limit).offset(offset)
    else:
        qs = qs.offset(offset)
        if limit is not None:
            qs = qs.limit(limit)
    expected = reference(data, plan, order, offset, limit)
    assert [d.k for d in await qs] == expected
    assert await qs.count() == len(expected)
    assert await qs.exists() == bool(expected)
    first = await qs.first()
    assert (first.k if first is not None else None) == (expected[0] if expected else None)
    unordered = build(objects.filter(), plan)
    assert sorted(d.k for d in await unordered) == sorted(reference(data, plan, [], 0, None))
    # each lookup on its own too: a lone lookup on an indexed field is answered by the index alone
    for _, arg in plan:
        for lk in arg if isinstance(arg, tuple) else (arg,):
            for key, value in lk.items():
                single = [("filter", {key: value})]
                found = sorted(d.k for d in await objects.filter(**{key: value}))
                assert found == sorted(reference(data, single, [], 0, None)), (key, value)
