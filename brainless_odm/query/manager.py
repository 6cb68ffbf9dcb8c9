"""``Manager[D]`` (``Call.objects``) and the descriptor that types it per class."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from ..exceptions import QueryError
from .lookups import Q
from .queryset import QuerySet

if TYPE_CHECKING:
    from ..database import Database
    from ..document import Document
    from ..engine.collection import Collection

__all__ = ["Manager", "ObjectsDescriptor"]

D = TypeVar("D", bound="Document")


class Manager(Generic[D]):
    """The entry point to one document class's collection: ``Call.objects``.

    Without ``using(db)`` it works against the class's default database: the first started one
    holding the class (``NotBoundError`` if there is none).
    """

    __slots__ = ("_db", "model")

    def __init__(self, model: type[D], db: Database | None = None) -> None:
        self.model = model
        self._db = db

    def __repr__(self) -> str:
        where = f" using {self._db!r}" if self._db is not None else ""
        return f"<Manager {self.model.__name__}{where}>"

    @property
    def database(self) -> Database:
        """The database this manager works against right now."""
        if self._db is not None:
            return self._db
        from ..database import bound_database

        return bound_database(self.model)

    def collection(self) -> Collection[D]:
        return self.database.collection(self.model)

    def using(self, db: Database) -> Manager[D]:
        """This manager, bound to ``db``."""
        return Manager(self.model, db)

    # -- writes ------------------------------------------------------------------------------------
    def add(self, doc: D | Mapping[str, Any] | None = None, /, **fields: Any) -> D:
        """Validate and store a document (a ``D``, a dict, or keyword fields); return the stored one.

        Raises ``ValidationError`` for invalid values, ``UniqueViolation`` for a taken unique value.
        The document is written by the next flush.
        """
        model = self.model
        if doc is None:
            new = model(**fields)
        elif type(doc) is dict and not fields:
            # model_validate(doc), without its Python wrapper (a tenth of an add)
            new = model.__pydantic_validator__.validate_python(doc)
        elif type(doc) is model or isinstance(doc, model):
            if type(doc) is not model and not type(doc).__odm__.abstract:
                raise TypeError(
                    f"{type(doc).__name__} is a collection of its own "
                    f"({type(doc).__odm__.collection!r}): add it with "
                    f"{type(doc).__name__}.objects.add(), not {model.__name__}.objects.add()"
                )
            if fields:
                # A document plus overrides is a template for a new one. A stored one's uuid stays
                # behind (it is taken); one given explicitly to a document not yet stored is kept.
                if getattr(doc, "_odm_raw", False):
                    # Its models must be registered to it, so the new one gets copies of them.
                    doc._odm_materialize()
                uuid = doc.uuid if doc._odm_coll is None else None
                new = model(**{**doc.__dict__, "uuid": uuid, **fields})
            else:
                if doc._odm_coll is None:
                    doc._odm_revalidate()  # what changed in place since it was built is unchecked
                new = doc
        elif isinstance(doc, Mapping):
            new = model.model_validate(doc if not fields and type(doc) is dict else {**doc, **fields})
        else:
            raise TypeError(
                f"{model.__name__}.objects.add() takes a {model.__name__}, a dict or fields, got {doc!r}"
            )
        return self.collection().add(new)

    def delete(self, doc_or_uuid: D | str) -> bool:
        """Delete a document (or the one with that uuid); ``False`` if it did not exist."""
        return self.collection().delete(doc_or_uuid)

    # -- reads -------------------------------------------------------------------------------------
    def _qs(self) -> QuerySet[D]:
        return QuerySet(self)

    def filter(self, *qs: Q, **lookups: Any) -> QuerySet[D]:
        """A ``QuerySet`` of the documents matching every lookup."""
        return self._qs().filter(*qs, **lookups)

    def exclude(self, *qs: Q, **lookups: Any) -> QuerySet[D]:
        """A ``QuerySet`` of the documents not matching the lookups."""
        return self._qs().exclude(*qs, **lookups)

    def order_by(self, *keys: str) -> QuerySet[D]:
        """A ``QuerySet`` of every document, sorted."""
        return self._qs().order_by(*keys)

    def limit(self, n: int) -> QuerySet[D]:
        """A ``QuerySet`` of at most ``n`` documents (``Call.objects.filter().limit(n)``)."""
        return self._qs().limit(n)

    def offset(self, n: int) -> QuerySet[D]:
        """A ``QuerySet`` that skips the first ``n`` documents (``Call.objects.filter().offset(n)``)."""
        return self._qs().offset(n)

    async def all(self) -> list[D]:
        """Every document."""
        return list(self.collection().docs.values())

    @overload
    async def get(self, uuid: str, /) -> D: ...
    @overload
    async def get(self, *qs: Q, **lookups: Any) -> D: ...
    async def get(self, *args: str | Q, **lookups: Any) -> D:
        """The one document with that uuid (``get(uuid)``) or matching the lookups.

        Raises ``D.DoesNotExist`` if none matches, ``MultipleObjectsReturned`` if several do.
        """
        if args and isinstance(args[0], str):
            uuid = args[0]
            if len(args) > 1 or lookups:
                raise QueryError("get() takes a uuid or lookups, not both")
            doc = self.collection().docs.get(uuid)
            if doc is None:
                raise self.model.DoesNotExist(f"no {self.model.__name__} with uuid {uuid!r}")
            return doc
        qs: list[Q] = []
        for a in args:
            if not isinstance(a, Q):
                raise QueryError(f"get() takes one uuid, or Q objects and lookups; got {a!r}")
            qs.append(a)
        return await self._qs().get(*qs, **lookups)

    async def find(self, *qs: Q, **lookups: Any) -> D | None:
        """The first document matching the lookups, or ``None``."""
        return await self._qs().filter(*qs, **lookups).first()

    async def count(self, *qs: Q, **lookups: Any) -> int:
        """How many documents match (all of them without lookups)."""
        if not qs and not lookups:
            return len(self.collection().docs)
        return await self._qs().filter(*qs, **lookups).count()

    async def exists(self, *qs: Q, **lookups: Any) -> bool:
        return await self._qs().filter(*qs, **lookups).exists()

    # -- dict-style --------------------------------------------------------------------------------
    def __getitem__(self, uuid: str) -> D:
        return self.collection().docs[uuid]

    def __contains__(self, item: object) -> bool:
        key = item if isinstance(item, str) else getattr(item, "uuid", None)
        if key is None:
            return False
        doc = self.collection().docs.get(key)
        return doc is not None and (isinstance(item, str) or doc is item)

    def __delitem__(self, doc_or_uuid: D | str) -> None:
        if not self.collection().delete(doc_or_uuid):
            raise KeyError(doc_or_uuid if isinstance(doc_or_uuid, str) else doc_or_uuid.uuid)

    def __len__(self) -> int:
        return len(self.collection().docs)

    def __iter__(self) -> Iterator[D]:
        return iter(list(self.collection().docs.values()))

    # -- events ------------------------------------------------------------------------------------
    def _listeners(self) -> Any:
        if self._db is None:
            from ..database import class_listeners

            return class_listeners(self.model)
        return self._db.collection(self.model).listeners

    def on_change(self, callback: Callable[[D | None, D], Any], *, local: bool = False) -> None:
        """Call ``callback(old, new)`` when a document is added or changed (``old`` is ``None`` on
        add). Changes from other databases only, unless ``local=True``."""
        self._listeners().on_change(callback, local)

    def on_delete(self, callback: Callable[[D], Any], *, local: bool = False) -> None:
        """Call ``callback(doc)`` when a document is deleted."""
        self._listeners().on_delete(callback, local)

    def on_field_change(
        self, field: str, callback: Callable[[D, str, Any, Any], Any], *, local: bool = False
    ) -> None:
        """Call ``callback(doc, field, old_value, new_value)`` when ``field`` changes."""
        if field not in self.model.__odm__.data_fields:
            raise QueryError(f"{self.model.__name__} has no field {field!r}")
        self._listeners().on_field_change(field, callback, local)

    def off(self, callback: Callable[..., Any]) -> bool:
        """Unregister ``callback`` from every event of this manager; whether it was registered."""
        return bool(self._listeners().remove(callback))


class ObjectsDescriptor:
    """``Call.objects`` → ``Manager[Call]``, typed per class without a mypy plugin."""

    def __init__(self) -> None:
        self._managers: dict[type[Any], Manager[Any]] = {}

    # Typed for the class only: `Call().objects` is a type error, as it is one at run time.
    def __get__(self, instance: None, owner: type[D]) -> Manager[D]:
        if instance is not None:
            raise AttributeError(f"objects is reached through the class: {owner.__name__}.objects")
        manager = self._managers.get(owner)
        if manager is None:
            manager = self._managers[owner] = Manager(owner)
        return manager
