"""ODM options of a ``Document`` class, declared in ``model_config`` and validated once."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict

from .exceptions import DefinitionError
from .store.base import BucketConfig, bucket_setting_problem

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
    - ``bucket_replicas``: JetStream replicas of the bucket (1-5, default 1; a single nats-server
      refuses more than 1; a ``MemoryStore`` accepts any and keeps one copy).
    - ``bucket_storage``: ``"file"`` (default) or ``"memory"`` (a ``MemoryStore`` keeps everything in
      memory either way).
    - ``bucket_max_value_size``: the largest stored document in bytes (default: the server's limit).
    - ``bucket_ttl``: seconds (at least 0.1) after which an entry not rewritten expires (default: never).
    - ``registry``: the :class:`~brainless_odm.Registry` the class registers in (default: the global one).

    The ``bucket_*`` options are checked as ``BucketConfig`` checks its fields (one definition,
    :func:`~brainless_odm.store.base.bucket_setting_problem`): a value NATS would refuse fails when
    the class is created, whatever the store.
    """

    collection: str
    bucket_history: int
    bucket_replicas: int
    bucket_storage: Literal["file", "memory"]
    bucket_max_value_size: int
    bucket_ttl: float
    registry: Registry


_ODM_KEYS = frozenset(DocumentConfig.__annotations__) - frozenset(ConfigDict.__annotations__)
#: ``model_config`` key -> the ``BucketConfig`` field it sets.
_BUCKET_OPTIONS = {
    "bucket_history": "history",
    "bucket_replicas": "replicas",
    "bucket_storage": "storage",
    "bucket_max_value_size": "max_value_size",
    "bucket_ttl": "ttl",
}


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
    settings: dict[str, Any] = {}
    for key, name in _BUCKET_OPTIONS.items():
        if key in config:
            value = config[key]
            problem = bucket_setting_problem(name, value)
            if problem is not None:
                raise DefinitionError(f"{cls_name}: model_config[{key!r}] must be {problem}, got {value!r}")
            settings[name] = float(value) if name == "ttl" and value is not None else value
    try:
        bucket = BucketConfig(**settings, description=f"brainless_odm collection {collection}")
    except ValueError as e:  # the description, for a collection name of thousands of characters
        raise DefinitionError(f"{cls_name}: {e}") from None
    return CollectionOptions(collection=collection, bucket=bucket)
