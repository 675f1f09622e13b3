"""Reading configs: YAML (duplicate keys refused, syntax errors with line and column), overlays, overrides.

Every document is bounded before anything walks it (the CLI, the webhook and the operator all read
configs through here): a few hundred bytes of YAML aliases can otherwise expand to gigabytes, and
deep nesting ends in a RecursionError. The bounds are far above any real training config.
"""

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

# A ConfigMap holds at most 1 MiB; no training config comes near it.
MAX_DOCUMENT_BYTES = 1 << 20
# Levels of nested mappings/lists (a DeepSpeed config is about 4 deep).
MAX_DEPTH = 64
# Keys, values, lists and mappings of the document with every alias expanded (the seed configs have
# a few hundred): what a consumer that copies or serialises the document will have to walk.
MAX_NODES = 10_000
# YAML aliases (`*name`): configs rarely use a handful; an alias bomb needs many.
MAX_ALIASES = 100

_SIMPLIFY = "write the config out plainly (no deep nesting, few or no YAML anchors and aliases)"


class _TooBig(Exception):
    """A document over one of the bounds: raised mid-walk, carried out as one ConfigProblem."""

    def __init__(self, path: str, message: str, fix: str = _SIMPLIFY):
        super().__init__(message)
        self.problem = ConfigProblem(path, message, fix)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing (while composing) documents nested too deep or with too many aliases.

    PyYAML composes recursively, so the depth must be counted here, before Python's own limit is hit.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self._path: list[str] = [""]
        self._aliases = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise _TooBig(
                    self._path[-1],
                    f"more than {MAX_ALIASES} YAML aliases (line {mark.line + 1})",
                )
        if parent is None or index is None:  # the document, or a mapping's key
            child = self._path[-1]
        elif isinstance(index, yaml.ScalarNode):
            child = join(self._path[-1], index.value)
        else:
            child = join(self._path[-1], index)
        if len(self._path) > MAX_DEPTH:
            raise _TooBig(child, f"nested deeper than {MAX_DEPTH} levels")
        self._nodes += 1  # counted as composed, so a huge document stops here, not after
        if self._nodes > MAX_NODES:
            raise _TooBig(child, f"more than {MAX_NODES} keys and values")
        self._path.append(child)
        try:
            return super().compose_node(parent, index)
        finally:
            self._path.pop()


def _children(node: Any) -> list[tuple[Any, Any]]:
    """(label, child) pairs of a YAML node or a plain Python value; labels make key paths."""
    if isinstance(node, yaml.MappingNode):
        pairs: list[tuple[Any, Any]] = []
        for key, value in node.value:
            label = key.value if isinstance(key, yaml.ScalarNode) else None
            pairs += [(None, key), (label, value)]
        return pairs
    if isinstance(node, yaml.SequenceNode):
        return list(enumerate(node.value))
    if isinstance(node, Mapping):
        return [(None, key) for key in node] + [(key, value) for key, value in node.items()]
    if isinstance(node, (list, tuple)):
        return list(enumerate(node))
    return []


def _expanded_size(node: Any, path: str, depth: int, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes under `node` with every alias expanded, memoised per shared node (so a bomb costs its size
    in the source, not its expansion); raises _TooBig past MAX_DEPTH, MAX_NODES or on a cycle."""
    if depth > MAX_DEPTH:
        raise _TooBig(path, f"nested deeper than {MAX_DEPTH} levels (aliases expanded)")
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise _TooBig(path, "a YAML alias refers to a node that contains it (the document is infinite)")
    open_.add(key)
    size = 1
    for label, child in _children(node):
        size += _expanded_size(child, path if label is None else join(path, label), depth + 1, sizes, open_)
        if size > MAX_NODES:
            aliases = " (with YAML aliases expanded)" if isinstance(node, yaml.Node) else ""
            raise _TooBig(path, f"more than {MAX_NODES} keys and values{aliases}")
    open_.discard(key)
    sizes[key] = size
    return size


def bound_problems(document: Any) -> list[ConfigProblem]:
    """The bounds (depth, expanded size, no cycles) of a config given as Python values: [] when within them.

    For configs that did not come through `parse_yaml` (an inline spec.config, a mapping passed in code).
    """
    try:
        _expanded_size(document, "", 0, {}, set())
    except _TooBig as too_big:
        return [too_big.problem]
    return []


def read_yaml(path: str | os.PathLike) -> tuple[Any, list[ConfigProblem]]:
    """(document, problems) of one YAML file; problems cover unreadable files, syntax and duplicate keys."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            return None, [_size_problem(size, str(path))]
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [ConfigProblem("", f"config file not found: {path}", "check the path")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [ConfigProblem("", f"cannot read {path}: {exc}", "check the file")]
    return parse_yaml(text, name=str(path))


def parse_yaml(text: str, *, name: str = "<config>") -> tuple[Any, list[ConfigProblem]]:
    """(document, problems) of YAML text: syntax errors, duplicate keys and the bounds above."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_DOCUMENT_BYTES:
        return None, [_size_problem(size, name)]
    loader = None
    try:
        loader = _BoundedLoader(text)  # its reader refuses control characters at once
        node = loader.get_single_node()
        if node is None:
            return None, []
        _expanded_size(node, "", 0, {}, set())
        problems: list[ConfigProblem] = []
        _find_duplicates(node, "", problems, set())
        document = loader.construct_document(node)
    except _TooBig as too_big:
        return None, [too_big.problem]
    except yaml.YAMLError as exc:
        return None, [_yaml_problem(exc, name)]
    except (TypeError, ValueError, RecursionError) as exc:
        return None, [ConfigProblem("", f"{name}: cannot load the YAML: {exc}", "simplify the document")]
    finally:
        if loader is not None:
            loader.dispose()
    return document, problems


def _size_problem(size: int, name: str) -> ConfigProblem:
    return ConfigProblem(
        "",
        f"{name} is {size} bytes; a config may have at most {MAX_DOCUMENT_BYTES} (1 MiB)",
        "keep data out of the config: point datasets at files instead of inlining them",
    )


def _yaml_problem(exc: yaml.YAMLError, name: str) -> ConfigProblem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    detail = f"{context}, {reason}" if context else reason
    return ConfigProblem("", f"{name}: YAML syntax error{where}: {detail}", "fix the YAML at that position")


def _find_duplicates(node: yaml.Node, path: str, problems: list[ConfigProblem], seen_nodes: set[int]) -> None:
    # Each node once: an aliased node is the same object wherever it is used (and the bounds
    # check before this one has refused cycles and deep documents).
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
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
            _find_duplicates(value_node, child, problems, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _find_duplicates(item, join(path, index), problems, seen_nodes)


def _read_source(source: Source) -> tuple[Any, list[ConfigProblem], Path | None, str | None]:
    """(document, problems, source_dir, name)."""
    if isinstance(source, Mapping):
        problems = bound_problems(source)
        if problems:
            return None, problems, None, None
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
