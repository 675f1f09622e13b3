"""First pass over a raw mapping: keys are checked against the schema before any value is.

- a null value (a bare `key:` line) means "not set" and is dropped;
- an unknown key is reported with a "did you mean" suggestion (at every nesting level);
- a known Axolotl key kubetune does not implement is dropped when empty, reported when set;
- `fsdp_config` keys written without the `fsdp_` prefix are renamed to the prefixed form.

What comes out holds only schema keys, so the pydantic pass reports value problems only.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from . import compat
from .base import nested_model
from .datasets import DatasetConfig
from .parallel import FsdpConfig
from .preference import TrlConfig
from .problems import ConfigProblem, join, short, suggest, unknown_key
from .schema import TrainConfig
from .sharding import FSDP_CONFIG_ALIASES, TOP_LEVEL_ALIASES, normalise_fsdp

_DROPPED = object()  # a value already reported by the screening


COMPAT_BY_MODEL: dict[type[BaseModel], dict[str, compat.Unimplemented]] = {
    TrainConfig: compat.TOP_LEVEL,
    DatasetConfig: compat.DATASET,
    FsdpConfig: compat.FSDP_CONFIG,
    TrlConfig: compat.TRL,
}

# For "this key belongs elsewhere" hints.
_TOP_KEYS = frozenset(TrainConfig.model_fields)
_DATASET_KEYS = frozenset(DatasetConfig.model_fields)
_FSDP_KEYS = frozenset(FsdpConfig.model_fields)


def _unknown_key(model: type[BaseModel], path: str, key: str) -> ConfigProblem:
    if not suggest(key, model.model_fields):  # a key of another level, written at the wrong one
        where = join(path, key)
        if model is TrainConfig and key in _FSDP_KEYS:
            return ConfigProblem(where, f"'{key}' belongs under fsdp_config", f"move it to fsdp_config.{key}")
        if model is TrainConfig and key in _DATASET_KEYS:
            return ConfigProblem(
                where,
                f"'{key}' is a key of a dataset entry",
                f"move it into the entries of datasets (datasets[0].{key})",
            )
        if model is TrlConfig and f"dpo_{key}" in _TOP_KEYS:  # trl's name of an Axolotl dpo_* key
            return ConfigProblem(
                where,
                f"Axolotl spells trl's {key} as the top-level key dpo_{key}",
                f"move it to the top level as dpo_{key}",
            )
        if model is not TrainConfig and (key in _TOP_KEYS or key in compat.TOP_LEVEL):
            return ConfigProblem(
                where, f"'{key}' is a top-level key, not one of {path}", f"move '{key}' to the top level"
            )
    return unknown_key(path, key, model.model_fields)


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
        if model is TrainConfig and name in compat.RENAMED:
            name = compat.RENAMED[name]
        elif model is FsdpConfig and name not in fields and f"fsdp_{name}" in {*fields, *FSDP_CONFIG_ALIASES}:
            name = f"fsdp_{name}"
        if name != key and mapping.get(name) is not None:  # another spelling of a key that is also set
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
        if (model is TrainConfig and name in TOP_LEVEL_ALIASES) or (
            model is FsdpConfig and name in FSDP_CONFIG_ALIASES
        ):
            out[name] = value  # folded into fsdp / fsdp_config by sharding.normalise_fsdp
            continue
        if model is TrainConfig and name in ("batch_size", "bfloat16", "bnb_config_kwargs"):
            out[name] = value  # folded into gradient_accumulation_steps / bf16 / the bnb_4bit_* keys
            continue
        entry = table.get(name) or (table.get(f"fsdp_{name}") if model is FsdpConfig else None)
        if entry is not None:
            if not entry.accepts(value):
                fix = f"{entry.hint or 'remove it'} (an empty value is accepted)"
                problems.append(
                    ConfigProblem(
                        join(path, key),
                        f"'{key}' is an Axolotl key that kubetune does not implement; it is set to {short(value)}",
                        fix,
                    )
                )
            continue
        problems.append(_unknown_key(model, path, key))
    if model is TrainConfig:
        normalise_fsdp(out, problems)
        _normalise_axolotl_spellings(out, problems)
    return out


def _normalise_axolotl_spellings(out: dict[str, Any], problems: list[ConfigProblem]) -> None:
    """Axolotl's older spellings: `bfloat16: true` is `bf16: true` (Axolotl reads them alike);
    `batch_size` (rows per optimizer step and GPU): gradient_accumulation_steps is
    batch_size / micro_batch_size when not given; when given, batch_size must agree with it."""
    if "bfloat16" in out:
        bfloat16 = out.pop("bfloat16")
        if not isinstance(bfloat16, bool):
            problems.append(
                ConfigProblem(
                    "bfloat16", f"expected true or false, got {short(bfloat16)}", "write bf16: true"
                )
            )
        elif bfloat16 and out.get("bf16") is False:
            problems.append(
                ConfigProblem("bfloat16", "bfloat16: true contradicts bf16: false", "keep one of them")
            )
        elif bfloat16 and "bf16" not in out:
            out["bf16"] = True
    _fold_bnb_config_kwargs(out, problems)
    if "batch_size" not in out:
        return
    value = out.pop("batch_size")
    micro = out.get("micro_batch_size", 1)
    if not isinstance(micro, int) or isinstance(micro, bool) or micro < 1:
        return  # micro_batch_size's own validation reports it
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        problems.append(
            ConfigProblem(
                "batch_size", f"expected a whole number >= 1, got {short(value)}", "e.g. batch_size: 16"
            )
        )
        return
    if "gradient_accumulation_steps" in out:
        steps = out["gradient_accumulation_steps"]
        if isinstance(steps, int) and value != micro * steps:
            problems.append(
                ConfigProblem(
                    "batch_size",
                    f"batch_size {value} contradicts micro_batch_size {micro} x gradient_accumulation_steps {steps}",
                    "remove batch_size (micro_batch_size and gradient_accumulation_steps say it)",
                )
            )
        return
    if value % micro:
        problems.append(
            ConfigProblem(
                "batch_size",
                f"batch_size {value} is not a multiple of micro_batch_size {micro}",
                "write gradient_accumulation_steps: N instead (rows per step = micro_batch_size x N)",
            )
        )
        return
    out["gradient_accumulation_steps"] = value // micro


# bitsandbytes' BitsAndBytesConfig arguments that kubetune has as keys of its own; the others it sets itself.
_BNB_KWARGS = ("bnb_4bit_use_double_quant", "bnb_4bit_quant_type", "bnb_4bit_compute_dtype")


def _fold_bnb_config_kwargs(out: dict[str, Any], problems: list[ConfigProblem]) -> None:
    """Axolotl's `bnb_config_kwargs` (extra BitsAndBytesConfig arguments): those kubetune has as top-level
    keys are read as them (a value given both ways must agree); the others are refused by name."""
    kwargs = out.pop("bnb_config_kwargs", None)
    if kwargs is None:
        return
    if not isinstance(kwargs, Mapping):
        problems.append(
            ConfigProblem(
                "bnb_config_kwargs",
                f"expected a mapping, got {short(kwargs)}",
                "e.g. {bnb_4bit_use_double_quant: true}",
            )
        )
        return
    for key, value in kwargs.items():
        where = f"bnb_config_kwargs.{key}"
        if key not in _BNB_KWARGS:
            problems.append(
                ConfigProblem(
                    where,
                    f"kubetune sets BitsAndBytesConfig's {key} itself",
                    f"remove it; the arguments kubetune takes here are {', '.join(_BNB_KWARGS)} (the top-level keys of those names)",
                )
            )
        elif key in out and out[key] != value:
            problems.append(
                ConfigProblem(
                    where,
                    f"{key} is {short(out[key])} at the top level and {short(value)} here",
                    f"keep one {key}",
                )
            )
        elif value is not None:
            out[key] = value


def _numeric_only(annotation: Any) -> bool:
    """True when a field takes numbers only (so true/false there is a mistake, not 1/0)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _numeric_only(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(members) and all(_numeric_only(a) for a in members)
    if origin is typing.Literal:
        return all(
            isinstance(a, (int, float)) and not isinstance(a, bool) for a in typing.get_args(annotation)
        )
    return annotation in (int, float)


def _screen_value(annotation: Any, value: Any, problems: list[ConfigProblem], path: str) -> Any:
    if isinstance(value, bool) and _numeric_only(annotation):
        problems.append(
            ConfigProblem(
                path,
                f"expected a number, got {short(value)}",
                f"write {path.rpartition('.')[2]} as a number",
            )
        )
        return _DROPPED
    nested = nested_model(annotation)
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
