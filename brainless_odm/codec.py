"""Document ⇄ stored bytes.

The stored value is the document's fields as a JSON object, serialised by Pydantic (Rust side), plus
one ``"_odm"`` key of bookkeeping that no field can collide with (Pydantic fields cannot start with
``_``)::

    {"channel_id": "c-1", "queue_id": 3, ..., "_odm": {"loc": "prague-1", "ch": ["state"], "w": "..."}}

``loc`` is the location of the writer, ``ch`` the fields that write changed (all of them on create),
``w`` the write id (also sent as ``Nats-Msg-Id``), by which a node recognises its own write after an
outcome it could not see. The key is the uuid, so the uuid is not repeated in the value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import ValidationError
from pydantic_core import from_json, to_json

if TYPE_CHECKING:
    from .document import Document

D = TypeVar("D", bound="Document")

__all__ = ["META_KEY", "decode", "decode_fields", "encode", "read_meta", "written_with"]

META_KEY = "_odm"
_EXCLUDE_UUID = {"uuid"}


def encode(doc: Document, *, location: str, changed: Iterable[str], write_id: str) -> bytes:
    """The bytes stored for ``doc``."""
    body: bytes = doc.__pydantic_serializer__.to_json(doc, exclude=_EXCLUDE_UUID)
    meta = _meta_head(location, changed if isinstance(changed, frozenset) else frozenset(changed))
    meta += orjson.dumps(write_id) + b"}"
    if body == b"{}":
        return b'{"_odm":' + meta + b"}"
    return body[:-1] + b',"_odm":' + meta + b"}"


_META_HEADS: dict[tuple[str, frozenset[str]], bytes] = {}


def _meta_head(location: str, changed: frozenset[str]) -> bytes:
    """``{"loc":...,"ch":[...],"w":`` for one location and set of changed fields: the same few
    combinations recur for every write, so they are serialised once (bounded cache)."""
    key = (location, changed)
    head = _META_HEADS.get(key)
    if head is None:
        head = orjson.dumps({"loc": location, "ch": sorted(changed), "w": None})[: -len(b"null}")]
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


def written_with(value: bytes, write_id: str) -> bool:
    """Whether ``value`` is the one :func:`encode` made with ``write_id`` (no parsing: the
    bookkeeping is the last key and ``w`` its last member)."""
    return value.endswith(b'"w":"' + write_id.encode() + b'"}}')
