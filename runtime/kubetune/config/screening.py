"""First pass over a raw mapping: keys are checked against the schema before any value is.

- a null value (a bare `key:` line) means "not set" and is dropped;
- an unknown key is reported with a "did you mean" suggestion (at every nesting level);
- a known Axolotl key kubetune does not implement is dropped when empty, reported when set;
- `fsdp_config` keys written without the `fsdp_` prefix are renamed to the prefixed form.

What comes out holds only schema keys, so the pydantic pass reports value problems only.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from . import compat
from .datasets import DatasetConfig
from .parallel import FsdpConfig
from .problems import ConfigProblem
from .schema import TrainConfig

_DROPPED = object()  # a value already reported by the screening


def join(path: str, key: object) -> str:
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    text = key if isinstance(key, str) else repr(key)
    return f"{path}.{text}" if path else text


def _nested_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """(model class, is_list) when a field holds a schema model or a list of them."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _nested_model(arg)
            if found:
                return found
        return None
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        found = _nested_model(item)
        return (found[0], True) if found and not found[1] else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None


COMPAT_BY_MODEL: dict[type[BaseModel], dict[str, compat.Unimplemented]] = {
    TrainConfig: compat.TOP_LEVEL,
    DatasetConfig: compat.DATASET,
    FsdpConfig: compat.FSDP_CONFIG,
}

# For "this key belongs elsewhere" hints.
_TOP_KEYS = frozenset(TrainConfig.model_fields)
_DATASET_KEYS = frozenset(DatasetConfig.model_fields)
_FSDP_KEYS = frozenset(FsdpConfig.model_fields)


def _normalise(key: str) -> str:
    return key.strip().lower().replace("-", "_").replace(" ", "_")


def suggest(key: str, candidates: typing.Iterable[str]) -> str | None:
    candidates = list(candidates)
    norm = _normalise(key)
    if norm in candidates:
        return norm
    matches = difflib.get_close_matches(norm, candidates, n=1, cutoff=0.7)
    return matches[0] if matches else None


def _unknown_key(model: type[BaseModel], path: str, key: str) -> ConfigProblem:
    where = join(path, key)
    known = list(model.model_fields)
    guess = suggest(key, known)
    if guess:
        return ConfigProblem(
            where, f"unknown key '{key}'; did you mean '{guess}'?", f"rename it to '{guess}'"
        )
    # A key of another level, written at the wrong one.
    if model is TrainConfig and key in _FSDP_KEYS:
        return ConfigProblem(where, f"'{key}' belongs under fsdp_config", f"move it to fsdp_config.{key}")
    if model is TrainConfig and key in _DATASET_KEYS:
        return ConfigProblem(
            where,
            f"'{key}' is a key of a dataset entry",
            f"move it into the entries of datasets (datasets[0].{key})",
        )
    if model is not TrainConfig and (key in _TOP_KEYS or key in compat.TOP_LEVEL):
        return ConfigProblem(
            where, f"'{key}' is a top-level key, not one of {path}", f"move '{key}' to the top level"
        )
    where_text = f"in {path}" if path else "at the top level"
    return ConfigProblem(
        where,
        f"unknown key '{key}' {where_text}",
        "remove it, or see docs/config.md (`kubetune schema`) for the keys kubetune accepts",
    )


def screen(
    mapping: Mapping, problems: list[ConfigProblem], model: type[BaseModel] = TrainConfig, path: str = ""
) -> dict:
    """A copy of `mapping` holding only the keys of `model` (recursively); problems are appended."""
    fields = model.model_fields
    table = COMPAT_BY_MODEL.get(model, {})
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            problems.append(
                ConfigProblem(
                    join(path, key),
                    f"key {key!r} is a {type(key).__name__}, not a name",
                    "keys are names such as learning_rate (quote YAML words like yes/no/on/off)",
                )
            )
            continue
        if value is None:
            continue  # a bare `key:` line: not set
        name = key
        if model is FsdpConfig and name not in fields and f"fsdp_{name}" in fields:
            name = f"fsdp_{name}"
            if name in mapping and mapping[name] is not None:
                problems.append(
                    ConfigProblem(
                        join(path, key),
                        f"'{key}' and '{name}' are the same key, set twice",
                        f"keep only '{name}'",
                    )
                )
                continue
        if name in fields:
            screened = _screen_value(fields[name].annotation, value, problems, join(path, name))
            if screened is not _DROPPED:
                out[name] = screened
            continue
        entry = table.get(name) or (table.get(f"fsdp_{name}") if model is FsdpConfig else None)
        if entry is not None:
            if not entry.accepts(value):
                fix = f"{entry.hint or 'remove it'} (an empty value is accepted)"
                problems.append(
                    ConfigProblem(
                        join(path, key),
                        f"'{key}' is an Axolotl key that kubetune does not implement; it is set to {_short(value)}",
                        fix,
                    )
                )
            continue
        problems.append(_unknown_key(model, path, key))
    return out


def _numeric_only(annotation: Any) -> bool:
    """True when a field takes numbers only (so true/false there is a mistake, not 1/0)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _numeric_only(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(_numeric_only(a) for a in args)
    if origin is typing.Literal:
        args = typing.get_args(annotation)
        return all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    return annotation in (int, float)


def _screen_value(annotation: Any, value: Any, problems: list[ConfigProblem], path: str) -> Any:
    if isinstance(value, bool) and _numeric_only(annotation):
        problems.append(
            ConfigProblem(
                path,
                f"expected a number, got {_short(value)}",
                f"write {path.rpartition('.')[2]} as a number",
            )
        )
        return _DROPPED
    nested = _nested_model(annotation)
    if nested is None:
        return value
    model, is_list = nested
    if is_list:
        if isinstance(value, list):
            return [
                screen(item, problems, model, f"{path}[{index}]") if isinstance(item, Mapping) else item
                for index, item in enumerate(value)
            ]
        return value
    if isinstance(value, Mapping):
        return screen(value, problems, model, path)
    return value


def _short(value: object, limit: int = 60) -> str:
    """A value as the YAML user wrote it (true, null, 'text'), cut to one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a report must never fail on an odd value
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
