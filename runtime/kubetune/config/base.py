"""Shared building blocks of the schema models."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Every model of the schema: immutable, unknown keys refused, no NaN/inf sneaking into numbers.
MODEL_CONFIG = ConfigDict(
    frozen=True,
    extra="forbid",
    allow_inf_nan=False,
    validate_default=False,
    use_attribute_docstrings=False,
    protected_namespaces=(),
)


class Section(BaseModel):
    """Base of every schema model (the config and its nested mappings)."""

    model_config = MODEL_CONFIG


def field(default: Any = ..., *, description: str, **kwargs: Any) -> Any:
    """A pydantic Field whose description is mandatory: docs/config.md is generated from it."""
    if not description:
        raise ValueError("every config field needs a description")
    return Field(default, description=description, **kwargs)


IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"


def nested_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """(model class, is_list) when a field holds a model or a list of them."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = nested_model(arg)
            if found:
                return found
        return None
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        found = nested_model(item)
        return (found[0], True) if found and not found[1] else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None
