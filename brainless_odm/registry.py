"""Which ``Document`` classes exist, by collection name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from .exceptions import DefinitionError

if TYPE_CHECKING:
    from .document import Document

__all__ = ["Registry", "default_registry"]


class Registry:
    """A set of ``Document`` classes with distinct collection names.

    Every concrete ``Document`` subclass registers in one (``model_config["registry"]``, default
    :data:`default_registry`). ``Database(..., documents=None)`` serves the default registry's classes;
    pass ``documents=my_registry`` to serve another one. Two classes claiming one collection name is a
    :class:`DefinitionError`, except a re-definition of the same class (same module and qualified name,
    as happens on a module reload), which replaces the old one.
    """

    def __init__(self) -> None:
        self._classes: dict[str, type[Document]] = {}

    def register(self, cls: type[Document], collection: str) -> None:
        old = self._classes.get(collection)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise DefinitionError(
                f"collection {collection!r} is already defined by {old.__module__}.{old.__qualname__}; "
                f"give {cls.__qualname__} another name with model_config = DocumentConfig(collection=...)"
            )
        self._classes[collection] = cls

    def unregister(self, cls: type[Document]) -> None:
        for name, c in list(self._classes.items()):
            if c is cls:
                del self._classes[name]

    def get(self, collection: str) -> type[Document] | None:
        return self._classes.get(collection)

    def __iter__(self) -> Iterator[type[Document]]:
        return iter(list(self._classes.values()))

    def __len__(self) -> int:
        return len(self._classes)

    def __contains__(self, cls: object) -> bool:
        return cls in self._classes.values()

    def __repr__(self) -> str:
        return f"Registry({sorted(self._classes)})"


default_registry = Registry()
