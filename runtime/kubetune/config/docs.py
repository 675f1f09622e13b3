"""docs/config.md, generated from the field descriptions (`python scripts/generate.py`)."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from . import compat
from .adapter import LoftQ, Mxfp4Kwargs, PeftOptions
from .datasets import DatasetConfig
from .hardware import FlexCompileKwargs
from .model import SpecialTokens
from .parallel import FsdpConfig
from .preference import TrlConfig
from .qat import QATBlock, scheme_names
from .schema import SECTIONS, TrainConfig
from .training import GradientCheckpointingKwargs

_NESTED_ANCHORS = {
    DatasetConfig: "dataset-entries",
    FsdpConfig: "fsdp_config",
    SpecialTokens: "special_tokens",
    GradientCheckpointingKwargs: "gradient_checkpointing_kwargs",
    PeftOptions: "peft",
    LoftQ: "peftloftq_config",
    Mxfp4Kwargs: "model_quantization_config_kwargs",
    FlexCompileKwargs: "flex_attn_compile_kwargs",
    QATBlock: "qat",
    TrlConfig: "trl",
}

RULES_TEXT = """\
- `adapter: qlora` needs `load_in_4bit: true`; `adapter: lora` with `load_in_4bit: true` should be `qlora`.
- `load_in_4bit` and `load_in_8bit` exclude each other; either needs an adapter; `bnb_4bit_*` keys need `load_in_4bit`.
  Axolotl's `bnb_config_kwargs: {bnb_4bit_use_double_quant, bnb_4bit_quant_type, bnb_4bit_compute_dtype}` are
  read as those keys (other arguments refused).
- `model_quantization_config: Mxfp4Config` needs `model_quantization_config_kwargs: {dequantize: true}` and
  no `load_in_4bit` / `load_in_8bit`; the kwargs need the config.
- `quantize_moe_experts` needs an adapter with `load_in_4bit` or `load_in_8bit`, and is refused with FSDP1, DeepSpeed,
  `tensor_parallel_size` > 1, `fsdp_cpu_ram_efficient_loading` and `lora_target_parameters`; on a machine
  without CUDA the run stops at start.
- `lora_*` / `peft_*` keys and `peft` set (to a non-default value) without an `adapter` are refused;
  `peft.loftq_config` needs `adapter: lora` (no 4/8-bit base) and no `lora_model_dir`.
- With an adapter, `lora_target_modules` or `lora_target_linear` is required (unless `lora_model_dir` is given).
- `tokens` with an adapter needs `lora_modules_to_save` (the embedding and output layers).
- `bf16: true` and `fp16: true` exclude each other; so do `flash_attention`, `sdp_attention` and
  `xformers_attention`, and
  `attn_implementation` must agree with them.
- `sample_packing` / `pad_to_sequence_len` need `sequence_len` set explicitly; `group_by_length` is refused
  with either (every row is `sequence_len` wide).
- `test_datasets` and `val_set_size` > 0 exclude each other.
- `chat_template: jinja` needs `chat_template_jinja`; `chat_template_jinja` with another named template is refused
  (top level and per dataset).
- `tokenizer_use_mistral_common: true` refuses `chat_template`, `chat_template_jinja` (top level and per dataset),
  `special_tokens`, `tokens`, `eot_tokens`, `tokenizer_type`, `tokenizer_legacy`, `rl` and `roles_to_train`
  other than `assistant` (mistral-common encodes the turns itself, with a fixed vocabulary).
- A dataset entry may only set the keys of its `type` (custom `module.ClassName` formats may set any);
  `roles_to_train` must name roles of the dataset.
- `num_epochs` or `max_steps` is required (both: training stops at whichever comes first).
- `warmup_steps` / `warmup_ratio`, `save_steps` / `saves_per_epoch`, `eval_steps` / `evals_per_epoch`: one of each pair.
- `cosine_min_lr_ratio`, `eta_min` (one of the two), `cosine_constant_lr_ratio` (needs a floor) and
  `lr_quadratic_warmup` (not with a floor) need `lr_scheduler: cosine`; Adam settings with `optimizer: sgd` are refused.
- `constant`, `reduce_lr_on_plateau` and `greedy` have no warmup (`warmup_steps` / `warmup_ratio` refused);
  `lr_scheduler_kwargs` may only name the chosen schedule's arguments (`warmup_stable_decay` needs
  `num_decay_steps`, `cosine_with_min_lr` / `cosine_warmup_with_min_lr` one of `min_lr` / `min_lr_rate`);
  `reduce_lr_on_plateau`, `greedy` and `eval_strategy: steps|epoch` need evaluation data.
- `save_strategy` / `eval_strategy` exclude the interval keys they contradict; `loss_watchdog_patience` needs
  `loss_watchdog_threshold`; `batch_size` must equal `micro_batch_size` x `gradient_accumulation_steps`.
- `optimizer: muon` and `ddp_find_unused_parameters: true` are refused with FSDP or DeepSpeed. Under FSDP2
  the bitsandbytes optimizers are served by torchao's 8-bit AdamW (`adamw_bnb_8bit`, `adamw_8bit`,
  `paged_adamw_8bit`) and torch's AdamW (`paged_adamw_32bit`): bitsandbytes' states cannot hold FSDP2's
  sharded parameters; the log names the implementation.
- The fused-loss keys (`liger_fused_linear_cross_entropy`, `liger_cross_entropy`, `cut_cross_entropy`, the
  CutCrossEntropyPlugin), the SwiGLU keys (`liger_glu_activation`, `flash_attn_fuse_mlp`) and the RMSNorm keys
  (`liger_rms_norm`, `flash_attn_rms_norm`) must agree.
- `qat` runs the schemes int8/int4, none/int4, mxfp4/mxfp4 (group_size 32) and nvfp4/nvfp4 (group_size 16);
  `fake_quant_after_n_steps` the int4 ones only. Refused beside it: `adapter`, `load_in_4bit` / `load_in_8bit`,
  `deepspeed`, `torch_compile`, `rl`, `tensor_parallel_size` / `context_parallel_size` > 1.
- `save_only_model` is refused with `deepspeed`, with an adapter under `fsdp` or tensor parallelism, and with
  `reduce_lr_on_plateau` / `greedy`.
- `early_stopping_patience` needs evaluation data (`val_set_size` or `test_datasets`).
- `context_parallel_size` > 1 needs `fsdp` (FSDP2 reduces the gradients over the cp ranks), attends with
  kubetune's ring attention (so `attn_implementation`, `flash_attention`, `sdp_attention` and `xformers_attention`
  are refused beside it) and excludes `rl`; `ring_attn: true` needs `context_parallel_size` > 1.
  `tensor_parallel_size` > 1 trains a LoRA adapter on a 16/32-bit base, alone or inside FSDP2 / HSDP
  (`fsdp`, which then needs dp_shard × cp above 1; not with `fsdp_cpu_ram_efficient_loading`). The mesh (dp_replicate × dp_shard × context × tensor parallel) needs FSDP2 (`fsdp_version`
  defaults to 2 there) when `fsdp` is set, `dp_shard_size` > 1 needs `fsdp`, and the mesh excludes DeepSpeed;
  its product must equal the job's processes (`workers` × processes per pod: `gpusPerWorker`, or
  `processesPerWorker` on CPU; checked at apply time, and at start-up under torchrun), with context × tensor
  parallel groups inside one pod and no tensor/context parallelism beside pure replication.
- `fsdp` and `deepspeed` exclude each other; `fsdp_config` needs `fsdp`; `fsdp` names at most one sharding
  strategy; `offload` in `fsdp` contradicts `fsdp_offload_params: false`; `gradient_checkpointing: true` beside
  `fsdp_activation_checkpointing: true` is FSDP's checkpointing alone (a reentrant one disagrees and is refused); `SIZE_BASED_WRAP` needs `fsdp_min_num_params`;
  `fsdp_transformer_layer_cls_to_wrap` / `fsdp_auto_wrap_policy` need `auto_wrap` in `fsdp`; FSDP1-only and
  FSDP2-only options must match `fsdp_version`.
- `load_in_8bit` cannot be combined with FSDP or DeepSpeed.
- `deepspeed` given as a path must name an existing JSON file (relative to the config's directory), or
  `deepspeed_configs/<name>.json` of a kubetune preset (zero1, zero2, zero3, zero3_bf16,
  zero3_bf16_cpuoffload_params, zero3_bf16_cpuoffload_all); a DeepSpeed config (file or inline) may not
  define its own `optimizer` or `scheduler` (kubetune builds them from the config).
- `dataloader_prefetch_factor` needs `dataloader_num_workers` > 0.
- `hub_model_id`, `hf_mlflow_log_artifacts`, `wandb_watch` and `wandb_log_model` are known but not implemented
  yet: accepted when empty, refused when set.
- `mlflow_experiment_name` / `mlflow_run_name` need MLflow logging on (`use_mlflow: true` or `mlflow_tracking_uri`);
  `wandb_entity` / `wandb_name` / `wandb_run_id` / `wandb_mode` need W&B logging on (`use_wandb: true` or `wandb_project`).
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        if set(names) == {"integer", "number"}:
            return "number"
        return " \\| ".join(dict.fromkeys(names))
    if origin is Literal:
        return " \\| ".join(_literal(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        anchor = _NESTED_ANCHORS.get(annotation)
        return f"[mapping](#{anchor})" if anchor else "mapping"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, "any")


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"`{value}`"


def _default(value: Any) -> str:
    if value is PydanticUndefined:
        return "**required**"
    if value is None:
        return ""
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`"


def _escape(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _table(model: type[BaseModel], names: typing.Iterable[str]) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for name in names:
        info = model.model_fields[name]
        lines.append(
            f"| `{name}` | {_type_name(info.annotation)} | {_default(info.default)} | {_escape(info.description or '')} |"
        )
    return lines


def _own_fields(section: type[BaseModel]) -> list[str]:
    own = section.__dict__.get("__annotations__", {})
    return [name for name in section.model_fields if name in own]


def _compat_lines(table: dict[str, compat.Unimplemented]) -> list[str]:
    plain = sorted(name for name, entry in table.items() if not entry.hint)
    hinted = sorted((name, entry.hint) for name, entry in table.items() if entry.hint)
    lines = []
    if hinted:
        lines += ["| key | instead |", "|---|---|"]
        lines += [f"| `{name}` | {_escape(hint)} |" for name, hint in hinted]
        lines.append("")
    if plain:
        lines.append(", ".join(f"`{name}`" for name in plain))
        lines.append("")
    return lines


def render_markdown() -> str:
    out = [
        "# Config reference",
        "",
        "<!-- Generated by scripts/generate.py from runtime/kubetune/config; do not edit by hand. -->",
        "",
        "kubetune reads Axolotl-style YAML: the key names below are Axolotl's, plus a few marked",
        "*kubetune*. Check a config without a GPU or network with `kubetune validate CONFIG`",
        "(exit 0 valid, 2 invalid); `kubetune schema` prints the JSON schema.",
        "",
        "- A bare `key:` line (null) means the key is not set: its default applies.",
        "- An unknown key is an error, with a suggestion when a known key is close.",
        "- A known Axolotl key that kubetune does not implement is accepted when empty (or off) and is an",
        "  error when set; see [the list](#axolotl-keys-kubetune-does-not-implement).",
        "- Every problem is reported at once, each with its key path (`datasets[0].type`) and a fix.",
        "- Relative paths resolve against the directory of the config file.",
        "- Overlays (`kubetune validate base.yml --overlay more.yml`) replace the base's top-level keys.",
        "",
    ]
    for section in SECTIONS:
        title = (section.__doc__ or section.__name__).strip().splitlines()[0]
        out += [f"## {title}", "", *_table(TrainConfig, _own_fields(section)), ""]
    nested: list[tuple[str, type[BaseModel], str]] = [
        ("Dataset entries", DatasetConfig, "Each item of `datasets` and `test_datasets`."),
        ("fsdp_config", FsdpConfig, (FsdpConfig.__doc__ or "").strip()),
        ("trl", TrlConfig, " ".join((TrlConfig.__doc__ or "").split())),
        ("special_tokens", SpecialTokens, (SpecialTokens.__doc__ or "").strip()),
        (
            "gradient_checkpointing_kwargs",
            GradientCheckpointingKwargs,
            (GradientCheckpointingKwargs.__doc__ or "").strip(),
        ),
        ("peft", PeftOptions, (PeftOptions.__doc__ or "").strip()),
        ("peft.loftq_config", LoftQ, (LoftQ.__doc__ or "").strip()),
        ("model_quantization_config_kwargs", Mxfp4Kwargs, (Mxfp4Kwargs.__doc__ or "").strip()),
        ("flex_attn_compile_kwargs", FlexCompileKwargs, (FlexCompileKwargs.__doc__ or "").strip()),
        (
            "qat",
            QATBlock,
            f"{(QATBlock.__doc__ or '').strip()} Schemes (activation/weight): {scheme_names()}.",
        ),
    ]
    for title, model, blurb in nested:
        out += [f"## {title}", "", blurb, "", *_table(model, model.model_fields), ""]
    out += ["## Cross-field rules", "", RULES_TEXT]
    out += [
        "## Axolotl keys kubetune does not implement",
        "",
        'Accepted when empty (null, `""`, `[]`, `{}`) or off (`false`; for a few keys their Axolotl default),',
        "an error naming the key otherwise.",
        "",
        "### Top level",
        "",
        *_compat_lines(compat.TOP_LEVEL),
        "### In a dataset entry",
        "",
        *_compat_lines(compat.DATASET),
        "### In fsdp_config",
        "",
        *_compat_lines(compat.FSDP_CONFIG),
        "### In trl",
        "",
        *_compat_lines(compat.TRL),
    ]
    return "\n".join(out).rstrip() + "\n"
