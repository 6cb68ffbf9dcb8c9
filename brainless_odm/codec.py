"""Document ⇄ stored bytes.

The stored value is the document's fields as a JSON object, serialised by Pydantic (Rust side), plus
one ``"_odm"`` key of bookkeeping that no field can collide with (Pydantic fields cannot start with
``_``)::

    {"channel_id": "c-1", "queue_id": 3, ..., "_odm": {"loc": "prague-1", "ch": ["state"], "w": "..."}}

``loc`` is the location of the writer, ``ch`` the fields that write changed (all of them on create),
``new`` (``true``, on creates only) that the write created the document: the key held no document
when it was sent (a node holding an older version knows from it that the document was deleted and
created again since, even where the bucket no longer keeps the delete marker), ``on`` the revision
the write's compare-and-set expected (the version it was made on: a node whose write had an unknown
outcome learns from another node's version made on the same one that its own cannot have landed
before it, and never will), ``w`` the write id
(also sent as ``Nats-Msg-Id``, and always the last member), by which a node recognises its own
write after an outcome it could not see. The key is the uuid, so the uuid is not repeated in the
value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json, to_json

if TYPE_CHECKING:
    from .document import Document

D = TypeVar("D", bound="Document")

__all__ = [
    "META_KEY",
    "decode",
    "decode_fields",
    "encode",
    "is_create",
    "made_on",
    "read_meta",
    "with_on",
    "written_with",
]

META_KEY = "_odm"


def encode(
    doc: Document,
    *,
    location: str,
    changed: Iterable[str],
    write_id: str,
    create: bool = False,
    on: int | None = None,
) -> bytes:
    """The bytes stored for ``doc`` (``create``: by the write that creates it; ``on``: the
    revision its compare-and-set expects)."""
    info = type(doc).__odm__
    body: bytes = doc.__pydantic_serializer__.to_json(doc, exclude=info.not_stored)
    if info.nested_nan_as_null and b"null" in body:
        _refuse_nested_nonfinite(doc)
    if info.nan_may_load_as_text and (b'"NaN"' in body or b'Infinity"' in body):
        _refuse_nonfinite_as_text(doc, body)
    meta = _meta_head(location, changed if isinstance(changed, frozenset) else frozenset(changed), create)
    if on is not None:
        meta += b'"on":%d,' % on
    meta += b'"w":' + orjson.dumps(write_id) + b"}"
    if body == b"{}":
        return b'{"_odm":' + meta + b"}"
    return body[:-1] + b',"_odm":' + meta + b"}"


def _refuse_nested_nonfinite(doc: Document) -> None:
    """A NaN or infinity inside a nested model whose own config writes it to JSON as ``null``
    (Pydantic's default; the document's ``ser_json_inf_nan="strings"`` does not reach into nested
    models): stored, no node could load the document back. ``ValueError`` naming where it is."""
    for name in type(doc).__odm__.data_fields:
        found = _nonfinite_in(doc.__dict__.get(name), name, None)
        if found is not None:
            path, value, model = found
            config = "ConfigDict(ser_json_inf_nan='strings')"
            if isinstance(model, type) and issubclass(model, BaseModel):
                how = f"model_config = {config}"
            else:  # a Pydantic dataclass
                how = f"@dataclass(config={config})"
            raise ValueError(
                f"{path} is {value!r}: {model.__name__} writes NaN and infinities to JSON as null, "
                f"which no node can load back into a float. Give it {how}, or keep them out of it"
            )


def _refuse_nonfinite_as_text(doc: Document, body: bytes) -> None:
    """A NaN or infinity in an ``Any``/``object`` field or a union, stored as the string "NaN" or
    "Infinity", that loads back as that string: this node would hold a float and every other
    (and this one after a restart) a string, answering queries differently. ``ValueError`` naming
    where it is. Checked by loading ``body`` as a node does (only when it holds such a string)."""
    cls = type(doc)
    try:
        back = decode_fields(cls, body)
    except ValidationError as exc:
        raise ValueError(f"{cls.__name__} as stored would not load back: {exc}") from None
    for name in cls.__odm__.data_fields:
        found = _nonfinite_lost(doc.__dict__.get(name), back.__dict__.get(name), name)
        if found is not None:
            path, value, loaded = found
            text = to_json(value, inf_nan_mode="strings").decode()
            raise ValueError(
                f"{path} is {value!r}: stored as the JSON string {text}, "
                f"it loads back as {loaded!r} (a {type(loaded).__name__}), not as a float. Hold it "
                "in a float field, or keep NaN and infinities out of it"
            )


def _nonfinite_lost(value: Any, back: Any, path: str) -> tuple[str, float, Any] | None:
    """The first non-finite float in ``value`` that ``back`` (``value`` as loaded) holds as
    something else, found by walking both alike."""
    if isinstance(value, float):
        if _finite(value):
            return None
        if isinstance(back, float) and (back == value or (value != value and back != back)):
            return None
        return path, value, back
    fields = getattr(value, "__pydantic_fields__", None)
    if fields is not None:
        pairs: Iterable[tuple[Any, Any, Any]] = (
            (n, getattr(value, n, None), getattr(back, n, None)) for n in fields
        )
    elif isinstance(value, dict):
        loaded = list(back.values()) if isinstance(back, dict) else []
        pairs = ((k, v, loaded[i] if i < len(loaded) else None) for i, (k, v) in enumerate(value.items()))
    elif isinstance(value, list | tuple):
        loaded = list(back) if isinstance(back, list | tuple) else []
        pairs = ((i, v, loaded[i] if i < len(loaded) else None) for i, v in enumerate(value))
    elif isinstance(value, set | frozenset):
        # Unordered: every non-finite float must come back as one.
        odd = [v for v in value if isinstance(v, float) and not _finite(v)]
        kept = (
            [v for v in back if isinstance(v, float) and not _finite(v)]
            if isinstance(back, set | frozenset)
            else []
        )
        if len(odd) > len(kept):
            texts = (
                [v for v in back if not isinstance(v, float)] if isinstance(back, set | frozenset) else [back]
            )
            return path, odd[0], texts[0] if texts else back
        return None
    else:
        return None
    for k, v, b in pairs:
        found = _nonfinite_lost(v, b, f"{path}.{k}")
        if found is not None:
            return found
    return None


def _finite(value: float) -> bool:
    return value == value and value not in (_INF, -_INF)


def _nonfinite_in(value: Any, path: str, model: type | None) -> tuple[str, float, type] | None:
    """The first non-finite float in ``value`` written by ``model``'s JSON config as null."""
    if isinstance(value, float):
        if model is not None and (value != value or value in (_INF, -_INF)):
            return path, value, model
        return None
    fields = getattr(value, "__pydantic_fields__", None)
    if fields is not None:  # a Pydantic model or dataclass: its own config decides
        config = getattr(value, "model_config", None) or getattr(value, "__pydantic_config__", None) or {}
        inner = None if config.get("ser_json_inf_nan") == "strings" else type(value)
        items: Iterable[tuple[Any, Any]] = ((n, getattr(value, n, None)) for n in fields)
        return _first(items, path, inner)
    if isinstance(value, dict):
        return _first(value.items(), path, model)
    if isinstance(value, list | tuple | set | frozenset):
        return _first(enumerate(value), path, model)
    return None


def _first(items: Iterable[tuple[Any, Any]], path: str, model: type | None) -> tuple[str, float, type] | None:
    for k, v in items:
        found = _nonfinite_in(v, f"{path}.{k}", model)
        if found is not None:
            return found
    return None


_INF = float("inf")

_META_HEADS: dict[tuple[str, frozenset[str], bool], bytes] = {}


def _meta_head(location: str, changed: frozenset[str], create: bool) -> bytes:
    """``{"loc":...,"ch":[...],`` for one location and set of changed fields: the same few
    combinations recur for every write, so they are serialised once (bounded cache)."""
    key = (location, changed, create)
    head = _META_HEADS.get(key)
    if head is None:
        meta: dict[str, Any] = {"loc": location, "ch": sorted(changed)}
        if create:
            meta["new"] = True
        head = orjson.dumps(meta)[:-1] + b","
        if len(_META_HEADS) >= 4096:
            _META_HEADS.clear()
        _META_HEADS[key] = head
    return head


def decode(cls: type[D], key: str, value: bytes) -> D:
    """Validate a stored value into a ``cls`` document with ``uuid=key``. Raises on bad data."""
    if cls.__odm__.fast_decode:
        try:
            doc = cls.model_validate_json(value)
        except ValidationError:
            doc = decode_fields(cls, value)
    else:
        doc = decode_fields(cls, value)
    doc.__dict__["uuid"] = key
    return doc


def decode_fields(cls: type[D], value: bytes) -> D:
    """Validate the fields of a stored value, without its ``_odm`` and ``uuid`` members (the key is
    the uuid; another writer may have stored one). What ``model_validate_json`` does directly when
    the class ignores unknown members and the value holds no ``uuid`` (the usual case, so tried
    first); ``extra="forbid"`` classes always come here. Validation stays in JSON mode, where a
    strict ``datetime`` takes a string, and the JSON is read by Pydantic, which keeps integers
    beyond 64 bits (``orjson`` turns them into floats)."""
    data = from_json(value)
    if not isinstance(data, dict):
        raise ValueError(f"stored value is a JSON {type(data).__name__}, not an object")
    data.pop(META_KEY, None)
    data.pop("uuid", None)
    return cls.model_validate_json(to_json(data))


def read_meta(value: bytes) -> dict[str, Any]:
    """The ``_odm`` bookkeeping of a stored value (empty if absent or undecodable)."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    meta = data.get(META_KEY) if isinstance(data, dict) else None
    return meta if isinstance(meta, dict) else {}


def is_create(value: bytes) -> bool:
    """Whether ``value`` is one :func:`encode` made for a create (no parsing: the bookkeeping is
    the last member, and quotes inside JSON strings are escaped, so its ``"new":true`` cannot be
    mistaken for a field's text)."""
    at = value.rfind(b'"_odm":{')
    return at >= 0 and value.find(b'"new":true', at) >= 0


def made_on(value: bytes) -> int | None:
    """The ``on`` of a stored value (the revision its write expected), ``None`` without one."""
    on = read_meta(value).get("on")
    return on if type(on) is int else None


def with_on(value: bytes, on: int) -> bytes:
    """``value`` (one :func:`encode` made with an ``on``) claiming ``on`` instead: the same write
    sent again on another revision says which one (its fields and id stay as they were). The
    bookkeeping is the last member, so the last ``"on":`` is its own."""
    at = value.rfind(b'"on":')
    if at < 0:
        return value
    end = value.index(b",", at)
    return value[:at] + b'"on":%d' % on + value[end:]


def written_with(value: bytes, write_id: str) -> bool:
    """Whether ``value`` is the one :func:`encode` made with ``write_id`` (no parsing: the
    bookkeeping is the last key and ``w`` its last member)."""
    return value.endswith(b'"w":"' + write_id.encode() + b'"}}')
