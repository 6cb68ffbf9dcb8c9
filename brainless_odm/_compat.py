"""Every use of Pydantic internals lives here, so a Pydantic upgrade breaks one file at most."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from pydantic._internal._model_construction import ModelMetaclass
from pydantic._internal._typing_extra import parent_frame_namespace

__all__ = ["ModelMetaclass", "class_statement_namespace"]


def class_statement_namespace() -> MutableMapping[str, Any] | None:
    """The local names where the class statement that called our metaclass's ``__new__`` runs
    (``None`` at module level, where globals serve). Pydantic looks one frame up from its own
    ``__new__``, which is our ``__new__`` when a metaclass subclasses it: a ``Document`` defined in
    a function could then not resolve a postponed annotation naming a class local to it."""
    return parent_frame_namespace(parent_depth=3)
