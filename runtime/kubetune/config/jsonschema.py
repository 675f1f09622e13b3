"""The JSON schema of TrainConfig, shaped for Kubernetes structural schemas (inlined, no null branches)."""

from __future__ import annotations

import copy
from typing import Any

from .schema import TrainConfig


def training_config_json_schema() -> dict[str, Any]:
    """TrainConfig's JSON schema with every `$ref` inlined and `anyOf [X, null]` collapsed to X.

    A null value means "not set" in a config, so dropping the null branches loses nothing; `const`
    becomes a one-item `enum`. What remains are plain `type`/`properties`/`items`/`enum` nodes, except
    where a key truly takes two shapes
    (`bf16: true|auto`, `deepspeed: path|mapping`, `lora_target_modules: name|list`): those stay `anyOf`.
    """
    schema = TrainConfig.model_json_schema(mode="validation")
    defs = schema.pop("$defs", {})
    return _simplify(_inline(schema, defs, ()))


def _inline(node: Any, defs: dict[str, Any], stack: tuple[str, ...]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.rsplit("/", 1)[1]
            if name in stack:  # recursion: not in this schema, but never loop
                return {"type": "object"}
            merged = copy.deepcopy(defs[name])
            merged.update({k: v for k, v in node.items() if k != "$ref"})
            return _inline(merged, defs, (*stack, name))
        return {key: _inline(value, defs, stack) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, defs, stack) for item in node]
    return node


def _simplify(node: Any) -> Any:
    if isinstance(node, list):
        return [_simplify(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _simplify(value) for key, value in node.items()}
    if "const" in node:  # a one-value Literal: Kubernetes schemas know enum, not const
        node["enum"] = [node.pop("const")]
    branches = node.get("anyOf")
    if isinstance(branches, list):
        kept = [b for b in branches if b != {"type": "null"}]
        if len(kept) == 1:
            node.pop("anyOf")
            inner = kept[0]
            node = {**inner, **node}
        elif len(kept) != len(branches):
            node["anyOf"] = kept
    if node.get("default", 0) is None:
        node.pop("default")
    return node
