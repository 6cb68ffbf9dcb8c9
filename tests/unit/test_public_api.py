"""The public names of brainless_odm: changing them must be a deliberate edit of this list."""

from __future__ import annotations

import importlib

import brainless_odm

PUBLIC = [
    "BrainlessError",
    "BucketNotFound",
    "ConnectionClosed",
    "ConnectionLost",
    "Database",
    "DatabaseError",
    "DeadLetter",
    "DefinitionError",
    "Document",
    "DocumentConfig",
    "DoesNotExist",
    "FlushError",
    "Indexed",
    "InvalidKey",
    "KVStore",
    "Manager",
    "MemoryStore",
    "MultipleObjectsReturned",
    "NotBoundError",
    "PayloadTooLarge",
    "Q",
    "QueryError",
    "QuerySet",
    "Registry",
    "StoreError",
    "Unique",
    "UniqueViolation",
    "default_registry",
    "flush",
    "get_database",
    "setup",
    "stop",
]


def test_all_is_the_expected_sorted_list() -> None:
    assert brainless_odm.__all__ == PUBLIC
    assert sorted(brainless_odm.__all__) == brainless_odm.__all__


def test_every_public_name_is_importable() -> None:
    module = importlib.import_module("brainless_odm")
    for name in PUBLIC:
        assert getattr(module, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from brainless_odm import *", namespace)
    assert set(PUBLIC) <= set(namespace)


def test_errors_share_one_root() -> None:
    errors = [
        "DefinitionError", "DoesNotExist", "MultipleObjectsReturned", "UniqueViolation", "QueryError",
        "NotBoundError", "DatabaseError", "FlushError", "StoreError", "ConnectionLost", "ConnectionClosed",
        "BucketNotFound",
        "PayloadTooLarge", "InvalidKey",
    ]  # fmt: skip
    for name in errors:
        assert issubclass(getattr(brainless_odm, name), brainless_odm.BrainlessError), name


def test_version() -> None:
    assert isinstance(brainless_odm.__version__, str)
