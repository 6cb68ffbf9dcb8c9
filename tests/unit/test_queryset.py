"""QuerySet: every lookup, Q, exclude, ordering, slicing, and the terminal operations."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Annotated, Any

import pytest
from helpers import DbFactory
from pydantic import AfterValidator, BaseModel, Field, ValidationError

from brainless_odm import (
    Database,
    Document,
    DocumentConfig,
    Indexed,
    MemoryStore,
    MultipleObjectsReturned,
    Q,
    QueryError,
    QuerySet,
    Registry,
    Unique,
)

REG = Registry()


class Base(Document, abstract=True):
    model_config = DocumentConfig(registry=REG)


class Caller(BaseModel):
    number: str
    city: str | None = None


class Call(Base):
    channel_id: Annotated[str, Unique()]
    queue_id: Annotated[int, Indexed()] = 0
    state: Annotated[str, Indexed()] = "waiting"
    priority: int = 0
    score: float | None = None
    caller: Caller | None = None
    tags: list[str] = Field(default_factory=list)


ROWS: list[dict[str, Any]] = [
    {"channel_id": "c1", "queue_id": 1, "state": "waiting", "priority": 5, "score": 1.5,
     "caller": {"number": "100", "city": "Prague"}, "tags": ["vip", "cz"]},
    {"channel_id": "c2", "queue_id": 1, "state": "talking", "priority": 1, "score": None,
     "caller": {"number": "200", "city": "Brno"}, "tags": ["cz"]},
    {"channel_id": "c3", "queue_id": 2, "state": "waiting", "priority": 9, "score": 0.5,
     "caller": {"number": "300", "city": None}, "tags": []},
    {"channel_id": "C4", "queue_id": 3, "state": "done", "priority": 5, "score": 2.0,
     "caller": None, "tags": ["VIP"]},
    {"channel_id": "c5", "queue_id": 2, "state": "waiting", "priority": 0, "score": None,
     "caller": {"number": "500", "city": "Prague"}, "tags": ["sk"]},
]  # fmt: skip


@pytest.fixture
async def db(make_db: DbFactory) -> Database:
    db = await make_db(Call)
    for row in ROWS:
        Call.objects.using(db).add(row)
    return db


async def ids(qs: QuerySet[Call]) -> list[str]:
    return [d.channel_id for d in await qs]


async def idset(qs: QuerySet[Call]) -> set[str]:
    return {d.channel_id for d in await qs}


@pytest.mark.parametrize(
    ("lookups", "expected"),
    [
        ({"state": "waiting"}, {"c1", "c3", "c5"}),
        ({"state__exact": "done"}, {"C4"}),
        ({"priority": 5}, {"c1", "C4"}),
        ({"state__ne": "waiting"}, {"c2", "C4"}),
        ({"score__ne": 1.5}, {"c2", "c3", "C4", "c5"}),  # None is "not 1.5"
        ({"priority__lt": 5}, {"c2", "c5"}),
        ({"priority__lte": 5}, {"c1", "c2", "C4", "c5"}),
        ({"priority__gt": 5}, {"c3"}),
        ({"priority__gte": 5}, {"c1", "c3", "C4"}),
        ({"score__gt": 1}, {"c1", "C4"}),  # None never compares
        ({"score__lt": 100}, {"c1", "c3", "C4"}),
        ({"priority__in": [1, 9]}, {"c2", "c3"}),
        ({"priority__in": (x for x in [0, 5])}, {"c1", "C4", "c5"}),  # any iterable
        ({"priority__in": []}, set()),
        ({"priority__nin": [1, 9]}, {"c1", "C4", "c5"}),
        ({"priority__nin": []}, {"c1", "c2", "c3", "C4", "c5"}),
        ({"score__nin": [1.5]}, {"c2", "c3", "C4", "c5"}),
        ({"score__nin": [None]}, {"c1", "c3", "C4"}),
        ({"score__in": [None, 0.5]}, {"c2", "c3", "c5"}),
        ({"channel_id__contains": "c"}, {"c1", "c2", "c3", "c5"}),
        ({"tags__contains": "cz"}, {"c1", "c2"}),
        ({"tags__contains": "VIP"}, {"C4"}),
        ({"channel_id__icontains": "C"}, {"c1", "c2", "c3", "C4", "c5"}),
        ({"tags__icontains": "vip"}, {"c1", "C4"}),
        ({"channel_id__startswith": "c"}, {"c1", "c2", "c3", "c5"}),
        ({"channel_id__endswith": "4"}, {"C4"}),
        ({"score__isnull": True}, {"c2", "c5"}),
        ({"score__isnull": False}, {"c1", "c3", "C4"}),
        ({"score": None}, {"c2", "c5"}),
        ({"caller": None}, {"C4"}),
        ({"priority__range": (1, 5)}, {"c1", "c2", "C4"}),
        ({"priority__range": [5, 5]}, {"c1", "C4"}),
        ({"score__range": (0, 1.5)}, {"c1", "c3"}),
        ({"caller__city": "Prague"}, {"c1", "c5"}),
        ({"caller__city__startswith": "Pr"}, {"c1", "c5"}),
        ({"caller__city__icontains": "RN"}, {"c2"}),
        ({"caller__city__isnull": True}, {"c3", "C4"}),  # through a None model too
        ({"caller__city": None}, {"c3", "C4"}),
        ({"caller__city__ne": "Prague"}, {"c2", "c3", "C4"}),
        ({"caller__number__gt": "150"}, {"c2", "c3", "c5"}),
        ({"caller__city__in": ["Brno", "Prague"]}, {"c1", "c2", "c5"}),
        ({"state": "waiting", "priority__gt": 0}, {"c1", "c3"}),
    ],
)
async def test_lookups(db: Database, lookups: dict[str, Any], expected: set[str]) -> None:
    assert await idset(Call.objects.using(db).filter(**lookups)) == expected


async def test_string_values_are_validated_against_the_field_type(db: Database) -> None:
    objects = Call.objects.using(db)
    assert await idset(objects.filter(priority__gt="5")) == {"c3"}
    assert await idset(objects.filter(priority="5")) == {"c1", "C4"}
    assert await idset(objects.filter(priority__in=["1", "9"])) == {"c2", "c3"}
    assert await idset(objects.filter(priority__range=("1", "5"))) == {"c1", "c2", "C4"}


class Bounded(Base):
    level: Annotated[int, Field(ge=0, le=10)] = 0
    email: Annotated[str, AfterValidator(str.lower), Field(max_length=20)] = ""


async def test_lookup_values_are_validated_against_the_type_not_its_constraints(make_db: DbFactory) -> None:
    """A bound outside the field's constraints is a fine bound, an equal value outside them matches
    nothing, and a validator that changes the value is not run: the value is queried as stored."""
    db = await make_db(Bounded)
    objects = Bounded.objects.using(db)
    objects.add(level=0, email="A@Example.COM")
    objects.add(level=10, email="b@example.com")
    assert await objects.filter(level__gt=-1).count() == 2
    assert await objects.filter(level__lt=11).count() == 2
    assert await objects.filter(level=-1).count() == 0
    assert await objects.filter(email="a@example.com").count() == 1
    assert await objects.filter(email="A@Example.COM").count() == 0
    assert await objects.filter(email="x" * 30).count() == 0
    with pytest.raises(QueryError):
        objects.filter(level="high")


@pytest.mark.parametrize(
    "lookups",
    [
        {"nope": 1},
        {"caller__nope": 1},
        {"priority__nope": 1},
        {"priority__in__in": [1]},
        {"caller__city__nope": "x"},
        {"priority__gt": "high"},
        {"priority": "high"},
        {"priority__in": ["1", "high"]},
        {"priority__in": 5},
        {"state__in": "waiting"},
        {"priority__range": (1,)},
        {"priority__range": (1, 2, 3)},
        {"priority__range": 5},
        {"priority__range": (None, 5)},
        {"priority__lt": None},
        {"priority__contains": 1},
        {"priority__startswith": "1"},
        {"tags__startswith": "v"},
        {"priority__icontains": "1"},
        {"score__isnull": "yes"},
        {"tags__contains": 5},
        {"uuid__nope": 1},
    ],
)
def test_bad_queries_raise_when_built(db: Database, lookups: dict[str, Any]) -> None:
    with pytest.raises(QueryError):
        Call.objects.using(db).filter(**lookups)
    with pytest.raises(QueryError):
        Call.objects.using(db).exclude(**lookups)
    q = Q(**lookups)  # a Q is checked where it is used
    with pytest.raises(QueryError):
        Call.objects.using(db).filter(q)


def test_bad_order_limit_offset_raise_when_built(db: Database) -> None:
    objects = Call.objects.using(db)
    for bad in ("nope", "-nope", "caller__nope", "priority__x", "-", ""):
        with pytest.raises(QueryError):
            objects.order_by(bad)
    for n in (-1, "1", 1.5, True):
        with pytest.raises(QueryError):
            objects.limit(n)  # type: ignore[arg-type]
        with pytest.raises(QueryError):
            objects.offset(n)  # type: ignore[arg-type]


class Color(enum.Enum):
    red = "red"
    blue = "blue"


class Size(enum.IntEnum):
    s = 1
    m = 2


class Painted(Base):
    color: Color = Color.red
    size: Size = Size.s
    caller: Caller | None = None
    meta: dict[str, int] = Field(default_factory=dict)
    mapping: Mapping[str, int] = Field(default_factory=dict)  # a dict, as typed by an abc
    bag: AbstractSet[int] = frozenset()  # sets compare as subsets: no order to sort by
    records: Sequence[dict[str, int]] = ()


# mapping, bag and records were accepted: order_by gave an arbitrary order, and mapping__gt={}
# matched nothing, silently
@pytest.mark.parametrize("key", ["caller", "-caller", "meta", "mapping", "bag", "records"])
async def test_order_by_a_field_without_order_is_a_query_error(make_db: DbFactory, key: str) -> None:
    db = await make_db(Painted)
    objects = Painted.objects.using(db)
    objects.add(caller=Caller(number="1"), color="blue")
    objects.add(caller=Caller(number="2"))
    with pytest.raises(QueryError, match="no order"):
        objects.order_by(key)  # when built, not a TypeError when run


@pytest.mark.parametrize(
    "lookups",
    [
        {"meta__gt": {"a": 1}},
        {"caller__lt": {"number": "1"}},
        {"meta__range": ({}, {"a": 1})},
        {"mapping__gt": {}},
        {"bag__lt": {1, 2}},
        {"records__gte": [{"a": 1}]},
    ],
)
async def test_comparing_a_field_without_order_is_a_query_error(
    make_db: DbFactory, lookups: dict[str, Any]
) -> None:
    db = await make_db(Painted)
    with pytest.raises(QueryError, match="no order"):
        Painted.objects.using(db).filter(**lookups)  # not a silently empty result


async def test_ordered_enums_and_nested_fields_can_be_ordered(make_db: DbFactory) -> None:
    db = await make_db(Painted)
    objects = Painted.objects.using(db)
    objects.add(size=2, caller=Caller(number="1"))
    objects.add(size=1, caller=Caller(number="2"))
    assert [p.size for p in await objects.order_by("size")] == [Size.s, Size.m]
    assert [p.size for p in await objects.filter(size__gt=1)] == [Size.m]
    assert [p.size for p in await objects.order_by("-caller__number")] == [Size.s, Size.m]


def test_q_only_combines_q(db: Database) -> None:
    with pytest.raises(QueryError):
        Q("state")  # type: ignore[arg-type]
    with pytest.raises(QueryError):
        Call.objects.using(db).filter("state")  # type: ignore[arg-type]


async def test_none_never_raises_inside_a_query(db: Database) -> None:
    objects = Call.objects.using(db)
    for lookups in (
        {"score__gt": 0},
        {"score__range": (0, 5)},
        {"caller__city__contains": "a"},
        {"caller__city__endswith": "e"},
        {"caller__number__lt": "9"},
    ):
        found = await objects.filter(**lookups)
        assert all(d.score is not None or "score" not in next(iter(lookups)) for d in found)
    assert await objects.order_by("score", "caller__city").count() == 5


async def test_q_or_and_not(db: Database) -> None:
    objects = Call.objects.using(db)
    assert await idset(objects.filter(Q(state="done") | Q(priority__gt=5))) == {"C4", "c3"}
    assert await idset(objects.filter(Q(state="waiting") & Q(priority__gt=0))) == {"c1", "c3"}
    assert await idset(objects.filter(~Q(state="waiting"))) == {"c2", "C4"}
    assert await idset(objects.filter(~Q(state="waiting", priority=1))) == {"c1", "c2", "c3", "C4", "c5"}
    assert await idset(objects.filter(Q(state="waiting") | Q(state="done"), priority=5)) == {"c1", "C4"}
    assert await idset(objects.filter(~(Q(priority=5) | Q(priority=0)))) == {"c2", "c3"}
    assert await idset(objects.filter(Q(caller__city="Prague") | Q(caller=None))) == {"c1", "c5", "C4"}
    # a Q is reusable and not changed by combining
    q = Q(state="waiting")
    _ = q | Q(priority=1)
    assert await idset(objects.filter(q)) == {"c1", "c3", "c5"}


async def test_exclude_is_not_all_of_its_lookups(db: Database) -> None:
    objects = Call.objects.using(db)
    assert await objects.exclude().count() == len(objects)  # excluding nothing keeps everything
    assert await idset(objects.exclude(state="waiting")) == {"c2", "C4"}
    assert await idset(objects.exclude(state="waiting", priority=5)) == {"c2", "c3", "C4", "c5"}
    assert await idset(objects.filter(queue_id__in=[1, 2]).exclude(priority__gt=4)) == {"c2", "c5"}
    assert await idset(objects.exclude(score__gt=1)) == {"c2", "c3", "c5"}
    assert await idset(objects.exclude(Q(state="done") | Q(priority=0))) == {"c1", "c2", "c3"}


async def test_order_by_several_keys_desc_and_none_first(db: Database) -> None:
    objects = Call.objects.using(db)
    assert await ids(objects.order_by("priority", "channel_id")) == ["c5", "c2", "C4", "c1", "c3"]
    assert await ids(objects.order_by("-priority", "channel_id")) == ["c3", "C4", "c1", "c2", "c5"]
    assert await ids(objects.order_by("-priority", "-channel_id")) == ["c3", "c1", "C4", "c2", "c5"]
    assert await ids(objects.order_by("score", "channel_id")) == ["c2", "c5", "c3", "c1", "C4"]
    assert await ids(objects.order_by("-score", "channel_id")) == ["C4", "c1", "c3", "c2", "c5"]
    assert await ids(objects.order_by("caller__city", "channel_id")) == ["C4", "c3", "c2", "c1", "c5"]
    assert await ids(objects.order_by("-caller__city", "-channel_id")) == ["c5", "c1", "c2", "c3", "C4"]
    # the last order_by wins
    assert await ids(objects.order_by("priority").order_by("channel_id")) == ["C4", "c1", "c2", "c3", "c5"]


async def test_limit_and_offset(db: Database) -> None:
    qs = Call.objects.using(db).order_by("channel_id")
    assert await ids(qs.limit(2)) == ["C4", "c1"]
    assert await ids(qs.offset(1).limit(2)) == ["c1", "c2"]
    assert await ids(qs.limit(2).offset(1)) == ["c1", "c2"]  # offset first, whatever the order
    assert await ids(qs.offset(4)) == ["c5"]
    assert await ids(qs.offset(9)) == []
    assert await ids(qs.limit(0)) == []
    assert await ids(qs.limit(2).offset(1).filter(state="waiting")) == ["c3", "c5"]
    assert await qs.limit(2).count() == 2
    assert await qs.offset(3).count() == 2
    assert not await qs.limit(0).exists()
    assert not await qs.offset(5).exists()
    assert (await qs.offset(2).first()).channel_id == "c2"  # type: ignore[union-attr]
    assert await qs.limit(0).first() is None


async def test_queryset_is_immutable(db: Database) -> None:
    base = Call.objects.using(db).filter(state="waiting")
    narrowed = base.filter(priority__gt=4)
    _ = base.order_by("-priority").limit(1).offset(1)
    _ = base.exclude(priority=0)
    assert await base.count() == 3
    assert await narrowed.count() == 2


async def test_count_exists_first(db: Database) -> None:
    objects = Call.objects.using(db)
    assert await objects.filter(state="waiting").count() == 3
    assert await objects.count() == 5
    assert await objects.count(state="done") == 1
    assert await objects.filter(state="waiting").exists()
    assert not await objects.filter(state="gone").exists()
    assert await objects.exists(state="done")
    assert (await objects.order_by("-priority").first()).channel_id == "c3"  # type: ignore[union-attr]
    assert await objects.filter(state="gone").first() is None
    assert (await objects.find(channel_id="c2")).priority == 1  # type: ignore[union-attr]
    assert await objects.find(channel_id="zz") is None


async def test_count_exists_and_first_agree_with_the_listed_matches(db: Database) -> None:
    """count() counts without listing, exists()/first() stop at the first match, and an ``in``
    that another index beats is not joined: each must answer what listing the matches does."""
    objects = Call.objects.using(db)
    querysets = [
        objects.filter(state="waiting"),
        objects.filter(state__in=["waiting", "done"], queue_id=1),
        objects.filter(queue_id__in=[1, 2, 3], state="waiting"),
        objects.filter(priority__gt=0),
        objects.filter(state="nope"),
        objects.filter(),
    ]
    for qs in querysets:
        for shaped in (qs, qs.order_by("-priority"), qs.offset(1), qs.limit(2), qs.offset(1).limit(1)):
            listed = await shaped
            assert await shaped.count() == len(listed), shaped
            assert await shaped.exists() == bool(listed)
            first = await shaped.first()
            assert first is (listed[0] if listed else None)


async def test_get(db: Database) -> None:
    objects = Call.objects.using(db)
    one = await objects.get(channel_id="c3")
    assert one.priority == 9
    assert await objects.get(one.uuid or "") is one
    assert await objects.filter(state="waiting").get(priority=9) is one
    assert await objects.get(Q(priority=9) | Q(priority=99)) is one
    with pytest.raises(Call.DoesNotExist):
        await objects.get(channel_id="nope")
    with pytest.raises(Call.DoesNotExist):
        await objects.get("no-such-uuid")
    with pytest.raises(Call.MultipleObjectsReturned):
        await objects.get(state="waiting")
    with pytest.raises(MultipleObjectsReturned):
        await objects.filter(state="waiting").get()
    with pytest.raises(QueryError):
        await objects.get("uuid", state="waiting")


async def test_update_assigns_and_marks_dirty(db: Database) -> None:
    objects = Call.objects.using(db)
    await db.flush()
    assert await objects.filter(state="waiting").update(state="done", priority="7") == 3
    assert await idset(objects.filter(state="done", priority=7)) == {"c1", "c3", "c5"}
    for doc in await objects.filter(state="done", priority=7):
        assert doc.dirty_fields == {"state", "priority"}
    c2 = await objects.get(channel_id="c2")
    assert not c2.is_dirty
    assert await objects.filter(state="nothing").update(priority=1) == 0
    # equal values are not changes
    await db.flush()
    assert await objects.filter(channel_id="c2").update(priority=1) == 1
    assert not c2.is_dirty


async def test_update_is_validated_before_any_change(db: Database) -> None:
    objects = Call.objects.using(db)
    await db.flush()
    before = {d.channel_id: d.model_dump() for d in await objects.all()}
    with pytest.raises(ValidationError):
        await objects.filter(state="waiting").update(state="ok", priority="high")
    with pytest.raises(QueryError):
        await objects.filter(state="waiting").update(state="ok", nope=1)
    with pytest.raises(QueryError):
        await objects.filter(state="waiting").update(uuid="x")
    after = {d.channel_id: d.model_dump() for d in await objects.all()}
    assert after == before
    assert not any(d.is_dirty for d in await objects.all())


async def test_update_of_nested_model_and_list(db: Database) -> None:
    objects = Call.objects.using(db)
    await db.flush()
    assert await objects.filter(caller__city="Prague").update(caller={"number": "1", "city": "Kolin"}) == 2
    assert await idset(objects.filter(caller__city="Kolin")) == {"c1", "c5"}
    assert await objects.filter(channel_id="c3").update(tags=["new"]) == 1
    c3 = await objects.get(channel_id="c3")
    await db.flush()
    c3.tags.append("more")  # the assigned list is tracked
    assert c3.dirty_fields == {"tags"}


async def test_update_matching_nothing_changes_nothing_and_raises_nothing(db: Database) -> None:
    objects = Call.objects.using(db)
    assert await objects.filter(state="nothing").update(channel_id="c1") == 0
    assert len(await objects.filter(channel_id="c1")) == 1


async def test_update_with_one_nested_model_gives_each_document_its_own(db: Database) -> None:
    objects = Call.objects.using(db)
    await db.flush()
    assert await objects.filter(queue_id=1).update(caller=Caller(number="1")) == 2
    c1, c2 = await objects.filter(queue_id=1).order_by("channel_id")
    await db.flush()
    assert c1.caller is not None
    assert c2.caller is not None
    c1.caller.city = "Kolin"
    assert c1.dirty_fields == {"caller"}
    assert not c2.is_dirty
    assert c2.caller.city is None


async def test_delete(db: Database) -> None:
    objects = Call.objects.using(db)
    assert await objects.filter(state="waiting").delete() == 3
    assert await idset(objects.filter()) == {"c2", "C4"}
    assert await objects.filter(state="waiting").delete() == 0
    assert len(objects) == 2


async def test_async_for(db: Database) -> None:
    seen = [d.channel_id async for d in Call.objects.using(db).filter(queue_id=1).order_by("-channel_id")]
    assert seen == ["c2", "c1"]


def test_a_queryset_is_not_a_sync_iterable(db: Database) -> None:
    with pytest.raises(TypeError, match="async for"):
        list(Call.objects.using(db).filter())


async def test_query_sees_changes_made_after_it_was_built(db: Database) -> None:
    objects = Call.objects.using(db)
    qs = objects.filter(state="waiting")
    objects.add(channel_id="c6")
    (await objects.get(channel_id="c1")).state = "done"
    assert await idset(qs) == {"c3", "c5", "c6"}


class Loose(Base):
    code: int | str = 0


async def test_empty_q_and_its_negation_filter_nothing_out(db: Database) -> None:
    objects = Call.objects.using(db)
    total = len(objects)
    assert await objects.filter(Q()).count() == total
    assert await objects.filter(~Q()).count() == total
    # exclude(Q()) excluded everything: the empty Q became a condition under exclude's negation
    assert await objects.exclude(Q()).count() == total
    assert await objects.exclude(~Q(), Q() | Q()).count() == total
    assert total > 0


async def test_ordering_values_of_several_types_groups_them_by_type(make_db: DbFactory) -> None:
    db = await make_db(Loose)
    objects = Loose.objects.using(db)
    for code in (2, "b", 1, "a"):
        objects.add(code=code)
    assert [d.code for d in await objects.order_by("code")] == [1, 2, "a", "b"]
    assert [d.code for d in await objects.order_by("-code")] == ["b", "a", 2, 1]


class Anything(Base):
    n: int = 0
    data: Any = None


ANYTHING: list[Any] = [[1, 2], "b", 5, {"a": 1}, 2.5, False, None, "a", [0], 1, {"b": 0}]


async def test_values_that_do_not_all_compare_sort_the_same_on_every_node(make_db: DbFactory) -> None:
    """Grouped by kind: numbers together (by value), strs together, lists with lists whether the
    document tracks them yet or not. Tracked containers sorted as "TrackedDict"/"TrackedList"
    (before every lowercase type name) on the node that added them, as "dict"/"list" on a node that
    loaded them; and bool, float and int values were three groups, ordered by value only when no
    other type was in the field."""
    store = MemoryStore()
    a = await make_db(Anything, store=store)
    for n, v in enumerate(ANYTHING):
        Anything.objects.using(a).add(n=n, data=v)
    await a.flush()
    b = await make_db(Anything, store=store, location="b")
    expected = [6, 3, 10, 8, 0, 5, 9, 4, 2, 7, 1]  # None; dicts; lists; numbers; strs
    for db in (a, b):
        objects = Anything.objects.using(db)
        assert [d.n for d in await objects.order_by("data")] == expected
        assert [d.n for d in await objects.order_by("-data")] == [1, 7, 2, 4, 9, 5, 0, 8, 10, 3, 6]
        numbers = await objects.filter(n__in=[2, 4, 5, 9]).order_by("data")
        assert [d.n for d in numbers] == [5, 9, 4, 2]  # as they sort with nothing else about
