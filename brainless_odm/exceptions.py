"""Every error brainless_odm raises.

::

    BrainlessError
    ├── DefinitionError          a Document class is declared wrongly (raised at class creation)
    ├── DoesNotExist             get() found nothing; each Document class has its own subclass
    ├── MultipleObjectsReturned  get() found more than one
    ├── UniqueViolation          a Unique field value is already held by another document
    ├── QueryError               unknown field, unknown lookup or a lookup value of the wrong type
    ├── NotBoundError            a manager used with no started Database holding its class
    ├── DatabaseError            a Database used wrongly (not started, already started, stopped)
    ├── FlushError               some documents could not be written; .failures says which and why
    └── StoreError               the storage backend failed (driver errors chained as __cause__)
        ├── ConnectionLost       the server is unreachable now (transient, retried by the engine)
        ├── ConnectionClosed     the client connection or the store is closed for good (not retried)
        ├── BucketNotFound       a collection's bucket is gone (deleted by an operator?)
        ├── PayloadTooLarge      a document encodes to more bytes than the server accepts
        └── InvalidKey           a key that the store cannot hold

Each class has an anchor in ``docs/errors.md``, which ``help_url()`` returns; the messages of
``UniqueViolation`` and ``FlushError`` end with it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BrainlessError",
    "BucketNotFound",
    "ConnectionClosed",
    "ConnectionLost",
    "DatabaseError",
    "DefinitionError",
    "DoesNotExist",
    "FlushError",
    "InvalidKey",
    "MultipleObjectsReturned",
    "NotBoundError",
    "PayloadTooLarge",
    "QueryError",
    "StoreError",
    "UniqueViolation",
]

DOCS_URL = "https://brainless-odm.readthedocs.io/en/latest/errors/"


def _link(name: str) -> str:
    return f"{DOCS_URL}#{name.lower()}"


class BrainlessError(Exception):
    """Root of every brainless_odm error."""

    def help_url(self) -> str:
        """Where ``docs/errors.md`` explains this error."""
        for cls in type(self).__mro__:
            if cls.__module__ == __name__:
                return _link(cls.__name__)
        return _link("BrainlessError")  # pragma: no cover - BrainlessError is always in the MRO


class DefinitionError(BrainlessError, TypeError):
    """A ``Document`` class is declared wrongly: reserved field name, bad option, duplicate name."""


class DoesNotExist(BrainlessError, LookupError):
    """``get()`` matched no document. ``Call.DoesNotExist`` is the subclass for ``Call``."""


class MultipleObjectsReturned(BrainlessError, LookupError):
    """``get()`` matched more than one document."""


class UniqueViolation(BrainlessError, ValueError):
    """A ``Unique`` field value is already held by another document of the collection."""

    def __init__(self, collection: str, field: str, value: Any, holder: str | None = None) -> None:
        self.collection = collection
        self.field = field
        self.value = value
        self.holder = holder
        who = f" (held by {holder})" if holder else ""
        super().__init__(
            f"{collection}.{field}={value!r} is already taken{who}; "
            f"unique fields allow one document per value. See {_link('UniqueViolation')}"
        )


class QueryError(BrainlessError, ValueError):
    """A query names an unknown field or lookup, or gives a value of the wrong type."""


class NotBoundError(BrainlessError, RuntimeError):
    """A manager was used but no started ``Database`` holds its document class."""


class DatabaseError(BrainlessError, RuntimeError):
    """A ``Database`` was used in a state that does not allow it (not started, stopped...)."""


class StoreError(BrainlessError):
    """The storage backend failed. The driver's exception is chained as ``__cause__``."""


class ConnectionLost(StoreError):
    """The server is unreachable right now; the engine keeps changes and retries."""


class ConnectionClosed(StoreError):
    """The NATS connection is closed for good (by its owner, or by nats-py when its reconnect
    attempts ran out), or the store was (``await store.close()``); nothing more can be written
    through it."""


class BucketNotFound(StoreError):
    """A collection's bucket does not exist (any more)."""


class PayloadTooLarge(StoreError, ValueError):
    """A document encodes to more bytes than the server accepts for one value."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(message)


class InvalidKey(StoreError, ValueError):
    """A key (document uuid) that the store cannot hold."""


class FlushError(BrainlessError):
    """Some documents could not be written. Everything else in the flush was.

    ``failures`` lists ``(collection, key, exception)``; the documents stay in memory, still dirty,
    and are retried by the next flush.
    """

    def __init__(self, failures: list[tuple[str, str, BaseException]]) -> None:
        self.failures = failures
        lines = [f"  {coll}/{key}: {type(exc).__name__}: {exc}" for coll, key, exc in failures[:10]]
        more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
        super().__init__(
            f"{len(failures)} document(s) could not be written:\n"
            + "\n".join(lines)
            + more
            + f"\nSee {_link('FlushError')}"
        )
