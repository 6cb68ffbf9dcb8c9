"""One ``model_fields_set`` shared by every stored model instance that has the same one.

Pydantic gives every model instance its own ``set`` of the field names it was given. For a stored
document and each nested model in it that set is most of what the instance costs beyond its values
(a set of eight names is 728 bytes; the document and its nested model together were a third of a
loaded document's memory), and one more object per instance for the cyclic GC to visit. Every
document loaded from a bucket has the same one — all its stored fields — so documents in a
collection share one ``SharedFieldsSet`` per distinct content instead.

Sharing is safe because the set is never changed in place while shared:

* Pydantic only ever *adds* a name, on assignment (``validate_assignment``; ``extra="allow"``
  models also for a new extra attribute). Every assignment to a document or to a nested model a
  document can hold goes through brainless_odm's ``__setattr__`` first (``Document.__setattr__``
  and the hook ``_tracking.install_hook`` puts on nested model classes), which calls
  :func:`unshare` to give the instance its own copy before Pydantic adds a name it lacks. Adding a
  name the set already has changes nothing.
* Any other change through the set's own methods (user code mutating ``model_fields_set``) raises
  ``TypeError`` instead of silently changing the fields-set of other documents.
* Copies (``copy``, ``deepcopy``, ``model_copy``, pickling) get a plain ``set``.

Only classes whose assignments are guarded that way are shared: ``Document`` subclasses and nested
model classes with the hook.
"""

from __future__ import annotations

from typing import Any, NoReturn

from pydantic import BaseModel

__all__ = ["SharedFieldsSet", "share", "unshare"]

_READ_ONLY = (
    "the model_fields_set of a stored document (and of the models nested in it) is shared with the "
    "documents that have the same one and cannot be changed in place; assign the field instead"
)


class SharedFieldsSet(set[str]):
    """A ``model_fields_set`` shared by many instances: read-only except for no-op changes."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(_READ_ONLY)

    def add(self, name: str, /) -> None:
        if name not in self:
            self._refuse()

    def update(self, *others: Any) -> None:
        for other in others:
            for name in other:
                self.add(name)

    def discard(self, name: object, /) -> None:
        if name in self:
            self._refuse()

    remove = pop = clear = difference_update = intersection_update = symmetric_difference_update = _refuse
    __ior__ = __iand__ = __isub__ = __ixor__ = _refuse

    def __copy__(self) -> set[str]:
        return set(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> set[str]:
        return set(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (set, (list(self),))


class _Plan:
    """How instances of one model class share: the sets handed out, and the fields that can hold
    nested models (whose instances share too)."""

    __slots__ = ("last", "nested", "variants")

    def __init__(self, nested: tuple[str, ...]) -> None:
        self.nested = nested
        self.variants: dict[frozenset[str], SharedFieldsSet] = {}
        self.last: SharedFieldsSet | None = None  # the one handed out last: usually the next one too


#: Distinct fields-sets handed out per class; past this, instances keep their own (no unbounded
#: growth for models whose callers pass ever-different subsets of optional fields).
MAX_VARIANTS = 64

#: model class -> its plan, or None for classes that do not share (unguarded assignment).
_PLANS: dict[type[Any], _Plan | None] = {}
_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_get_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__get__


def _mentions_model(annotation: Any) -> bool:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_mentions_model(a) for a in typing.get_args(annotation))


def _plan_of(cls: type[Any]) -> _Plan | None:
    if cls in _PLANS:
        return _PLANS[cls]
    plan: _Plan | None = None
    # Only where every assignment passes through our __setattr__ first: a Document class that does
    # not override it, or a nested model class with the hook (_tracking.install_hook).
    setattr_ = cls.__setattr__
    if issubclass(cls, BaseModel) and (
        (hasattr(cls, "__odm__") and getattr(setattr_, "_odm_guarded", False))
        or getattr(setattr_, "_odm_hook", False)
    ):
        nested = tuple(name for name, f in cls.model_fields.items() if _mentions_model(f.annotation))
        plan = _Plan(nested)
    _PLANS[cls] = plan
    return plan


def share(model: BaseModel) -> None:
    """Give ``model`` (a stored document or a model nested in one), and every model nested in it,
    the shared fields-set equal to its own."""
    t = type(model)
    plan = _PLANS[t] if t in _PLANS else _plan_of(t)
    if plan is not None:
        _share(model, plan)


def _share(model: Any, plan: _Plan) -> None:
    fs = _get_fields_set(model)
    if type(fs) is set:
        shared = plan.last
        if shared is None or fs != shared:
            key = frozenset(fs)
            shared = plan.variants.get(key)
            if shared is None:
                if len(plan.variants) >= MAX_VARIANTS:
                    shared = None
                else:
                    shared = plan.variants[key] = SharedFieldsSet(key)
            plan.last = shared
        if shared is not None:
            _set_fields_set(model, shared)
    if plan.nested:
        d = model.__dict__
        for name in plan.nested:
            v = d.get(name)  # model_construct may have left it out
            if v is not None:
                _share_value(v)


def _share_value(value: Any) -> None:
    t = type(value)
    plan = _PLANS[t] if t in _PLANS else _plan_of(t)
    if plan is not None:
        _share(value, plan)
    elif t in _SCALARS:
        return
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            _share_value(v)
    elif isinstance(value, dict):
        for v in value.values():
            _share_value(v)


def unshare(model: Any, name: str) -> None:
    """Before Pydantic adds ``name`` to ``model``'s fields-set: give it its own copy if it is shared
    and lacks ``name``."""
    fs = getattr(model, "__pydantic_fields_set__", None)
    if type(fs) is SharedFieldsSet and name not in fs:
        object.__setattr__(model, "__pydantic_fields_set__", set(fs))
