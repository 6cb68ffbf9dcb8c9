"""Every use of Pydantic internals lives here, so a Pydantic upgrade breaks one file at most."""

from __future__ import annotations

from pydantic._internal._model_construction import ModelMetaclass

__all__ = ["ModelMetaclass"]
