"""Reading configs: YAML (duplicate keys refused, syntax errors with line and column), overlays, overrides."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .problems import ConfigError, ConfigProblem
from .schema import TrainConfig
from .screening import join
from .validation import check

Source = str | os.PathLike | Mapping


def read_yaml(path: str | os.PathLike) -> tuple[Any, list[ConfigProblem]]:
    """(document, problems) of one YAML file; problems cover unreadable files, syntax and duplicate keys."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [ConfigProblem("", f"config file not found: {path}", "check the path")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [ConfigProblem("", f"cannot read {path}: {exc}", "check the file")]
    return parse_yaml(text, name=str(path))


def parse_yaml(text: str, *, name: str = "<config>") -> tuple[Any, list[ConfigProblem]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        return None, [_yaml_problem(exc, name)]
    if node is None:
        return None, []
    problems: list[ConfigProblem] = []
    _find_duplicates(node, "", problems)
    try:
        document = yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 - SafeLoader
    except yaml.YAMLError as exc:
        return None, [*problems, _yaml_problem(exc, name)]
    except (TypeError, ValueError, RecursionError) as exc:
        return None, [
            *problems,
            ConfigProblem("", f"{name}: cannot load the YAML: {exc}", "simplify the document"),
        ]
    return document, problems


def _yaml_problem(exc: yaml.YAMLError, name: str) -> ConfigProblem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    detail = f"{context}, {reason}" if context else reason
    return ConfigProblem("", f"{name}: YAML syntax error{where}: {detail}", "fix the YAML at that position")


def _find_duplicates(node: yaml.Node, path: str, problems: list[ConfigProblem], depth: int = 0) -> None:
    if depth > 100:
        return
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            child = join(path, key) if key is not None else path
            if key is not None:
                line = key_node.start_mark.line + 1
                if key in seen:
                    problems.append(
                        ConfigProblem(
                            child,
                            f"duplicate key '{key}' (lines {seen[key]} and {line}); YAML would keep only the last",
                            "keep one of them",
                        )
                    )
                else:
                    seen[key] = line
            _find_duplicates(value_node, child, problems, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _find_duplicates(item, join(path, index), problems, depth + 1)


def _read_source(source: Source) -> tuple[Any, list[ConfigProblem], Path | None, str | None]:
    """(document, problems, source_dir, name)."""
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source)), [], None, None
    path = Path(source)
    document, problems = read_yaml(path)
    return document, problems, path.resolve().parent, str(path)


def merge(base: Mapping, overlay: Mapping) -> dict:
    """Overlay semantics of the seed configs: each top-level key of the overlay replaces the base's."""
    merged = dict(base)
    merged.update(overlay)
    return merged


def apply_overrides(mapping: dict, overrides: Mapping) -> dict:
    """Overrides replace top-level keys; a dotted key (`fsdp_config.fsdp_version`) sets a nested one."""
    result = copy.deepcopy(mapping)
    for key, value in overrides.items():
        parts = str(key).split(".")
        target = result
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[parts[-1]] = copy.deepcopy(value)
    return result


def compose(
    source: Source, *, overlays: Sequence[Source] = (), overrides: Mapping | None = None
) -> tuple[Any, list[ConfigProblem], Path | None, str | None]:
    """The merged mapping of a base config, its overlays and overrides, with the reading problems."""
    document, problems, source_dir, name = _read_source(source)
    for overlay in overlays:
        layer, layer_problems, _, layer_name = _read_source(overlay)
        problems.extend(_prefixed(layer_problems, layer_name))
        if layer is None:
            continue
        if not isinstance(layer, Mapping):
            problems.append(
                ConfigProblem(
                    "",
                    f"overlay {layer_name or '<mapping>'} is not a mapping",
                    "write the overlay as key: value lines",
                )
            )
            continue
        if isinstance(document, Mapping) or document is None:
            document = merge(document or {}, layer)
    if overrides:
        if isinstance(document, Mapping) or document is None:
            document = apply_overrides(dict(document or {}), overrides)
    return document, problems, source_dir, name


def _prefixed(problems: list[ConfigProblem], name: str | None) -> list[ConfigProblem]:
    if not name:
        return problems
    return [
        p if p.path == "" else ConfigProblem(p.path, f"in overlay {name}: {p.message}", p.fix)
        for p in problems
    ]


def load_config(
    source: Source, *, overlays: Sequence[Source] = (), overrides: Mapping | None = None
) -> TrainConfig:
    """Read, merge and validate a config. Raises ConfigError carrying every problem found."""
    document, problems, source_dir, name = compose(source, overlays=overlays, overrides=overrides)
    if problems and document is None:
        raise ConfigError(problems, source=name)
    found, config = check(document, source_dir=source_dir)
    problems = problems + found
    if problems or config is None:
        raise ConfigError(problems, source=name)
    return config
