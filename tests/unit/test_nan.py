"""A float NaN in a field: equal to nothing (itself included) and ordered against nothing, whether
the field is indexed or not. In the sorted index it broke the order bisection relies on: range
lookups answered wrong documents, and removed entries stayed (found by a review's fuzzing)."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Annotated, Any

import pytest
from helpers import DbFactory, wait_for
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from brainless_odm import Document, DocumentConfig, FlushError, Indexed, MemoryStore, Registry, Unique

REG = Registry()


class Indexed_(Document):
    model_config = DocumentConfig(registry=REG, collection="indexed")
    x: Annotated[float, Indexed()] = 0.0
    n: int = 0


class Plain(Document):
    model_config = DocumentConfig(registry=REG, collection="plain")
    x: float = 0.0
    n: int = 0


class Once(Document):
    model_config = DocumentConfig(registry=REG, collection="once")
    x: Annotated[float | None, Unique()] = None


XS = [1.0, math.nan, 3.0, 2.0, float("nan"), 5.0, 4.0, 0.5]


@pytest.mark.parametrize("cls", [Indexed_, Plain])
async def test_nan_matches_no_lookup_and_sorts_last(make_db: DbFactory, cls: type[Indexed_ | Plain]) -> None:
    db = await make_db(cls)
    objects = cls.objects.using(db)
    docs = [objects.add(x=x, n=n) for n, x in enumerate(XS)]

    async def ns(**lookups: object) -> list[int]:
        return sorted(d.n for d in await objects.filter(**lookups))

    for _ in range(2):  # before and after every value changed (NaN ones included)
        expected = {k: sorted(d.n for d in docs if pred(d.x)) for k, pred in _PREDICATES.items()}
        assert await ns(x__gt=1.5) == expected["gt"]
        assert await ns(x__lt=3.5) == expected["lt"]
        assert await ns(x__range=(1.0, 4.0)) == expected["range"]
        assert await ns(x=math.nan) == []
        assert await ns(x__in=[math.nan, 2.0]) == expected["eq2"]
        ordered = [d.x for d in await objects.order_by("x")]
        numbers = [x for x in ordered if not math.isnan(x)]
        assert numbers == sorted(numbers)
        assert all(math.isnan(x) for x in ordered[len(numbers) :])
        for d in docs:
            d.x = math.nan if d.n % 3 == 0 else d.x + 10 if not math.isnan(d.x) else 0.0


_PREDICATES = {
    "gt": lambda x: x > 1.5,
    "lt": lambda x: x < 3.5,
    "range": lambda x: 1.0 <= x <= 4.0,
    "eq2": lambda x: x == 2.0,
}


async def test_nan_repeats_in_a_unique_field(make_db: DbFactory) -> None:
    db = await make_db(Once)
    objects = Once.objects.using(db)
    objects.add(x=math.nan)
    objects.add(x=math.nan)  # the same object: NaN still equals nothing
    objects.add(x=float("nan"))
    assert len(objects) == 3


@pytest.mark.parametrize("cls", [Indexed_, Plain])
@pytest.mark.parametrize(
    "lookups",
    [{"x__gt": math.nan}, {"x__gte": math.nan}, {"x__lt": math.nan}, {"x__lte": math.nan},
     {"x__range": (math.nan, 5.0)}, {"x__range": (0.0, math.nan)}],
)  # fmt: skip
async def test_a_nan_bound_matches_nothing(
    make_db: DbFactory, cls: type[Indexed_ | Plain], lookups: dict[str, float]
) -> None:
    """Nothing is above or below NaN. The sorted index placed a NaN bound at its start, so that
    ``x__gte=nan`` and ``x__range=(nan, 5)`` on an indexed field matched every number."""
    db = await make_db(cls)
    objects = cls.objects.using(db)
    for n, x in enumerate(XS):
        objects.add(x=x, n=n)
    assert await objects.filter(**lookups) == []
    assert await objects.filter(**lookups).count() == 0


NaNDecimal = Annotated[Decimal | None, Field(allow_inf_nan=True)]


class Decimals(Document):
    model_config = DocumentConfig(registry=REG, collection="decimals")
    d: NaNDecimal = None
    di: Annotated[NaNDecimal, Indexed()] = None
    du: Annotated[NaNDecimal, Unique()] = None
    a: Any = None
    n: int = 0


async def test_a_decimal_nan_is_a_nan_too(make_db: DbFactory) -> None:
    """``Decimal("NaN") < 1`` raises ``decimal.InvalidOperation``, not ``TypeError``: a range lookup
    or ``order_by`` over a Decimal NaN (a field with ``allow_inf_nan=True``, or an ``Any`` field)
    raised it at query time, and adding one to an indexed field whose sorted index was built
    raised it from ``add()``."""
    db = await make_db(Decimals)
    objects = Decimals.objects.using(db)
    values = ["2", "NaN", "1", None, "NaN", "3"]
    assert await objects.filter(di__gt=0).count() == 0  # builds the sorted index first
    for n, v in enumerate(values):
        x = None if v is None else Decimal(v)
        objects.add(n=n, d=x, di=x, du=x, a=x)  # NaN repeats in a unique field
    for field in ("d", "di", "du", "a"):

        async def ns(**lookups: Any) -> list[int]:
            return sorted(doc.n for doc in await objects.filter(**lookups))

        assert await ns(**{f"{field}__gt": 1}) == [0, 5]
        assert await ns(**{f"{field}__lte": Decimal(2)}) == [0, 2]
        assert await ns(**{f"{field}__range": (1, 3)}) == [0, 2, 5]
        assert await ns(**{f"{field}__in": [Decimal(1), Decimal(3)]}) == [2, 5]
        assert [doc.n for doc in await objects.order_by(field, "n")] == [3, 2, 0, 5, 1, 4]
        assert [doc.n for doc in await objects.order_by(f"-{field}", "n")] == [1, 4, 5, 0, 2, 3]
        assert [doc.n for doc in await objects.order_by(field, "n").limit(1)] == [3]
    assert await objects.filter(a=Decimal("NaN")).count() == 0  # equal to nothing
    assert await objects.filter(a__in=[Decimal("NaN")]).count() == 0
    lone = await make_db(Decimals, namespace="lone")
    added = [
        Decimals.objects.using(lone).add(n=0, d=Decimal("NaN"), a=math.nan),
        Decimals.objects.using(lone).add(n=1, a=Decimal("NaN")),
    ]
    assert len(await Decimals.objects.using(lone).order_by("a", "d")) == 2
    for doc in added:  # a float NaN in an Any field is not stored (it would load back as "NaN")
        Decimals.objects.using(lone).delete(doc)


class Sub(BaseModel):
    f: float
    fs: list[float] = Field(default_factory=list)
    note: str | None = None


class StringsSub(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings")
    f: float


class Holder(Document):
    model_config = DocumentConfig(registry=REG, collection="holder")
    sub: Sub | None = None
    subs: dict[str, Sub] = Field(default_factory=dict)
    ok: StringsSub | None = None
    top: list[float] = Field(default_factory=list)


class NoFloats(Document):
    model_config = DocumentConfig(registry=REG, collection="no_floats")
    sub: StringsSub | None = None
    name: str = ""


def test_only_nested_models_that_write_nan_as_null_and_hold_floats_are_checked() -> None:
    assert Holder.__odm__.nested_nan_as_null
    assert not NoFloats.__odm__.nested_nan_as_null
    assert not Plain.__odm__.nested_nan_as_null


async def _refused(
    make_db: DbFactory, store: MemoryStore, cls: type[Document], values: dict[str, Any]
) -> tuple[Any, Any, BaseException]:
    """Add a ``cls`` with ``values`` and flush: the write fails alone, with a ``ValueError``."""
    db = await make_db(cls, store=store, flush_interval=3600)
    doc = cls.objects.using(db).add(**values)
    with pytest.raises(FlushError) as caught:
        await db.flush()
    [(_, key, exc)] = caught.value.failures
    assert key == doc.uuid
    assert isinstance(exc, ValueError)
    return db, doc, exc


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"sub": Sub(f=math.nan)}, "sub.f"),
        ({"sub": Sub(f=1.0, fs=[2.0, -math.inf])}, "sub.fs.1"),
        ({"subs": {"a": Sub(f=1.0), "b": Sub(f=math.inf)}}, "subs.b.f"),
    ],
)
async def test_a_nan_a_nested_model_would_write_as_null_is_refused_not_stored(
    make_db: DbFactory, values: dict[str, Any], path: str
) -> None:
    """Pydantic writes a nested model's NaN as null by the model's own config (the document's
    "strings" does not reach into it): stored, every node refused the document and moved it to the
    dead letters. The write fails alone with the place named; nothing is stored; a fix is written."""
    store = MemoryStore()
    db, doc, exc = await _refused(make_db, store, Holder, values)
    assert f"{path} is " in str(exc)
    assert "ser_json_inf_nan='strings'" in str(exc)
    other = await make_db(Holder, store=store, location="other")
    assert list(Holder.objects.using(other)) == []
    assert await other.dead_letters() == []
    assert doc.is_dirty
    doc.sub, doc.subs = Sub(f=1.0), {}
    await db.flush()
    await wait_for(lambda: len(Holder.objects.using(other)) == 1)


async def test_nan_stores_where_json_keeps_it(make_db: DbFactory) -> None:
    """The document's own fields and a nested model configured with "strings" keep NaN and
    infinities; a nested float model with None and finite values is written as usual."""
    store = MemoryStore()
    db = await make_db(Holder, store=store, flush_interval=3600)
    Holder.objects.using(db).add(
        sub=Sub(f=1.5, fs=[0.0]), ok=StringsSub(f=math.nan), top=[math.inf, math.nan]
    )
    await db.flush()
    other = await make_db(Holder, store=store, location="other")
    [loaded] = list(Holder.objects.using(other))
    assert loaded.sub == Sub(f=1.5, fs=[0.0])
    assert loaded.sub.note is None
    assert loaded.ok is not None
    assert math.isnan(loaded.ok.f)
    assert loaded.top[0] == math.inf
    assert math.isnan(loaded.top[1])


class Loose(Document):
    model_config = DocumentConfig(registry=REG, collection="loose")
    any_: Any = None
    obj: object = None
    either: float | str = 0.0
    number: int | float = 0
    extra: dict[str, Any] = Field(default_factory=dict)
    items: list[Any] = Field(default_factory=list)
    bag: frozenset[Any] = frozenset()
    x: float = 0.0
    note: str = ""


def test_only_documents_with_any_object_or_unions_are_checked_for_nan_as_text() -> None:
    assert Loose.__odm__.nan_may_load_as_text
    assert not Plain.__odm__.nan_may_load_as_text
    assert not Once.__odm__.nan_may_load_as_text  # float | None is no union of kinds


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"any_": math.nan}, "any_"),
        ({"obj": -math.inf}, "obj"),
        ({"either": math.inf}, "either"),
        ({"extra": {"ok": 1.0, "bad": math.nan}}, "extra.bad"),
        ({"items": [1, [2.0, math.inf]]}, "items.1.1"),
        ({"bag": frozenset({1, math.nan})}, "bag"),
    ],
)
async def test_a_nan_that_would_load_back_as_text_is_refused_not_stored(
    make_db: DbFactory, values: dict[str, Any], path: str
) -> None:
    """An Any/object field or a union takes the stored string "NaN" back as that string: the
    writer held a float, every other node (and the writer after a restart) a str, and a query
    such as ``any___gt=1`` answered differently by node. The write fails alone, naming the place."""
    store = MemoryStore()
    db, doc, exc = await _refused(make_db, store, Loose, values)
    assert str(exc).startswith(f"{path} is ")
    assert "not as a float" in str(exc)
    other = await make_db(Loose, store=store, location="other")
    assert list(Loose.objects.using(other)) == []
    assert doc.is_dirty
    for name in values:
        setattr(doc, name, Loose.model_fields[name].get_default(call_default_factory=True))
    await db.flush()
    await wait_for(lambda: len(Loose.objects.using(other)) == 1)


async def test_nan_in_a_document_with_loose_fields_stores_where_it_loads_back_as_a_float(
    make_db: DbFactory,
) -> None:
    """A float field, a union of numbers, and the text "NaN" in a str or Any field are stored as
    they are (the check loads the value back only when it holds such a string)."""
    store = MemoryStore()
    db = await make_db(Loose, store=store, flush_interval=3600)
    Loose.objects.using(db).add(x=math.nan, number=math.inf, note="NaN", any_="Infinity", items=["NaN"])
    await db.flush()
    other = await make_db(Loose, store=store, location="other")
    [loaded] = list(Loose.objects.using(other))
    assert math.isnan(loaded.x)
    assert loaded.number == math.inf
    assert (loaded.note, loaded.any_, loaded.items) == ("NaN", "Infinity", ["NaN"])


def _no_text(value: float | str) -> float | str:
    if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
        raise ValueError("a number, not its name")
    return value


class Picky(Document):
    model_config = DocumentConfig(registry=REG, collection="picky")
    v: Annotated[float | str, AfterValidator(_no_text)] = 0.0


async def test_a_nan_whose_stored_form_fails_validation_is_refused_naming_why(make_db: DbFactory) -> None:
    """Stored as "NaN", the value would load back as a str this field's validator refuses: every
    node would dead-letter it. The write fails alone with that validation error."""
    store = MemoryStore()
    db, doc, exc = await _refused(make_db, store, Picky, {"v": math.nan})
    assert str(exc).startswith("Picky as stored would not load back")
    assert "a number, not its name" in str(exc)
    assert doc.is_dirty
    doc.v = 1.5
    await db.flush()
