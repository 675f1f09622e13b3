"""The one vocabulary for bad input: `ConfigProblem`, `ConfigError`, and pydantic errors put in it.

A `ConfigProblem` names one fault by its key path, says what is wrong and what to write instead; a
`ConfigError` carries every problem at once. The CLI, the runtime (data and training problems) and
the operator (the FineTuneJob spec and its config) all report in it, and `translate` is the one
place where a pydantic `ValidationError` becomes problems, for any model: the training config
(validation.py) as well as the FineTuneJob spec (operator/kubetune_operator/spec.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from .base import IDENTIFIER, nested_model
from .redaction import without_credentials

CONFIG_REFERENCE = "docs/config.md"
# What a string must look like, by the pattern its field declares ({key} names the key).
PATTERN_FIXES = {IDENTIFIER: "{key} must be a Python class name such as AutoModelForCausalLM"}


@dataclass(frozen=True)
class ConfigProblem:
    """One fault in a config.

    path:    where it is, in the config's own key names: ``"datasets[0].type"``,
             ``"fsdp_config.fsdp_version"``; ``""`` for the document as a whole.
    message: what is wrong, naming the value found where that helps.
    fix:     what to write instead.
    """

    path: str
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def under(self, prefix: str) -> ConfigProblem:
        """The same problem in a config that sits at `prefix` (``spec.config``) of a larger document."""
        return replace(self, path=f"{prefix}.{self.path}" if self.path else prefix)

    def __str__(self) -> str:
        where = self.path or "(top level)"
        text = f"{where}: {self.message}"
        if self.fix:
            text += f"\n    fix: {self.fix}"
        return text


def format_report(problems: Iterable[ConfigProblem], *, source: str | None = None) -> str:
    """The one-screen report: a header line, then each problem with its key path and fix."""
    problems = list(problems)
    noun = "problem" if len(problems) == 1 else "problems"
    header = f"{source}: {len(problems)} config {noun}" if source else f"{len(problems)} config {noun}"
    lines = [header]
    for problem in problems:
        lines.extend("  " + line for line in str(problem).splitlines())
    return "\n".join(lines)


class ConfigError(ValueError):
    """Raised by `load_config` with every problem found (never just the first)."""

    def __init__(self, problems: Iterable[ConfigProblem], *, source: str | None = None):
        self.problems: list[ConfigProblem] = list(problems)
        self.source = source
        super().__init__(format_report(self.problems, source=source))


# -- the words of a problem -----------------------------------------------------------------------


def join(path: str, key: object) -> str:
    """`path` extended by a mapping key (``a.b``) or a list index (``a[0]``)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    text = key if isinstance(key, str) else repr(key)
    return f"{path}.{text}" if path else text


def short(value: object, limit: int = 60) -> str:
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


def _normalise(key: str) -> str:
    return key.strip().lower().replace("-", "_").replace(" ", "_")


def suggest(key: str, candidates: Iterable[str]) -> str | None:
    """The candidate `key` was probably meant to be (case, dashes and typos forgiven), if any."""
    candidates = list(candidates)
    norm = _normalise(key)
    if norm in candidates:
        return norm
    matches = difflib.get_close_matches(norm, candidates, n=1, cutoff=0.7)
    return matches[0] if matches else None


def unknown_key(
    path: str, key: str, known: Iterable[str], *, reference: str = f"{CONFIG_REFERENCE} (`kubetune schema`)"
) -> ConfigProblem:
    """`key` under `path` is none of `known`: the nearest known key, or where the allowed keys are listed."""
    where = join(path, key)
    guess = suggest(key, known)
    if guess:
        return ConfigProblem(
            where, f"unknown key '{key}'; did you mean '{guess}'?", f"rename it to '{guess}'"
        )
    where_text = f"in {path}" if path else "at the top level"
    return ConfigProblem(
        where,
        f"unknown key '{key}' {where_text}",
        f"remove it, or see {reference} for the keys kubetune accepts",
    )


# -- pydantic errors -> problems ------------------------------------------------------------------

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


def locate(loc: tuple, data: Any, prefix: str = "") -> tuple[str, list[Any], bool]:
    """(path, the keys walked in the data, whether union tags were skipped) for an error location."""
    path, keys, tagged, current = prefix, [], False, data
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


def translate(
    error: ValidationError,
    data: Mapping,
    *,
    model: type[BaseModel],
    prefix: str = "",
    reference: str = CONFIG_REFERENCE,
    pattern_fixes: Mapping[str, str] | None = None,
) -> list[ConfigProblem]:
    """One problem per faulty key of `data` (validated as `model`), its path starting at `prefix`.

    Several errors at one key (each alternative of a union failing) become one problem; `reference`
    is the document a fix points to when there is nothing more precise to say; `pattern_fixes` adds
    fixes for the string patterns of `model` to PATTERN_FIXES.
    """
    words = _Words(model, reference, {**PATTERN_FIXES, **(pattern_fixes or {})})
    groups: dict[str, list[ErrorDetails]] = {}
    tagged_paths: set[str] = set()
    for err in error.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "missing" and loc:
            path, _, _ = locate(loc[:-1], data, prefix)
            path = join(path, loc[-1])
        else:
            path, _, tagged = locate(loc, data, prefix)
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
        problems.append(_problem(path, errs, words))
    return problems


@dataclass(frozen=True)
class _Words:
    """What `translate` knows beyond the error: the model validated, where its keys are described."""

    model: type[BaseModel]
    reference: str
    pattern_fixes: Mapping[str, str]


def _problem(path: str, errs: list[ErrorDetails], words: _Words) -> ConfigProblem:
    custom = [e for e in errs if (e.get("ctx") or {}).get("fix")]
    first = custom[0] if custom else errs[0]
    kind = first.get("type", "")
    ctx = first.get("ctx") or {}
    value = first.get("input")
    if isinstance(value, str) and "://" in value:  # a URI may carry a credential: never echo it
        value = without_credentials(value)
    key = path.rpartition(".")[2].split("[")[0] or path
    holder, field = _schema_at(words.model, tuple(first.get("loc", ())))

    if kind == "missing":
        description = field.description.split(". ")[0].rstrip(".") if field and field.description else ""
        return ConfigProblem(
            path,
            "required key is missing",
            f"add `{key}: ...`" + (f" ({description})" if description else ""),
        )
    extra = (first.get("loc") or ("",))[-1]
    if kind == "extra_forbidden" and holder is not None and isinstance(extra, str):
        parent = path.removesuffix(extra).removesuffix(".")  # not split at dots: the key may hold one
        return unknown_key(parent, extra, holder.model_fields, reference=words.reference)
    if not custom and len(errs) > 1:
        nouns = list(dict.fromkeys(_NOUNS[e["type"]] for e in errs if e.get("type") in _NOUNS))
        if nouns:
            expected = " or ".join(nouns)
            return ConfigProblem(
                path, f"expected {expected}, got {short(value)}", f"write {key} as {expected}"
            )
    message = _message(first)
    # The value found, when it is one (a whole section's mapping would only repeat the user's YAML).
    if not isinstance(value, (Mapping, list)) and short(value) not in message:
        message += f": {short(value)}" if " got " in message else f", got {short(value)}"
    return ConfigProblem(
        path, message, ctx.get("fix") or _fix(first, key, path.rpartition(".")[2] or path, words)
    )


def _schema_at(model: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """(the model holding the last key of an error location, that key's field, None when it has none)."""
    current: type[BaseModel] | None = model
    holder: type[BaseModel] | None = None
    field: FieldInfo | None = None
    for item in loc:
        if isinstance(item, int):
            continue  # a list index: the items are of the model already found
        if current is None:
            return None, None
        found = current.model_fields.get(item)
        holder, field = current, found
        if found is not None:  # otherwise a union tag (or an unknown key): stay on this model
            nested = nested_model(found.annotation)
            current = nested[0] if nested else None
    return holder, field


def _message(err: ErrorDetails) -> str:
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg[0].lower() + msg[1:] if msg[:2] != msg[:2].upper() else msg


_BOUNDS = {
    "greater_than": ("gt", "a value greater than {}"),
    "greater_than_equal": ("ge", "a value of at least {}"),
    "less_than": ("lt", "a value less than {}"),
    "less_than_equal": ("le", "a value of at most {}"),
}


def _fix(err: ErrorDetails, key: str, segment: str, words: _Words) -> str:
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
    if kind in _BOUNDS:
        name, text = _BOUNDS[kind]
        return "use " + text.format(ctx.get(name))
    if kind == "too_short":
        return f"give {key} at least one entry"
    if kind == "string_too_short":
        return f"give {key} a non-empty value"
    if kind == "finite_number":
        return "use a finite number"
    if kind == "string_pattern_mismatch" and str(ctx.get("pattern")) in words.pattern_fixes:
        return words.pattern_fixes[str(ctx.get("pattern"))].format(key=key)
    if kind == "list_type":
        return f"write {segment} as a list, one `- ` item per entry"
    noun = _NOUNS.get(kind)
    if noun:
        return f"write {segment} as {noun}"
    return f"see the description of {key} in {words.reference}"
