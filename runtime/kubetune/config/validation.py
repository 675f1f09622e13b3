"""`validate_mapping`: screening, the pydantic pass, then the cross-field rules; all problems at once."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from . import rules
from .problems import ConfigProblem
from .redaction import without_credentials
from .schema import TrainConfig
from .screening import _short, join, screen, suggest

# Stand-ins for required values that are missing or invalid, so the cross-field rules can still run
# on everything else. Problems at these paths were already reported.
_PLACEHOLDERS: dict[str, Any] = {
    "base_model": "placeholder/model",
    "learning_rate": 1e-4,
    "datasets": [{"path": "placeholder", "type": "completion"}],
}
_DATASET_PLACEHOLDERS: dict[str, Any] = {"path": "placeholder", "type": "completion"}

_NOUNS = {
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "literal_error": "one of the listed values",
}


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
        problems.extend(p for p in translate(error, cleaned) if p.path not in screened)
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


# -- pydantic errors -> problems ------------------------------------------------------------------


def _walk(loc: tuple, data: Any) -> tuple[str, list[Any], bool]:
    """(path, the keys walked in the data, whether union tags were skipped) for an error location."""
    path, keys, tagged, current = "", [], False, data
    for item in loc:
        if isinstance(current, Mapping) and not isinstance(item, int) and item in current:
            path, current = join(path, item), current[item]
            keys.append(item)
        elif isinstance(current, list) and isinstance(item, int) and 0 <= item < len(current):
            path, current = join(path, item), current[item]
            keys.append(item)
        else:
            tagged = True
    return path, keys, tagged


def translate(error: ValidationError, data: Mapping) -> list[ConfigProblem]:
    groups: dict[str, list[ErrorDetails]] = {}
    tagged_paths: set[str] = set()
    for err in error.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "missing" and loc:
            path, _, _ = _walk(loc[:-1], data)
            path = join(path, loc[-1])
        else:
            path, _, tagged = _walk(loc, data)
            if tagged:
                tagged_paths.add(path)
        groups.setdefault(path, []).append(err)

    problems = []
    for path, errs in groups.items():
        # A union alternative that failed as a whole, when a more precise error exists deeper down.
        if path in tagged_paths and any(
            other != path and (other.startswith(path + ".") or other.startswith(path + "["))
            for other in groups
        ):
            errs = [e for e in errs if not e.get("type", "").endswith("_type")]
            if not errs:
                continue
        problems.append(_problem(path, errs))
    return problems


def _problem(path: str, errs: list[ErrorDetails]) -> ConfigProblem:
    custom = [e for e in errs if (e.get("ctx") or {}).get("fix")]
    first = custom[0] if custom else errs[0]
    kind = first.get("type", "")
    ctx = first.get("ctx") or {}
    value = first.get("input")
    if isinstance(value, str) and "://" in value:  # a URI may carry a credential: never echo it
        value = without_credentials(value)
    key = path.rpartition(".")[2].split("[")[0] or path

    if kind == "missing":
        description = _description(path)
        return ConfigProblem(
            path,
            "required key is missing",
            f"add `{key}: ...`" + (f" ({description})" if description else ""),
        )
    if not custom and len(errs) > 1:
        nouns = list(dict.fromkeys(_NOUNS[e["type"]] for e in errs if e.get("type") in _NOUNS))
        if nouns:
            expected = " or ".join(nouns)
            return ConfigProblem(
                path, f"expected {expected}, got {_short(value)}", f"write {key} as {expected}"
            )
    message = _message(first)
    if _short(value) not in message:
        message += f": {_short(value)}" if " got " in message else f", got {_short(value)}"
    return ConfigProblem(path, message, ctx.get("fix") or _fix(first, key, path.rpartition(".")[2] or path))


def _message(err: ErrorDetails) -> str:
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg[0].lower() + msg[1:] if msg[:2] != msg[:2].upper() else msg


def _fix(err: ErrorDetails, key: str, segment: str) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        options = [o.strip().strip("'") for o in expected.replace(" or ", ", ").split(",") if o.strip()]
        value = err.get("input")
        guess = suggest(value, options) if isinstance(value, str) else None
        if guess:
            return f"did you mean '{guess}'? ({key}: {guess})"
        return f"use one of: {', '.join(options)}"
    bounds = {
        "greater_than": ("gt", "a value greater than {}"),
        "greater_than_equal": ("ge", "a value of at least {}"),
        "less_than": ("lt", "a value less than {}"),
        "less_than_equal": ("le", "a value of at most {}"),
    }
    if kind in bounds:
        name, text = bounds[kind]
        return "use " + text.format(ctx.get(name))
    if kind == "too_short":
        return f"give {key} at least one entry"
    if kind == "string_too_short":
        return f"give {key} a non-empty value"
    if kind == "finite_number":
        return "use a finite number"
    if kind == "string_pattern_mismatch":
        return f"{key} must be a Python class name such as AutoModelForCausalLM"
    if kind == "list_type":
        return f"write {segment} as a list, one `- ` item per entry"
    noun = _NOUNS.get(kind)
    if noun:
        return f"write {segment} as {noun}"
    return f"see the description of {key} in docs/config.md"


def _description(path: str) -> str:
    from .datasets import DatasetConfig

    key = path.rpartition(".")[2]
    model = DatasetConfig if "[" in path.rpartition(".")[0] else TrainConfig
    field = model.model_fields.get(key)
    if field is None or not field.description:
        return ""
    return field.description.split(". ")[0].rstrip(".")


# -- the partial config the cross-field rules run on ----------------------------------------------


def _partial(cleaned: Mapping, error: ValidationError) -> tuple[TrainConfig | None, set[str]]:
    """Drop every reported value, fill required keys with stand-ins, validate what remains."""
    data = copy.deepcopy(dict(cleaned))
    bad: set[str] = set()
    for _ in range(4):
        for err in error.errors(include_url=False):
            loc = tuple(err.get("loc", ()))
            if err.get("type") == "missing":
                path, _, _ = _walk(loc[:-1], data)
                bad.add(join(path, loc[-1]))
                continue
            path, keys, _ = _walk(loc, data)
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
