"""Change/delete/field-change callbacks of one collection."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Listeners"]

log = logging.getLogger("brainless_odm.events")

Callback = Callable[..., Any]


@dataclass
class _Registered:
    callback: Callback
    local: bool


@dataclass
class Listeners:
    """Callbacks registered on a manager; fired by the engine, never allowed to break it."""

    change: list[_Registered] = field(default_factory=list)
    delete: list[_Registered] = field(default_factory=list)
    fields: dict[str, list[_Registered]] = field(default_factory=dict)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def on_change(self, callback: Callback, local: bool) -> None:
        self.change.append(_Registered(callback, local))

    def on_delete(self, callback: Callback, local: bool) -> None:
        self.delete.append(_Registered(callback, local))

    def on_field_change(self, name: str, callback: Callback, local: bool) -> None:
        self.fields.setdefault(name, []).append(_Registered(callback, local))

    def remove(self, callback: Callback) -> bool:
        """Unregister ``callback`` everywhere; whether it was registered."""
        found = False
        for regs in (self.change, self.delete, *self.fields.values()):
            for r in [r for r in regs if r.callback == callback]:
                regs.remove(r)
                found = True
        return found

    # Asked on every assignment and every applied change: answer without a scan when, as is usual,
    # nothing is registered.
    def wants_change(self, local: bool) -> bool:
        change = self.change
        if not change:
            return False
        return not local or any(r.local for r in change)

    def wants_field(self, name: str, local: bool) -> bool:
        if not self.fields:
            return False
        regs = self.fields.get(name)
        if not regs:
            return False
        return not local or any(r.local for r in regs)

    def fire_change(self, old: Any, new: Any, local: bool) -> None:
        for r in self.change:
            if r.local or not local:
                self._call(r.callback, old, new)

    def fire_delete(self, doc: Any, local: bool) -> None:
        for r in self.delete:
            if r.local or not local:
                self._call(r.callback, doc)

    def fire_field(self, doc: Any, name: str, old: Any, new: Any, local: bool) -> None:
        for r in self.fields.get(name, ()):
            if r.local or not local:
                self._call(r.callback, doc, name, old, new)

    def _call(self, callback: Callback, *args: Any) -> None:
        try:
            result = callback(*args)
        except Exception:
            log.exception("event callback %r failed", callback)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event callback failed", exc_info=task.exception())

    def for_database(self) -> Listeners:
        """The same registrations (shared: one registered later is seen too), with its own set of
        running callback tasks. Class-level callbacks (``Call.objects.on_change``) fire in every
        database holding the class; each database stopping waits for, and cancels, only its own."""
        return Listeners(self.change, self.delete, self.fields)

    def running(self) -> set[asyncio.Task[Any]]:
        """The async callbacks fired here that are still running."""
        return {t for t in self._tasks if not t.done()}
