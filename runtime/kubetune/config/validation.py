"""`validate_mapping`: screening, the pydantic pass, then the cross-field rules; all problems at once."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import rules
from .problems import ConfigProblem, join, locate, translate
from .schema import TrainConfig
from .screening import screen

# Stand-ins for required values that are missing or invalid, so the cross-field rules can still run
# on everything else. Problems at these paths were already reported.
_PLACEHOLDERS: dict[str, Any] = {
    "base_model": "placeholder/model",
    "learning_rate": 1e-4,
    "datasets": [{"path": "placeholder", "type": "completion"}],
}
_DATASET_PLACEHOLDERS: dict[str, Any] = {"path": "placeholder", "type": "completion"}


def validate_mapping(mapping: Mapping, *, source_dir: Path | None = None) -> list[ConfigProblem]:
    """Every problem of a config mapping (an empty list when it is valid). Never raises."""
    return check(mapping, source_dir=source_dir)[0]


def check(
    mapping: object, *, source_dir: Path | None = None
) -> tuple[list[ConfigProblem], TrainConfig | None]:
    """(problems, config): the config is returned only when there are no problems."""
    try:
        return _check(mapping, source_dir)
    except Exception as exc:  # noqa: BLE001 - validation reports, it never crashes
        return [
            ConfigProblem(
                "",
                f"internal error while validating: {type(exc).__name__}: {exc}",
                "this is a kubetune bug; please report it with the config",
            )
        ], None


def _check(mapping: object, source_dir: Path | None) -> tuple[list[ConfigProblem], TrainConfig | None]:
    source_dir = Path(source_dir) if source_dir is not None else None
    if not isinstance(mapping, Mapping):
        kind = "empty" if mapping is None else f"a {type(mapping).__name__}"
        return [
            ConfigProblem(
                "",
                f"the config must be a mapping of keys to values; this one is {kind}",
                "write one `key: value` per line at the top level (base_model, datasets, ...)",
            )
        ], None

    problems: list[ConfigProblem] = []
    cleaned = screen(mapping, problems)
    screened = {problem.path for problem in problems}  # reported already: no second problem there
    config: TrainConfig | None = None
    bad_paths: set[str] = set()
    try:
        config = TrainConfig.model_validate(cleaned)
    except ValidationError as error:
        problems.extend(p for p in translate(error, cleaned, model=TrainConfig) if p.path not in screened)
        config, bad_paths = _partial(cleaned, error)

    if config is not None:
        config._source_dir = source_dir
        for problem in rules.run_all(config, source_dir):
            if problem.path not in screened and not _covered(problem.path, bad_paths):
                problems.append(problem)

    problems = _dedupe(problems)
    if problems:
        return problems, None
    return problems, config


def _dedupe(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for problem in problems:
        key = (problem.path, problem.message)
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out


def _covered(path: str, bad_paths: set[str]) -> bool:
    """A rule problem at (or under, or beside within the same entry of) a value already reported."""
    for bad in bad_paths:
        if path == bad or path.startswith(bad + ".") or path.startswith(bad + "["):
            return True
        parent = bad.rpartition(".")[0]
        if parent and (path == parent or path.startswith(parent + ".") or path.startswith(parent + "[")):
            return True
    return False


# -- the partial config the cross-field rules run on ----------------------------------------------


def _partial(cleaned: Mapping, error: ValidationError) -> tuple[TrainConfig | None, set[str]]:
    """Drop every reported value, fill required keys with stand-ins, validate what remains."""
    data = copy.deepcopy(dict(cleaned))
    bad: set[str] = set()
    for _ in range(4):
        for err in error.errors(include_url=False):
            loc = tuple(err.get("loc", ()))
            if err.get("type") == "missing":
                path, _, _ = locate(loc[:-1], data)
                bad.add(join(path, loc[-1]))
                continue
            path, keys, _ = locate(loc, data)
            bad.add(path)
            dropped = _drop(data, keys)
            if dropped:
                bad.add(dropped)
        _fill(data)
        try:
            return TrainConfig.model_validate(data), bad
        except ValidationError as again:
            error = again
    return None, bad


def _drop(data: Any, keys: list[Any]) -> str:
    """Delete the deepest mapping key on the walked path (list items stay, so indices stay); its path."""
    last_key_at = max((i for i, k in enumerate(keys) if not isinstance(k, int)), default=None)
    if last_key_at is None:
        return ""
    container, path = data, ""
    for key in keys[:last_key_at]:
        container, path = container[key], join(path, key)
    if isinstance(container, dict):
        container.pop(keys[last_key_at], None)
    return join(path, keys[last_key_at])


def _fill(data: dict) -> None:
    for key, value in _PLACEHOLDERS.items():
        if key == "datasets" and data.get("pretraining_dataset"):
            continue  # the training data is the stream (a rule refuses both)
        data.setdefault(key, copy.deepcopy(value))
    for list_key in ("datasets", "test_datasets"):
        entries = data.get(list_key)
        if isinstance(entries, list):
            for index, entry in enumerate(entries):
                if isinstance(entry, dict):
                    for key, value in _DATASET_PLACEHOLDERS.items():
                        entry.setdefault(key, value)
                else:
                    entries[index] = dict(_DATASET_PLACEHOLDERS)
