"""Shared building blocks of the schema models."""

from __future__ import annotations

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
