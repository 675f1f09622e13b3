"""FSDP and DeepSpeed in one place: Axolotl's spellings folded into one form, the cross-field rules,
and the resolved values the engine reads (kubetune.train.distributed keeps only what needs CUDA or an
installed package). The keys themselves are declared in parallel.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .deepspeed_presets import PRESET_FOLDER, preset_for, preset_names, resolve_deepspeed_path
from .parallel import FSDP_SHARDING_STRATEGIES, FsdpConfig
from .problems import ConfigProblem, short
from .schema import TrainConfig

# -- resolved values (what the engine builds FSDP from) ----------------------------------------------


def fsdp_version(cfg: TrainConfig) -> int:
    """FSDP's implementation, 1 or 2: fsdp_config's, else FsdpConfig's default."""
    return (cfg.fsdp_config or FsdpConfig()).fsdp_version


def sharding_strategy(cfg: TrainConfig) -> str:
    """The sharding strategy the `fsdp` list names (the rules allow one), default full_shard."""
    listed = [option for option in cfg.fsdp or () if option in FSDP_SHARDING_STRATEGIES]
    return listed[0] if listed else "full_shard"


# -- spellings (the screening step calls normalise_fsdp before validation) ---------------------------

# The top-level key and the fsdp_config keys that are Axolotl's other spellings of FSDP settings: the
# screening step passes them through, and normalise_fsdp folds them into the `fsdp` list / `fsdp_config`.
TOP_LEVEL_ALIASES = frozenset({"fsdp_version"})
FSDP_CONFIG_ALIASES = frozenset({"fsdp_sharding_strategy"})
_STRATEGIES = {"FULL_SHARD": "full_shard", "SHARD_GRAD_OP": "shard_grad_op", "HYBRID_SHARD": "hybrid_shard",
               "NO_SHARD": "no_shard", 1: "full_shard", 2: "shard_grad_op", 3: "no_shard", 4: "hybrid_shard"}  # fmt: skip


def normalise_fsdp(out: dict[str, Any], problems: list[ConfigProblem]) -> None:
    """Axolotl's newer FSDP spellings, in kubetune's one form (as Axolotl itself folds them).

    - `fsdp: "full_shard auto_wrap"` (transformers' string form) -> a list;
    - top-level `fsdp_version` -> `fsdp_config.fsdp_version`;
    - `fsdp_config.(fsdp_)sharding_strategy: FULL_SHARD` -> the strategy in the `fsdp` list;
    - `fsdp_config` without an `fsdp` list enables FSDP (as in Axolotl): the list becomes
      [<strategy, default full_shard>, auto_wrap] plus offload when fsdp_offload_params is true.
    """
    if isinstance(out.get("fsdp"), str):  # transformers' spelling: "full_shard auto_wrap"
        out["fsdp"] = out["fsdp"].split() or None
        if out["fsdp"] is None:
            del out["fsdp"]
    fsdp_config = out.get("fsdp_config")
    version = out.pop("fsdp_version", None)
    if version is not None:
        if fsdp_config is None and out.get("fsdp") is None:
            problems.append(
                ConfigProblem(
                    "fsdp_version",
                    "fsdp_version is set but FSDP is not enabled",
                    "add `fsdp: [full_shard, auto_wrap]` (or an fsdp_config), or remove fsdp_version",
                )
            )
            return
        if fsdp_config is None:
            fsdp_config = out["fsdp_config"] = {}
        if isinstance(fsdp_config, dict):
            inner = fsdp_config.get("fsdp_version")
            if inner is not None and inner != version:
                problems.append(
                    ConfigProblem(
                        "fsdp_version",
                        f"fsdp_version ({short(version)}) and fsdp_config.fsdp_version ({short(inner)}) disagree",
                        "keep one of them",
                    )
                )
            else:
                fsdp_config["fsdp_version"] = version
    if not isinstance(fsdp_config, dict):
        return
    enables = bool(fsdp_config)  # a non-empty fsdp_config turns FSDP on, as in Axolotl
    strategy = None
    raw = fsdp_config.pop("fsdp_sharding_strategy", None)
    if raw is not None:
        key = raw.upper() if isinstance(raw, str) else raw
        strategy = _STRATEGIES.get(key) if not isinstance(key, bool) else None
        if strategy is None:
            problems.append(
                ConfigProblem(
                    "fsdp_config.fsdp_sharding_strategy",
                    f"unknown sharding strategy {short(raw)}",
                    "use FULL_SHARD, SHARD_GRAD_OP, HYBRID_SHARD or NO_SHARD (or put full_shard, ... in the fsdp list)",
                )
            )
    fsdp = out.get("fsdp")
    if fsdp is None:
        if not enables:
            return
        derived = [strategy or "full_shard", "auto_wrap"]
        if fsdp_config.get("fsdp_offload_params") is True:
            derived.append("offload")
        out["fsdp"] = derived
    elif strategy is not None and isinstance(fsdp, list):
        listed = [o for o in fsdp if o in FSDP_SHARDING_STRATEGIES]
        if not listed:
            out["fsdp"] = [strategy, *fsdp]
        elif strategy not in listed:
            problems.append(
                ConfigProblem(
                    "fsdp_config.fsdp_sharding_strategy",
                    f"fsdp_sharding_strategy {short(raw)} contradicts {listed[0]} in the fsdp list",
                    "keep the strategy in one place (the fsdp list)",
                )
            )


# -- rules (run by rules.distributed on the validated config) ------------------------------------


def sharding_problems(cfg: TrainConfig, source_dir: Path | None) -> Iterator[ConfigProblem]:
    """FSDP's and DeepSpeed's cross-field rules (rules.distributed runs them among the mesh's)."""
    if cfg.fsdp and cfg.deepspeed is not None:
        yield ConfigProblem(
            "deepspeed",
            "fsdp and deepspeed are both configured; a job uses one of them",
            "keep only fsdp or deepspeed",
        )
    if cfg.fsdp_config is not None and cfg.fsdp_config.model_fields_set and not cfg.fsdp:
        yield ConfigProblem(
            "fsdp_config",
            "fsdp_config is set but FSDP is not enabled",
            "add `fsdp: [full_shard, auto_wrap]`, or remove fsdp_config",
        )
    if cfg.fsdp:
        yield from _fsdp(cfg)
    if cfg.load_in_8bit and (cfg.fsdp or cfg.deepspeed is not None):
        yield ConfigProblem(
            "load_in_8bit",
            "8-bit base weights cannot be sharded by FSDP or DeepSpeed",
            "use `load_in_4bit: true` with `adapter: qlora`, or drop the sharding",
        )
    if isinstance(cfg.deepspeed, str):
        yield from _deepspeed_file(cfg.deepspeed, source_dir)
    elif cfg.deepspeed is not None:
        yield from _deepspeed_sections(cfg.deepspeed)


def _fsdp(cfg: TrainConfig) -> Iterator[ConfigProblem]:
    options = list(cfg.fsdp or [])
    strategies = [o for o in options if o in FSDP_SHARDING_STRATEGIES]
    if len(strategies) > 1:
        yield ConfigProblem(
            "fsdp",
            f"fsdp names {len(strategies)} sharding strategies ({', '.join(strategies)})",
            "keep one of them",
        )
    duplicates = sorted({o for o in options if options.count(o) > 1})
    if duplicates:
        yield ConfigProblem(
            "fsdp", f"fsdp lists {', '.join(duplicates)} more than once", "list each option once"
        )
    fc = cfg.fsdp_config
    if fc is None:
        return
    if "offload" in options and fc.fsdp_offload_params is False:
        yield ConfigProblem(
            "fsdp_config.fsdp_offload_params",
            "fsdp lists offload but fsdp_config.fsdp_offload_params is false",
            "remove offload from fsdp, or set fsdp_offload_params: true",
        )
    if fc.fsdp_activation_checkpointing and cfg.gradient_checkpointing:
        # Both true (and non-reentrant) are folded into FSDP's checkpointing by ParallelKeys.
        yield ConfigProblem(
            "gradient_checkpointing",
            "gradient_checkpointing with use_reentrant: true disagrees with fsdp_activation_checkpointing "
            "(FSDP checkpoints non-reentrantly)",
            "keep only one of them",
        )
    size_based = fc.fsdp_auto_wrap_policy == "SIZE_BASED_WRAP"
    if size_based and fc.fsdp_min_num_params is None:
        yield ConfigProblem(
            "fsdp_config.fsdp_min_num_params",
            "fsdp_auto_wrap_policy SIZE_BASED_WRAP needs fsdp_min_num_params",
            "add `fsdp_min_num_params: 100000000` (or use TRANSFORMER_BASED_WRAP)",
        )
    if not size_based and fc.fsdp_min_num_params is not None:
        yield ConfigProblem(
            "fsdp_config.fsdp_min_num_params",
            "fsdp_min_num_params applies to SIZE_BASED_WRAP only",
            "remove it, or set `fsdp_auto_wrap_policy: SIZE_BASED_WRAP`",
        )
    if size_based and fc.fsdp_transformer_layer_cls_to_wrap:
        yield ConfigProblem(
            "fsdp_config.fsdp_transformer_layer_cls_to_wrap",
            "fsdp_transformer_layer_cls_to_wrap applies to TRANSFORMER_BASED_WRAP, not SIZE_BASED_WRAP",
            "remove one of the two",
        )
    if (fc.fsdp_transformer_layer_cls_to_wrap or fc.fsdp_auto_wrap_policy) and "auto_wrap" not in options:
        key = (
            "fsdp_transformer_layer_cls_to_wrap"
            if fc.fsdp_transformer_layer_cls_to_wrap
            else "fsdp_auto_wrap_policy"
        )
        yield ConfigProblem(
            f"fsdp_config.{key}", f"{key} needs auto_wrap in the fsdp list", "add auto_wrap to fsdp"
        )
    version_only = {1: ("fsdp_use_orig_params", "fsdp_backward_prefetch"), 2: ("fsdp_reshard_after_forward",)}
    for version, keys in version_only.items():
        if fc.fsdp_version != version:
            for key in keys:
                if key in fc.model_fields_set:
                    yield ConfigProblem(
                        f"fsdp_config.{key}",
                        f"{key} is an FSDP{version} option, but fsdp_version is {fc.fsdp_version}",
                        f"remove it, or set `fsdp_version: {version}`",
                    )
    if fc.fsdp_version == 2:
        others = [s for s in strategies if s != "full_shard"]
        if others:
            yield ConfigProblem(
                "fsdp",
                f"fsdp_version 2 shards fully (resharding is fsdp_reshard_after_forward); {others[0]} is FSDP1 only",
                "use full_shard (with fsdp_reshard_after_forward: false for shard_grad_op behaviour)",
            )


def _deepspeed_file(value: str, source_dir: Path | None) -> Iterator[ConfigProblem]:
    if source_dir is None and not Path(value).expanduser().is_absolute() and preset_for(value) is None:
        return  # a mapping without a file: nothing to resolve against
    path = resolve_deepspeed_path(value, source_dir)
    if not path.is_file():
        presets = ", ".join(f"{PRESET_FOLDER}/{name}.json" for name in preset_names())
        yield ConfigProblem(
            "deepspeed",
            f"the DeepSpeed config file does not exist: {path}",
            "give the path of a DeepSpeed JSON file (relative to the config's directory), inline the JSON "
            f"as a mapping, or name one of kubetune's presets: {presets}",
        )
        return
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        yield ConfigProblem(
            "deepspeed", f"the DeepSpeed config {path} is not valid JSON: {exc}", "fix the file"
        )
        return
    if not isinstance(content, dict):
        yield ConfigProblem("deepspeed", f"the DeepSpeed config {path} is not a JSON object", "fix the file")
        return
    yield from _deepspeed_sections(content)


def _deepspeed_sections(content: Mapping[str, Any]) -> Iterator[ConfigProblem]:
    for owned in ("optimizer", "scheduler"):
        if owned in content:
            yield ConfigProblem(
                "deepspeed",
                f"the DeepSpeed config defines its own {owned}; kubetune builds it from the config "
                "(`optimizer`, `lr_scheduler`)",
                f"remove the `{owned}` section from the DeepSpeed config",
            )
