"""``Document``: a Pydantic model that is a stored, tracked, queryable record.

The metaclass does everything that can be decided once per class — the collection name and bucket
options, which fields are indexed or unique, which fields can change in place — and registers the
class. It does no I/O. Each instance carries four slots of bookkeeping; everything else about storage
lives in the engine's ``Collection`` the document is attached to (``_odm_coll``).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
import uuid as _uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from . import exceptions
from ._compat import ModelMetaclass, class_statement_namespace
from ._fieldsets import SharedFieldsSet, unshare
from ._tracking import (
    FieldLink,
    cut_link,
    holds_raw_data,
    install_hook,
    plain_copy,
    same_value,
    validate_assignment,
    wrap,
)
from .config import CollectionOptions, collection_options
from .exceptions import DatabaseError, DefinitionError
from .fields import Indexed, Unique
from .query.manager import ObjectsDescriptor
from .registry import Registry, default_registry
from .store.base import KEY_PATTERN

if TYPE_CHECKING:
    from typing_extensions import Self

    from .engine.collection import Collection

__all__ = ["KEY_PATTERN", "Document", "DocumentInfo", "mark_dirty"]

# Assignments started (see Document.__setattr__: whether one ran inside a validation).
_ASSIGNING = [0]

# What NATS KV accepts as a key (and therefore what a document uuid may be).
RESERVED = frozenset({"uuid", "objects", "dirty_fields", "is_dirty", "delete"})
_SLOTS = ("_odm_coll", "_odm_dirty", "_odm_inflight", "_odm_raw", "_odm_rev")
_IMMUTABLE_SCALARS: frozenset[Any] = frozenset({str, int, float, bool, bytes, type(None), _uuid.UUID})


@dataclass(eq=False)
class DocumentInfo:
    """What the ODM knows about one ``Document`` class (``Call.__odm__``)."""

    cls: type[Document]
    options: CollectionOptions
    registry: Registry
    abstract: bool
    fields: frozenset[str]  # every model field, uuid included
    data_fields: tuple[str, ...]  # every field but uuid: what is stored and tracked
    indexed: tuple[str, ...]  # Indexed or Unique fields
    unique: tuple[str, ...]
    tracked: frozenset[str]  # fields whose values can change in place (containers, models)
    fast_decode: bool  # model_validate_json can read stored values directly
    # Fields whose in-place changes the class's own validators must see (field validators of the
    # field, or every field when there are model validators): checked on the whole document.
    validated: frozenset[str] = frozenset()
    # Model validators that run before field validation: on assignment they may change other
    # fields than the one assigned (after-validators assign, which is tracked by itself).
    derives: bool = False
    # What a stored value leaves out: the uuid (it is the key) and computed fields (derived on
    # every read; stored, they would be unknown members to the reader).
    not_stored: set[str] = field(default_factory=lambda: {"uuid"})
    # A nested model (or dataclass, TypedDict) that can hold a float writes NaN and infinities as
    # null by its own config: encode refuses those values instead of storing what cannot load.
    nested_nan_as_null: bool = False
    # An ``Any``/``object`` field or a union somewhere: a NaN or infinity stored there as the string
    # "NaN"/"Infinity" may load back as that string. encode refuses those values.
    nan_may_load_as_text: bool = False
    _adapters: dict[str, TypeAdapter[Any]] = field(default_factory=dict)

    @property
    def collection(self) -> str:
        return self.options.collection

    def adapter(self, name: str) -> TypeAdapter[Any]:
        """A ``TypeAdapter`` for the declared type of field ``name`` (cached)."""
        ta = self._adapters.get(name)
        if ta is None:
            f = self.cls.model_fields[name]
            ta = TypeAdapter(Annotated_of(f.annotation, f.metadata))
            self._adapters[name] = ta
        return ta

    @cached_property
    def all_dirty(self) -> frozenset[str]:
        return frozenset(self.data_fields)


def _validated_fields(cls: type[BaseModel], data_fields: tuple[str, ...]) -> frozenset[str]:
    """The fields that validators of ``cls`` itself look at (see ``DocumentInfo.validated``)."""
    decorators = cls.__pydantic_decorators__
    if decorators.model_validators or decorators.root_validators:
        return frozenset(data_fields)
    names: set[str] = set()
    for d in decorators.field_validators.values():
        names.update(d.info.fields)
    for v in decorators.validators.values():  # Pydantic v1-style @validator
        names.update(v.info.fields)
    if "*" in names:
        return frozenset(data_fields)
    return frozenset(names) & frozenset(data_fields)


def _nested_nan_as_null(cls: type[BaseModel]) -> bool:
    """Whether the document's schema holds a model, dataclass or TypedDict of its own whose JSON
    config writes NaN and infinities as null (Pydantic's default; a document writes them as strings,
    but its config does not reach into nested models) and that can hold a float there."""
    stack: list[tuple[Any, bool]] = [(cls.__pydantic_core_schema__, False)]
    while stack:
        node, inside = stack.pop()
        if isinstance(node, dict):
            kind = node.get("type")
            if kind in ("model", "dataclass", "typed-dict") and node.get("cls") is not cls:
                inside = (node.get("config") or {}).get("ser_json_inf_nan") != "strings"
            if inside and kind in ("float", "any", "definition-ref"):
                return True  # a float there, or what may hold one
            stack.extend((v, inside) for k, v in node.items() if k not in ("cls", "metadata"))
        elif isinstance(node, list | tuple):
            stack.extend((v, inside) for v in node)
    return False


def _loose_schema(cls: type[BaseModel]) -> bool:
    """Whether the document's schema has a place that takes a JSON string as something other
    than a float (``Any``, ``object``, a union) where a float may be: a NaN or infinity the
    document writes there as ``"NaN"``/``"Infinity"`` may then load back as that string."""
    stack: list[Any] = [cls.__pydantic_core_schema__]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") in ("any", "union", "tagged-union"):
                return True
            stack.extend(v for k, v in node.items() if k not in ("cls", "metadata"))
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return False


def _derives(cls: type[BaseModel]) -> bool:
    decorators = cls.__pydantic_decorators__
    return bool(decorators.root_validators) or any(
        d.info.mode in ("before", "wrap") for d in decorators.model_validators.values()
    )


def Annotated_of(annotation: Any, metadata: list[Any]) -> Any:
    meta = [m for m in metadata if not isinstance(m, Indexed)]
    return typing.Annotated.__class_getitem__((annotation, *meta)) if meta else annotation  # type: ignore[attr-defined]


def _walk_types(tp: Any, seen: set[int]) -> Iterator[Any]:
    """Every type mentioned in ``tp`` (through unions, generics and nested model fields)."""
    if id(tp) in seen:
        return
    seen.add(id(tp))
    yield tp
    for arg in typing.get_args(tp):
        yield from _walk_types(arg, seen)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for f in tp.model_fields.values():
            yield from _walk_types(f.annotation, seen)


def _is_mutable(tp: Any) -> bool:
    """Can a value of type ``tp`` change without an assignment to the field holding it?"""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _is_mutable(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType, typing.Literal):
        return origin is not typing.Literal and any(_is_mutable(a) for a in typing.get_args(tp))
    if origin in (tuple, frozenset):
        return any(_is_mutable(a) for a in typing.get_args(tp) if a is not Ellipsis)
    if origin is not None:
        return True  # list[...], dict[...], set[...] and other generic containers
    if tp in _IMMUTABLE_SCALARS:
        return False
    if isinstance(tp, type):
        if issubclass(tp, (list, dict, set, BaseModel)):
            return True
        if issubclass(tp, (str, int, float, bytes, tuple, frozenset)):
            return False
        import datetime
        import decimal
        import enum
        import pathlib

        return not issubclass(
            tp,
            (enum.Enum, datetime.date, datetime.time, datetime.timedelta, decimal.Decimal, pathlib.PurePath),
        )
    return True  # Any, TypeVars, forward references: assume the worst


class _TrackedField:
    """The attribute of a tracked field (a container or a nested model) on a document class.

    Reads the field from the instance ``__dict__`` as Pydantic would, except that a document the
    engine decoded from the store (load, another node's create), or one added from data nothing
    else holds (``_tracking.exclusive``), holds its containers plain until one of them is first
    read: wrapping them for change tracking is then done once, for every tracked field of that
    document. Nobody outside the document can hold those containers before that read, so no
    in-place change can escape tracking; most documents are only queried (by ``__dict__``) and
    written, and never pay for it. Assignment goes through ``Document.__setattr__``.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Document | None, objtype: type | None = None) -> Any:
        if obj is None:
            raise AttributeError(self.name)  # as Pydantic: fields are not class attributes
        try:
            raw = obj._odm_raw
        except AttributeError:  # an instance made without __init__ (unpickled, model_construct)
            raw = False
        if raw:
            obj._odm_materialize()
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute {self.name!r}") from None

    def __set__(self, obj: Document, value: Any) -> None:
        # Only object.__setattr__ gets here (Document.__setattr__ writes __dict__ itself).
        obj.__dict__[self.name] = value


class DocumentMeta(ModelMetaclass):
    """Validates the ODM parts of a ``Document`` class and registers it. No I/O."""

    def __new__(
        mcs,
        cls_name: str,
        bases: tuple[type[Any], ...],
        namespace: dict[str, Any],
        *,
        abstract: bool = False,
        **kwargs: Any,
    ) -> type:
        is_root = namespace.get("__module__") == __name__ and cls_name == "Document"
        if not is_root:
            own = set(namespace.get("__annotations__", {}))
            # Fields a plain Pydantic mixin brings count as declared here.
            for base in bases:
                if isinstance(base, type) and issubclass(base, BaseModel) and not issubclass(base, Document):
                    own |= set(base.model_fields)
            bad = sorted(own & RESERVED) + sorted({"objects"} & set(namespace))
            if bad:
                raise DefinitionError(
                    f"{cls_name}: {', '.join(map(repr, sorted(set(bad))))} is reserved by brainless_odm "
                    f"(reserved names: {', '.join(sorted(RESERVED))}); rename the field"
                )
            if "__slots__" not in namespace:
                namespace["__slots__"] = ()  # keep instances as lean as the root's
        own_config = dict(namespace.get("model_config", {}) or {})
        own_config.update({k: v for k, v in kwargs.items()})
        if not is_root and "__pydantic_reset_parent_namespace__" not in kwargs:
            namespace["__pydantic_parent_namespace__"] = class_statement_namespace()
            kwargs["__pydantic_reset_parent_namespace__"] = False
        cls = super().__new__(mcs, cls_name, bases, namespace, **kwargs)
        if is_root:
            return cls
        doc_cls = typing.cast("type[Document]", cls)
        config = dict(doc_cls.model_config)
        if config.get("validate_assignment") is False:
            raise DefinitionError(f"{cls_name}: documents always validate on assignment")
        if config.get("extra") == "allow":
            raise DefinitionError(
                f"{cls_name}: extra='allow' is not supported: attributes outside the declared fields "
                "would be neither tracked, merged between nodes nor indexed; declare them as fields "
                "(a dict[str, Any] field holds free-form data)"
            )
        registry = config.get("registry", default_registry)
        if not isinstance(registry, Registry):
            raise DefinitionError(
                f"{cls_name}: model_config['registry'] must be a Registry, got {registry!r}"
            )
        options = collection_options(cls_name, config, own_config)
        indexed: list[str] = []
        unique: list[str] = []
        tracked: set[str] = set()
        for name, finfo in doc_cls.model_fields.items():
            if name == "uuid":
                continue
            markers = [m for m in finfo.metadata if isinstance(m, Indexed)]
            if markers:
                if _is_mutable(finfo.annotation):
                    raise DefinitionError(
                        f"{cls_name}.{name}: Indexed/Unique need a hashable scalar type, "
                        f"not {finfo.annotation!r}"
                    )
                indexed.append(name)
                if any(isinstance(m, Unique) for m in markers):
                    unique.append(name)
            if _is_mutable(finfo.annotation):
                tracked.add(name)
                for tp in _walk_types(finfo.annotation, set()):
                    if not isinstance(tp, type):
                        continue
                    if issubclass(tp, BaseModel) and not issubclass(tp, Document):
                        # (A Document's markers index its own collection, wherever it is held.)
                        for sub, sinfo in tp.model_fields.items():
                            if any(isinstance(m, Indexed) for m in sinfo.metadata):
                                raise DefinitionError(
                                    f"{cls_name}.{name}: Indexed/Unique on {tp.__name__}.{sub} does "
                                    "nothing: only a document's own fields are indexed (query the "
                                    f"nested field with {name}__{sub}=...)"
                                )
                    if (issubclass(tp, BaseModel) and not issubclass(tp, Document)) or (
                        dataclasses.is_dataclass(tp) and not tp.__dataclass_params__.frozen  # type: ignore[attr-defined]
                    ):
                        install_hook(tp)
        data_fields = tuple(n for n in doc_cls.model_fields if n != "uuid")
        info = DocumentInfo(
            cls=doc_cls,
            options=options,
            registry=registry,
            abstract=abstract,
            fields=frozenset(doc_cls.model_fields),
            data_fields=data_fields,
            indexed=tuple(indexed),
            unique=tuple(unique),
            tracked=frozenset(tracked),
            fast_decode=config.get("extra") in (None, "ignore"),
            validated=_validated_fields(doc_cls, data_fields),
            derives=_derives(doc_cls),
            not_stored={"uuid", *doc_cls.__pydantic_computed_fields__},
            nested_nan_as_null=_nested_nan_as_null(doc_cls),
            nan_may_load_as_text=_loose_schema(doc_cls),
        )
        doc_cls.__odm__ = info
        for name in tracked:
            type.__setattr__(doc_cls, name, _TrackedField(name))
        # Each class its own DoesNotExist / MultipleObjectsReturned, so `except Call.DoesNotExist`
        # does not swallow a Queue lookup failing in the same block.
        doc_cls.DoesNotExist = type(
            "DoesNotExist",
            (exceptions.DoesNotExist,),
            {"__module__": doc_cls.__module__, "__qualname__": f"{cls_name}.DoesNotExist"},
        )
        doc_cls.MultipleObjectsReturned = type(
            "MultipleObjectsReturned",
            (exceptions.MultipleObjectsReturned,),
            {"__module__": doc_cls.__module__, "__qualname__": f"{cls_name}.MultipleObjectsReturned"},
        )
        if not abstract:
            registry.register(doc_cls, options.collection)
        return cls


class Document(BaseModel, metaclass=DocumentMeta):
    """Base class of stored documents.

    Subclass it with Pydantic fields; mark fields ``Annotated[T, Indexed()]`` or
    ``Annotated[T, Unique()]`` to index them. ``Call.objects`` is the typed manager.
    Construction and assignment validate; assignments and in-place changes are tracked per field
    and written to storage by the next flush.
    """

    # What is stored must load back: NaN and infinities are stored as the strings "NaN",
    # "Infinity" and "-Infinity" (not as null, which a float field refuses); bytes as base64 (as
    # UTF-8 text, bytes that are not text could not be written at all); and fields are stored by
    # name, so a field with an alias must also validate by its name.
    model_config = ConfigDict(
        validate_assignment=True,
        ser_json_inf_nan="strings",
        ser_json_bytes="base64",
        val_json_bytes="base64",
        validate_by_name=True,
    )
    __slots__ = (*_SLOTS, "__weakref__")  # weak references work, as on a plain Pydantic model
    __odm__: ClassVar[DocumentInfo]
    DoesNotExist: ClassVar[type[exceptions.DoesNotExist]] = exceptions.DoesNotExist
    MultipleObjectsReturned: ClassVar[type[exceptions.MultipleObjectsReturned]] = (
        exceptions.MultipleObjectsReturned
    )

    uuid: str | None = Field(default=None, pattern=KEY_PATTERN, max_length=256)
    """The key: a UUID1 assigned on ``add()`` (unless given). ``None`` before."""

    objects: ClassVar[ObjectsDescriptor] = ObjectsDescriptor()
    """The typed manager: ``Call.objects`` is a ``Manager[Call]``."""

    if TYPE_CHECKING:
        _odm_coll: Collection[Any] | None
        _odm_dirty: set[str] | frozenset[str]
        _odm_inflight: frozenset[str]
        _odm_rev: int
        _odm_raw: bool

    def model_post_init(self, context: Any, /) -> None:
        _init_state(self)

    def __copy__(self) -> Self:
        if self._odm_raw:  # the copy shares the containers: they must be tracked ones
            self._odm_materialize()
        new = super().__copy__()
        _init_state(new)
        return new

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        new = super().__deepcopy__(memo)
        _init_state(new)
        return new

    def __setstate__(self, state: dict[Any, Any]) -> None:
        # Unpickled: a detached copy, as deepcopy makes (the ODM's slots are not pickled).
        super().__setstate__(state)
        _init_state(self)

    # -- tracking ----------------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        info = type(self).__odm__
        if name not in info.fields:
            if name in _SLOTS:
                object.__setattr__(self, name, value)
            else:
                unshare(self, name)  # an extra="allow" attribute joins the fields-set
                super().__setattr__(name, value)
            return
        d = self.__dict__
        coll = self._odm_coll
        if name == "uuid":
            if coll is not None and value != d.get("uuid"):
                raise DatabaseError(
                    f"{type(self).__name__}.uuid is the document's key and cannot change once it is "
                    "stored; add a copy instead"
                )
            validate_assignment(self, name, value)
            return
        old = d[name]
        before = coll.snapshot_for_events(self) if coll is not None else None
        mine = 0
        if info.derives:
            _ASSIGNING[0] += 1
            mine = _ASSIGNING[0]
        validate_assignment(self, name, value)  # raises: nothing changed
        new_d = self.__dict__  # validate_assignment installs a new __dict__
        new = new_d[name]
        if info.derives and _ASSIGNING[0] == mine:  # (no assignment ran inside the validation)
            derived = {n: new_d[n] for n in info.data_fields if n != name and new_d[n] is not d[n]}
            if derived:
                # A before-validator changed other fields too: all are tracked together (and
                # checked for uniqueness before any is), from the old state.
                object.__setattr__(self, "__dict__", d)
                self._odm_set_many({name: new, **derived}, before)
                return
        if same_value(old, new):
            new_d[name] = old  # keep the tracked original; an equal value is no change
            return
        self._odm_assigned(coll, name, old, new, before)

    __setattr__._odm_guarded = True  # type: ignore[attr-defined]  # see _fieldsets

    def _odm_set_many(self, values: dict[str, Any], before: Any = None, *, snapshot: bool = False) -> None:
        """Set values already validated with the whole document, together: ``QuerySet.update()``
        (so no half-updated state meets a model validator) and what a model validator derived on
        assignment. Unique fields are checked before anything changes (raises).
        ``snapshot``: take ``before`` (for local ``on_change``) here."""
        d = self.__dict__
        changes = {n: v for n, v in values.items() if not same_value(d[n], v)}
        if not changes:
            return
        coll = self._odm_coll
        if coll is not None:
            coll.check_unique(self, changes)
            if snapshot:
                before = coll.snapshot_for_events(self)
        for name in changes:
            unshare(self, name)
            self.__pydantic_fields_set__.add(name)
        object.__setattr__(self, "__dict__", {**d, **changes})  # a new one, as Pydantic's assignment
        last = len(changes) - 1
        for i, (name, new) in enumerate(changes.items()):
            # One change event, after the last field: the document is whole by then.
            self._odm_assigned(coll, name, d[name], new, before if i == last else None)

    def _odm_assigned(self, coll: Collection[Any] | None, name: str, old: Any, new: Any, before: Any) -> None:
        """Field ``name`` now holds ``new`` (validated) instead of ``old``: track the change."""
        if coll is None:
            mark_dirty(self, (name,))
            return
        try:
            coll.assigned(self, name, old, new, before)
        except BaseException:
            # Refused before anything was tracked or indexed (a unique violation): the old value,
            # still linked, goes back; whatever the new one was linked to is cut.
            cut_link(self.__dict__[name])
            self.__dict__[name] = old
            raise

    def _odm_track(self, name: str, replaced: Any = None) -> None:
        """Link the containers of field ``name`` to this document; cut the link of the value it
        ``replaced`` (the link lives in the containers themselves: no per-document table)."""
        if self._odm_raw:
            self._odm_materialize(skip=name)
        if replaced is not None:
            cut_link(replaced)
        d = self.__dict__
        d[name] = wrap(d[name], FieldLink(self, name))

    def _odm_materialize(self, skip: str | None = None) -> None:
        """Wrap the plain containers of a document decoded from the store (see _TrackedField)."""
        _set_raw(self, False)
        d = self.__dict__
        for name in type(self).__odm__.tracked:
            if name != skip:
                d[name] = wrap(d[name], FieldLink(self, name))

    def __iter__(self) -> Any:
        # Pydantic yields the __dict__ values: containers handed out must be tracked ones.
        if self._odm_raw:
            self._odm_materialize()
        return super().__iter__()

    def _odm_snapshot(self, values: dict[str, Any] | None = None) -> Self:
        """A detached copy of this document as it is now, for event callbacks' ``old``.

        Only the fields that can change in place are deep-copied (as plain lists/dicts/models);
        scalars are immutable and shared. ``model_copy(deep=True)`` deep-copies everything and
        was most of the cost of applying a change when an ``on_change`` callback was registered.
        ``values``: the copy's field values, already detached (taken as they are)."""
        cls = type(self)
        new = cls.__new__(cls)
        if values is None:
            d = dict(self.__dict__)
            for name in cls.__odm__.tracked:
                v = d[name]
                if v is not None:
                    d[name] = plain_copy(v)
        else:
            d = values
        object.__setattr__(new, "__dict__", d)
        fields_set = self.__pydantic_fields_set__
        if type(fields_set) is not SharedFieldsSet:
            fields_set = set(fields_set)
        object.__setattr__(new, "__pydantic_fields_set__", fields_set)
        object.__setattr__(new, "__pydantic_extra__", copy.copy(self.__pydantic_extra__))
        object.__setattr__(new, "__pydantic_private__", copy.copy(self.__pydantic_private__))
        _init_state(new)
        return new

    def _odm_untrack(self) -> None:
        if self._odm_raw:
            _set_raw(self, False)  # nothing was linked; the plain containers stay as they are
            return
        d = self.__dict__
        for name in type(self).__odm__.tracked:
            cut_link(d[name])

    def _odm_inplace_change(self, name: str, revert: Callable[[], None] | None, before: Any = None) -> None:
        if revert is not None:
            try:
                self._odm_check_field(name)
                self._odm_check_validators(name)
            except Exception:
                revert()
                raise
        coll = self._odm_coll
        if coll is None:
            mark_dirty(self, (name,))
        else:
            coll.touched(self, name, before)

    def _odm_check_field(self, name: str) -> None:
        """Validate the value field ``name`` holds now against its type, strictly: a value that
        validation would convert (``"5"`` in a ``list[int]``, a dict where a model belongs) is
        refused, as the container would keep the unconverted one. Raises ``ValidationError``."""
        ta = type(self).__odm__.adapter(name)
        value = self.__dict__[name]
        try:
            validated = ta.validate_python(ta.dump_python(value, warnings=False), strict=True)
        except ValidationError as e:
            # Strict validation takes dataclasses only as instances, not as their dumped dicts:
            # when that is all it refused, the objects themselves decide.
            if any(err["type"] != "dataclass_exact_type" for err in e.errors()):
                raise
            validated = ta.validate_python(value, strict=True)
        raw = holds_raw_data(value, validated)
        if raw is not None:
            # Validation would convert it, but the container would keep the dict: refuse it,
            # as assigning a dict to a model attribute of a container is refused.
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [{"type": "model_type", "loc": (name,), "input": raw[0], "ctx": {"class_name": raw[1]}}],
            )

    def _odm_check_validators(self, name: str) -> None:
        """Run the class's field and model validators over the document as it is now, if any of
        them looks at field ``name``: an in-place change (``call.tags.append(x)``,
        ``call.caller.city = x``) must pass what assigning the whole field would. Raises
        ``ValidationError``; changes nothing (what a validator would convert is not applied)."""
        if name in type(self).__odm__.validated:
            type(self).__pydantic_validator__.validate_python(dict(self.__dict__))

    def _odm_revalidate(self) -> None:
        """Validate a document about to be added as it is now: its lists, dicts and nested models
        may have changed in place since it was built, untracked (a document is tracked once held)."""
        info = type(self).__odm__
        for name in info.tracked:
            self._odm_check_field(name)
        # Every field, and the model validators: a document built with ``model_construct`` holds
        # whatever it was given (a str in an int field, a required field missing). A scalar that
        # validation converts ("5" for an int) is stored converted, as construction would have.
        validated = type(self).__pydantic_validator__.validate_python(dict(self.__dict__)).__dict__
        d = self.__dict__
        for name in info.data_fields:
            if name not in info.tracked and validated[name] is not d[name]:
                d[name] = validated[name]

    # -- public state ------------------------------------------------------------------------------
    @property
    def dirty_fields(self) -> frozenset[str]:
        """Fields changed since the last flush (all of them until the document is first stored)."""
        if self._odm_rev == 0:
            return type(self).__odm__.all_dirty
        if not self._odm_inflight:
            return frozenset(self._odm_dirty)
        return self._odm_inflight | self._odm_dirty

    @property
    def is_dirty(self) -> bool:
        """Whether the document has changes not yet acknowledged by storage."""
        return self._odm_rev == 0 or bool(self._odm_dirty) or bool(self._odm_inflight)

    async def delete(self) -> bool:
        """Delete this document from its database (same as ``Call.objects.delete(doc)``)."""
        coll = self._odm_coll
        if coll is None:
            return False
        return coll.delete(self)


_CLEAN: frozenset[str] = frozenset()
_set_dirty = object.__setattr__


def _set_raw(doc: Document, raw: bool) -> None:
    object.__setattr__(doc, "_odm_raw", raw)


def mark_dirty(doc: Document, names: Iterable[str]) -> None:
    """Add ``names`` to the document's dirty fields. Clean documents share one empty frozenset
    (most documents are clean most of the time: a set each would cost memory and GC time)."""
    dirty = doc._odm_dirty
    if type(dirty) is set:
        dirty.update(names)
    else:
        _set_dirty(doc, "_odm_dirty", set(names))


def _init_state(doc: Document) -> None:
    object.__setattr__(doc, "_odm_raw", False)
    object.__setattr__(doc, "_odm_coll", None)
    object.__setattr__(doc, "_odm_dirty", _CLEAN)
    object.__setattr__(doc, "_odm_inflight", _CLEAN)  # shared: frozenset() is a new object each time
    object.__setattr__(doc, "_odm_rev", 0)
