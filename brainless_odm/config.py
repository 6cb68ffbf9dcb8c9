"""ODM options of a ``Document`` class, declared in ``model_config`` and validated once."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict

from .exceptions import DefinitionError
from .store.base import BucketConfig

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["CollectionOptions", "DocumentConfig", "collection_options"]

# No "-": the bucket is "{namespace}-{collection}", and a namespace may hold "-", so a "-" in the
# collection would let namespace "app" with collection "staging-call" share namespace
# "app-staging"'s bucket "app-staging-call". Without it the last "-" of a bucket name splits it.
_COLLECTION_RE = re.compile(r"^[A-Za-z0-9_]+$")


class DocumentConfig(ConfigDict, total=False):
    """``ConfigDict`` plus the ODM's own options.

    ``model_config = DocumentConfig(collection="calls", bucket_replicas=3)``

    - ``collection``: the collection name (default: the class name in snake_case).
    - ``bucket_history``: revisions kept per key in the bucket (1-64, default 1).
    - ``bucket_replicas``: JetStream replicas of the bucket (1-5, default 1).
    - ``bucket_storage``: ``"file"`` (default) or ``"memory"``.
    - ``bucket_max_value_size``: the largest stored document in bytes (default: the server's limit).
    - ``bucket_ttl``: seconds after which an entry not rewritten expires (default: never).
    - ``registry``: the :class:`~brainless_odm.Registry` the class registers in (default: the global one).
    """

    collection: str
    bucket_history: int
    bucket_replicas: int
    bucket_storage: Literal["file", "memory"]
    bucket_max_value_size: int
    bucket_ttl: float
    registry: Registry


_ODM_KEYS = frozenset(DocumentConfig.__annotations__) - frozenset(ConfigDict.__annotations__)


@dataclass(frozen=True, slots=True)
class CollectionOptions:
    """The validated ODM options of one ``Document`` class."""

    collection: str
    bucket: BucketConfig


def snake_case(name: str) -> str:
    """``QueueItem`` → ``queue_item``; ``HTTPCall`` → ``http_call``."""
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s)
    return s.lower()


def _int(cls_name: str, key: str, value: Any, lo: int, hi: int | None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise DefinitionError(f"{cls_name}: model_config[{key!r}] must be an int in {bound}, got {value!r}")
    return value


def collection_options(cls_name: str, config: dict[str, Any], own: dict[str, Any]) -> CollectionOptions:
    """Validate the ODM keys of ``config``; ``own`` is the part set on this very class.

    The collection name is not inherited: a subclass is another collection unless it says otherwise.
    """
    known = DocumentConfig.__required_keys__ | DocumentConfig.__optional_keys__
    for name in own:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DefinitionError(f"{cls_name}: unknown model_config key {name!r}{hint}")
    collection = own.get("collection", snake_case(cls_name))
    if not isinstance(collection, str) or not _COLLECTION_RE.match(collection):
        raise DefinitionError(
            f"{cls_name}: collection name {collection!r} must be letters, digits or '_' "
            "(the bucket is '{namespace}-{collection}': a '-' would make namespaces overlap)"
        )
    if collection.startswith("_"):
        raise DefinitionError(
            f"{cls_name}: collection names starting with '_' are reserved for brainless_odm's own "
            f"buckets (such as the dead letters); got {collection!r}"
        )
    history = _int(cls_name, "bucket_history", config.get("bucket_history", 1), 1, 64)
    replicas = _int(cls_name, "bucket_replicas", config.get("bucket_replicas", 1), 1, 5)
    storage = config.get("bucket_storage", "file")
    if storage not in ("file", "memory"):
        raise DefinitionError(f"{cls_name}: bucket_storage must be 'file' or 'memory', got {storage!r}")
    max_size = config.get("bucket_max_value_size")
    if max_size is not None:
        _int(cls_name, "bucket_max_value_size", max_size, 1, None)
    ttl = config.get("bucket_ttl")
    if ttl is not None and (not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl <= 0):
        raise DefinitionError(f"{cls_name}: bucket_ttl must be a positive number of seconds, got {ttl!r}")
    return CollectionOptions(
        collection=collection,
        bucket=BucketConfig(
            history=history,
            replicas=replicas,
            max_value_size=max_size,
            storage=storage,
            ttl=float(ttl) if ttl is not None else None,
            description=f"brainless_odm collection {collection}",
        ),
    )
