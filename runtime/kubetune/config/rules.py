"""Cross-field rules: each looks at the validated config and yields problems with key path and fix.

Rules run on a config whose invalid values were already reported and replaced by defaults, so every
rule may assume well-typed values. A rule never raises; `run_all` collects them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel

from .compat import Unimplemented
from .datasets import COMMON_DATASET_KEYS, DATASET_KEYS_BY_TYPE, DatasetConfig
from .hardware import is_hub_kernel
from .parallel import MESH_KEYS
from .problems import ConfigProblem
from .schema import TrainConfig
from .sharding import fsdp_version, sharding_problems

Rule = Callable[[TrainConfig, "Path | None"], Iterator[ConfigProblem]]
RULES: list[Rule] = []


def rule(function: Rule) -> Rule:
    RULES.append(function)
    return function


def run_all(config: TrainConfig, source_dir: Path | None) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    for check in RULES:
        problems.extend(check(config, source_dir))
    return problems


def is_set(model: BaseModel, key: str) -> bool:
    """Set in the config to a value other than the default (a value that changes something)."""
    if key not in model.model_fields_set:
        return False
    return getattr(model, key) != type(model).model_fields[key].default


def _has_eval_data(cfg: TrainConfig) -> bool:
    return bool(cfg.test_datasets) or cfg.val_set_size > 0


# -- adapters and quantization --------------------------------------------------------------------

LORA_KEYS = (
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_target_linear",
    "lora_modules_to_save",
    "lora_fan_in_fan_out",
    "lora_model_dir",
    "peft_use_dora",
    "peft_use_rslora",
    "lora_target_parameters",
    "peft",
)
BNB_4BIT_KEYS = ("bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant")


def _model_quantization(cfg: TrainConfig) -> Iterator[ConfigProblem]:
    """model_quantization_config: Mxfp4Config is honoured only as Axolotl's examples use it (dequantized)."""
    kwargs = cfg.model_quantization_config_kwargs
    if kwargs is not None and cfg.model_quantization_config is None:
        yield ConfigProblem(
            "model_quantization_config_kwargs",
            "model_quantization_config_kwargs is set but model_quantization_config is not",
            "add `model_quantization_config: Mxfp4Config`, or remove model_quantization_config_kwargs",
        )
    if cfg.model_quantization_config is None:
        return
    if kwargs is None or not kwargs.dequantize:
        yield ConfigProblem(
            "model_quantization_config_kwargs",
            "Mxfp4Config without dequantize: true keeps the MXFP4 experts packed where the kernels exist, "
            "and transformers' MXFP4 layers cannot be trained",
            "add `model_quantization_config_kwargs: {dequantize: true}`",
        )
    if cfg.load_in_4bit or cfg.load_in_8bit:
        yield ConfigProblem(
            "model_quantization_config",
            "model_quantization_config and load_in_4bit / load_in_8bit are two quantization configs for "
            "one model",
            "keep one: Mxfp4Config (dequantized) for an MXFP4 checkpoint, or bitsandbytes for the others",
        )


@rule
def lisa(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    """LISA switches requires_grad of whole layers of a full fine-tune, in one process."""
    if not cfg.lisa_n_layers:
        for key in ("lisa_step_interval", "lisa_layers_attribute"):
            if getattr(cfg, key) is not None:
                yield ConfigProblem(
                    key,
                    f"{key} is a LISA setting, and lisa_n_layers is not set",
                    f"add lisa_n_layers, or remove {key}",
                )
        return
    if cfg.lisa_step_interval is None:
        yield ConfigProblem(
            "lisa_step_interval",
            "lisa_n_layers needs lisa_step_interval (steps between draws)",
            "add e.g. `lisa_step_interval: 20`",
        )
    clash = [
        key for key in ("adapter", "unfrozen_parameters", "fsdp", "deepspeed", "rl") if getattr(cfg, key)
    ]
    if clash:
        yield ConfigProblem(
            "lisa_n_layers",
            f"LISA trains whole decoder layers of a full fine-tune in one process, and {clash[0]} is set",
            f"remove {clash[0]}, or remove lisa_n_layers",
        )


@rule
def adapter_and_quantization(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    if cfg.reinit_weights and (cfg.load_in_4bit or cfg.load_in_8bit):
        yield ConfigProblem(
            "reinit_weights",
            "reinit_weights trains new random weights, which bitsandbytes cannot quantize as it loads them",
            "remove load_in_4bit / load_in_8bit (and train the new model in full), or remove reinit_weights",
        )
    if cfg.adapter == "qlora" and not cfg.load_in_4bit:
        yield ConfigProblem(
            "load_in_4bit",
            "adapter: qlora trains LoRA on a 4-bit base model, but load_in_4bit is not true",
            "add `load_in_4bit: true` (or use `adapter: lora` for an unquantized base)",
        )
    if cfg.adapter == "lora" and cfg.load_in_4bit:
        yield ConfigProblem(
            "adapter",
            "adapter: lora with load_in_4bit: true is QLoRA",
            "set `adapter: qlora`",
        )
    yield from _model_quantization(cfg)
    if cfg.load_in_4bit and cfg.load_in_8bit:
        yield ConfigProblem(
            "load_in_8bit",
            "load_in_4bit and load_in_8bit are both true; the base model is loaded in one precision",
            "keep one of them (load_in_4bit for qlora, load_in_8bit for lora)",
        )
    for key, suggestion in (("load_in_4bit", "qlora"), ("load_in_8bit", "lora")):
        if getattr(cfg, key) and cfg.adapter is None:
            yield ConfigProblem(
                key,
                f"{key}: true without an adapter: quantized weights cannot be trained in full",
                f"add `adapter: {suggestion}`, or remove {key} for a full fine-tune",
            )
    if cfg.adapter is None:
        for key in LORA_KEYS:
            if is_set(cfg, key):
                yield ConfigProblem(
                    key,
                    f"{key} is set but no adapter is configured, so it would have no effect",
                    f"add `adapter: lora` (or qlora), or remove {key}",
                )
    elif not (
        cfg.lora_target_modules or cfg.lora_target_linear or cfg.lora_model_dir or cfg.lora_target_parameters
    ):
        yield ConfigProblem(
            "lora_target_modules",
            f"adapter: {cfg.adapter} needs to know which modules get LoRA weights",
            "list them in lora_target_modules (e.g. [q_proj, k_proj, v_proj, o_proj]) or set "
            "`lora_target_linear: true`",
        )
    if cfg.peft and cfg.peft.loftq_config:
        if cfg.adapter == "qlora" or cfg.load_in_8bit:
            yield ConfigProblem(
                "peft.loftq_config",
                "LoftQ quantizes a full-precision base itself and initialises the adapter from the quantization "
                "error; a base already loaded quantized has no full-precision weights to start from",
                "use `adapter: lora` without load_in_4bit / load_in_8bit, or remove peft.loftq_config",
            )
        if cfg.lora_model_dir:
            yield ConfigProblem(
                "peft.loftq_config",
                "LoftQ initialises a new adapter, and lora_model_dir continues a trained one",
                "remove peft.loftq_config (or lora_model_dir to start a new adapter)",
            )
    if not cfg.load_in_4bit:
        for key in BNB_4BIT_KEYS:
            if key in cfg.model_fields_set:
                yield ConfigProblem(
                    key,
                    f"{key} applies to a 4-bit base model, but load_in_4bit is not true",
                    f"add `load_in_4bit: true` (with adapter: qlora), or remove {key}",
                )
    fc = cfg.fsdp_config
    if cfg.unfrozen_parameters and cfg.fsdp and fc is not None and fc.fsdp_use_orig_params is False:
        yield ConfigProblem(
            "fsdp_config.fsdp_use_orig_params",
            "FSDP1 without use_orig_params flattens frozen and trained weights together, which "
            "unfrozen_parameters needs apart",
            "remove fsdp_use_orig_params (it defaults to true), or use fsdp_version: 2",
        )
    if cfg.adapter and cfg.tokens and not cfg.lora_modules_to_save:
        yield ConfigProblem(
            "lora_modules_to_save",
            "tokens adds new vocabulary rows, but with an adapter the embeddings stay frozen",
            "add `lora_modules_to_save: [embed_tokens, lm_head]` (the model's embedding and output layers)",
        )


# -- precision and attention ----------------------------------------------------------------------


@rule
def precision_and_attention(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    if cfg.bf16 is True and cfg.fp16:
        yield ConfigProblem(
            "fp16",
            "bf16 and fp16 are both true; training uses one mixed precision",
            "keep one of bf16 / fp16",
        )
    if cfg.float16 and cfg.bf16 is True:
        yield ConfigProblem(
            "float16", "float16 (float16 weights) and bf16: true contradict each other", "keep one of them"
        )
    if cfg.float16 and not cfg.fp16 and not cfg.adapter:
        yield ConfigProblem(
            "float16",
            "float16 without fp16 trains every weight in float16 with no loss scaling: small gradients vanish "
            "and AdamW's epsilon (1e-8) is below float16's smallest value",
            "use fp16: true (mixed precision: float32 weights, float16 compute), or train an adapter",
        )
    if cfg.torch_compile_mode and not cfg.torch_compile:
        yield ConfigProblem(
            "torch_compile_mode",
            f"torch_compile_mode: {cfg.torch_compile_mode} is the mode of torch.compile, and torch_compile is off",
            "add `torch_compile: true`, or remove torch_compile_mode",
        )
    if cfg.flex_attn_compile_kwargs is not None and cfg.attn_implementation != "flex_attention":
        yield ConfigProblem(
            "flex_attn_compile_kwargs",
            "flex_attn_compile_kwargs configures the compile of flex attention, and attn_implementation is "
            f"{cfg.attn_implementation or 'not flex_attention'}",
            "add `attn_implementation: flex_attention`, or remove flex_attn_compile_kwargs",
        )
    flags = [
        flag for flag in ("flash_attention", "sdp_attention", "xformers_attention") if getattr(cfg, flag)
    ]
    if len(flags) > 1:
        yield ConfigProblem(
            flags[-1],
            f"{' and '.join(flags)} are {'both' if len(flags) == 2 else 'all'} true; only one attention "
            "implementation is used",
            "keep one of them",
        )
    expected = {
        "flash_attention": ("flash_attention_2", "flash_attention_3"),
        "sdp_attention": ("sdpa",),
        "xformers_attention": ("xformers",),
    }
    if cfg.attn_implementation:
        for flag, allowed in expected.items():
            hub_flash = flag == "flash_attention" and is_hub_kernel(cfg.attn_implementation)
            if getattr(cfg, flag) and cfg.attn_implementation not in allowed and not hub_flash:
                yield ConfigProblem(
                    "attn_implementation",
                    f"attn_implementation: {cfg.attn_implementation} contradicts {flag}: true",
                    f"remove {flag}, or set attn_implementation to {' / '.join(allowed)}",
                )


# -- data -----------------------------------------------------------------------------------------


@rule
def data(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    if not cfg.datasets and not cfg.pretraining_dataset:
        yield ConfigProblem(
            "datasets",
            "required key is missing: no training data (neither datasets nor pretraining_dataset)",
            "add `datasets:` with at least one entry (path, type)",
        )
    if cfg.datasets and cfg.pretraining_dataset:
        yield ConfigProblem(
            "pretraining_dataset",
            "both datasets and pretraining_dataset are set; the training data comes from one of them",
            "keep pretraining_dataset (raw text streams) or datasets (prepared datasets)",
        )
    if cfg.pretraining_dataset and cfg.max_steps is None:
        yield ConfigProblem(
            "max_steps",
            "pretraining_dataset is read as a stream, which has no epochs: the run's length is max_steps",
            "add `max_steps: N`",
        )
    if cfg.streaming and cfg.max_steps is None:
        yield ConfigProblem(
            "max_steps",
            "streaming: true reads the datasets as streams, which have no epochs: the run's length is max_steps",
            "add `max_steps: N`, or remove streaming",
        )
    if cfg.streaming and cfg.rl:
        yield ConfigProblem(
            "streaming", "streaming reads SFT examples, and rl: trains on pairs", "remove streaming"
        )
    if cfg.streaming_multipack_buffer_size and not (cfg.streaming or cfg.pretraining_dataset):
        yield ConfigProblem(
            "streaming_multipack_buffer_size",
            "streaming_multipack_buffer_size shuffles a stream, and no dataset is streamed",
            "add `streaming: true` (or use pretraining_dataset), or remove streaming_multipack_buffer_size",
        )
    if cfg.dataset_exact_deduplication and (cfg.pretraining_dataset or cfg.rl):
        source = (
            "pretraining_dataset is read as a stream" if cfg.pretraining_dataset else "rl: trains on pairs"
        )
        yield ConfigProblem(
            "dataset_exact_deduplication",
            f"dataset_exact_deduplication works on prepared SFT examples, and {source}",
            "remove dataset_exact_deduplication",
        )
    if cfg.pretraining_dataset and cfg.val_set_size > 0:
        yield ConfigProblem(
            "val_set_size",
            "val_set_size splits examples off prepared datasets; a pretraining stream is read up to what "
            "max_steps needs",
            "remove val_set_size, and evaluate on test_datasets",
        )
    for key in ("sample_packing", "pad_to_sequence_len"):
        if cfg.group_by_length and getattr(cfg, key):
            yield ConfigProblem(
                "group_by_length",
                f"group_by_length batches rows of similar length to pad less, and with {key}: true every "
                "row is sequence_len wide already",
                f"remove group_by_length (or set {key}: false to batch unpacked examples by length)",
            )
            break
    if "sequence_len" not in cfg.model_fields_set:
        for key in ("sample_packing", "pad_to_sequence_len"):
            if getattr(cfg, key):
                yield ConfigProblem(
                    "sequence_len",
                    f"{key}: true works in rows of sequence_len tokens, but sequence_len is not set",
                    "add `sequence_len: N` (e.g. 2048)",
                )
                break
    if cfg.test_datasets and cfg.val_set_size > 0:
        yield ConfigProblem(
            "val_set_size",
            "val_set_size splits evaluation data off the training data, but test_datasets is also given",
            "remove val_set_size (evaluation uses test_datasets) or remove test_datasets",
        )
    yield from _chat_template_pair(cfg, "")
    for list_key in ("datasets", "test_datasets"):
        for index, entry in enumerate(getattr(cfg, list_key) or []):
            yield from _dataset(entry, f"{list_key}[{index}]")


def _chat_template_pair(model: BaseModel, prefix: str) -> Iterator[ConfigProblem]:
    template = getattr(model, "chat_template", None)
    jinja = getattr(model, "chat_template_jinja", None)
    if template == "jinja" and not jinja:
        yield ConfigProblem(
            prefix + "chat_template_jinja",
            "chat_template: jinja needs the template text in chat_template_jinja",
            "add `chat_template_jinja: |` followed by the template",
        )
    if jinja and template not in (None, "jinja"):
        yield ConfigProblem(
            prefix + "chat_template",
            f"chat_template: {template} contradicts chat_template_jinja (which is also set)",
            "remove chat_template (or set it to jinja), or remove chat_template_jinja",
        )


def _dataset(entry: DatasetConfig, path: str) -> Iterator[ConfigProblem]:
    kind = entry.type or "pretokenized"  # an empty type reads tokenized rows
    if kind in DATASET_KEYS_BY_TYPE:
        allowed = COMMON_DATASET_KEYS | DATASET_KEYS_BY_TYPE[kind]
        for key in sorted(entry.model_fields_set - allowed, key=list(type(entry).model_fields).index):
            owners = [t for t, keys in DATASET_KEYS_BY_TYPE.items() if key in keys]
            yield ConfigProblem(
                f"{path}.{key}",
                f"{key} applies to {' / '.join(owners) or 'other'} datasets, not type {kind}",
                f"remove {key}, or change the entry's type",
            )
    yield from _chat_template_pair(entry, path + ".")
    for part in ("role", "content"):
        if f"message_field_{part}" in entry.model_fields_set and part in (
            entry.message_property_mappings or {}
        ):
            yield ConfigProblem(
                f"{path}.message_property_mappings",
                f"message_property_mappings.{part} and message_field_{part} both name the {part} key",
                f"keep only message_field_{part}",
            )
    if entry.roles_to_train is not None and (entry.type == "chat_template" or entry.is_custom_type):
        roles = entry.effective_roles()
        for index, role in enumerate(entry.roles_to_train):
            if role not in roles:
                yield ConfigProblem(
                    f"{path}.roles_to_train[{index}]",
                    f"role '{role}' is not a role of this dataset (roles: {', '.join(roles)})",
                    f"use one of {', '.join(roles)}, or add '{role}' to roles",
                )


# -- schedule, evaluation, checkpoints ------------------------------------------------------------


@rule
def schedule(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    if cfg.num_epochs is None and cfg.max_steps is None:
        yield ConfigProblem(
            "num_epochs",
            "the training length is not set: neither num_epochs nor max_steps",
            "add `num_epochs: 1` (or `max_steps: N`)",
        )
    pairs = (
        ("warmup_steps", "warmup_ratio", "warmup length"),
        ("save_steps", "saves_per_epoch", "checkpoint interval"),
        ("eval_steps", "evals_per_epoch", "evaluation interval"),
    )
    for first, second, what in pairs:
        if getattr(cfg, first) is not None and getattr(cfg, second) is not None:
            yield ConfigProblem(
                second, f"{first} and {second} both set the {what}", f"keep only one of {first} / {second}"
            )
    if cfg.cosine_min_lr_ratio is not None and cfg.lr_scheduler != "cosine":
        yield ConfigProblem(
            "cosine_min_lr_ratio",
            f"cosine_min_lr_ratio applies to the cosine schedule, but lr_scheduler is {cfg.lr_scheduler}",
            "remove cosine_min_lr_ratio, or set `lr_scheduler: cosine`",
        )
    if cfg.optimizer == "sgd":
        for key in ("adam_beta1", "adam_beta2", "adam_epsilon"):
            if is_set(cfg, key):
                yield ConfigProblem(
                    key,
                    f"{key} is an Adam setting, but optimizer is sgd",
                    f"remove {key}, or pick an Adam optimizer",
                )
    if cfg.early_stopping_patience is not None and not _has_eval_data(cfg):
        yield ConfigProblem(
            "early_stopping_patience",
            "early stopping watches the eval loss, but there is no evaluation data",
            "add `val_set_size: 0.05` (or test_datasets), or remove early_stopping_patience",
        )


# -- distributed ----------------------------------------------------------------------------------


def _mesh(cfg: TrainConfig) -> Iterator[ConfigProblem]:
    """The mesh keys (config/mesh.py) without the world size; its arithmetic is checked where that is known."""
    if cfg.ring_attn and cfg.context_parallel_size == 1:
        yield ConfigProblem(
            "ring_attn",
            "ring_attn is how kubetune's context parallelism attends; without context_parallel_size > 1 "
            "there is no ring",
            "set context_parallel_size (2 or more, with fsdp), or remove ring_attn",
        )
    if cfg.context_parallel_size > 1:
        yield from _context_parallel(cfg)
    set_keys = [key for key in MESH_KEYS if getattr(cfg, key) not in (None, 1)]
    if not set_keys:
        return
    if cfg.tensor_parallel_size > 1:
        if cfg.adapter != "lora" or cfg.load_in_8bit or cfg.load_in_4bit:
            yield ConfigProblem(
                "tensor_parallel_size",
                "tensor parallelism trains a LoRA adapter on a 16/32-bit base in kubetune "
                f"(adapter is {cfg.adapter or 'unset'}); full fine-tunes and quantized bases are not supported",
                "set `adapter: lora` without load_in_4bit / load_in_8bit, or remove tensor_parallel_size",
            )
        if cfg.fsdp_config is not None and cfg.fsdp_config.fsdp_cpu_ram_efficient_loading:
            # accelerate 1.15's fsdp2_load_full_state_dict broadcasts rank 0's tensors whole; rank 0's
            # tensor-parallel layers are DTensor shards, and the broadcast fails (gloo: peer closed).
            yield ConfigProblem(
                "fsdp_config.fsdp_cpu_ram_efficient_loading",
                "fsdp_cpu_ram_efficient_loading broadcasts rank 0's full weights when FSDP2 shards them, which "
                "fails for the tensor-parallel layers transformers loaded as shards (accelerate 1.15)",
                "remove fsdp_cpu_ram_efficient_loading with tensor_parallel_size: every rank reads the weights",
            )
    if cfg.deepspeed is not None:
        yield ConfigProblem(
            set_keys[0],
            f"{set_keys[0]} builds a device mesh for FSDP2 and DTensor; DeepSpeed does not run on it",
            "remove deepspeed and set `fsdp: [full_shard, auto_wrap]` with fsdp_config.fsdp_version: 2",
        )
    if cfg.fsdp and fsdp_version(cfg) != 2:
        yield ConfigProblem(
            "fsdp_config.fsdp_version",
            f"{set_keys[0]} shards over a device mesh, which only FSDP2 (fully_shard) does; fsdp_version is 1",
            "set fsdp_config.fsdp_version: 2",
        )
    if (cfg.dp_shard_size or 1) > 1 and not cfg.fsdp:
        yield ConfigProblem(
            "dp_shard_size",
            f"dp_shard_size {cfg.dp_shard_size} shards the model with FSDP, but fsdp is not set",
            "add `fsdp: [full_shard, auto_wrap]` with fsdp_config.fsdp_version: 2",
        )
    model_parallel = cfg.tensor_parallel_size > 1 or cfg.context_parallel_size > 1
    if model_parallel and (cfg.dp_replicate_size or 1) > 1 and cfg.dp_shard_size == 1:
        # accelerate composes TP/CP with FSDP2 (2-D) or HSDP (3-D), not with plain replication (DDP).
        yield ConfigProblem(
            "dp_replicate_size",
            "tensor/context parallelism with pure replication (dp_shard_size 1) is not supported by accelerate",
            "set dp_shard_size > 1 (HSDP, with fsdp) or leave dp_shard_size unset with fsdp",
        )


def _context_parallel(cfg: TrainConfig) -> Iterator[ConfigProblem]:
    """context_parallel_size > 1: each rank of a cp group trains one slice of every row with kubetune's
    ring attention (train/context_parallel.py); FSDP2 reduces the gradients over the cp ranks."""
    cp = f"context_parallel_size {cfg.context_parallel_size}"
    if not cfg.fsdp:
        yield ConfigProblem(
            "context_parallel_size",
            f"{cp} splits every row over ranks that hold one model, and FSDP2 is what sums their "
            "gradients; fsdp is not set",
            "add `fsdp: [full_shard, auto_wrap]` (fsdp_version 2)",
        )
    for key in (key for key in _ATTENTION_KEYS if getattr(cfg, key)):
        yield ConfigProblem(
            key,
            f"{cp} attends with kubetune's ring attention (torch ops per key/value block, packed examples "
            f"kept apart); {key} would not be used",
            f"remove {key}",
        )
    if cfg.rl:
        yield ConfigProblem(
            "context_parallel_size",
            f"{cp} splits rows across ranks, and the preference losses (rl: {cfg.rl}) score whole rows",
            "remove context_parallel_size for preference training",
        )


_ATTENTION_KEYS = ("attn_implementation", "flash_attention", "sdp_attention", "xformers_attention")


@rule
def distributed(cfg: TrainConfig, source_dir: Path | None) -> Iterator[ConfigProblem]:
    yield from _mesh(cfg)
    yield from sharding_problems(cfg, source_dir)
    if cfg.dataloader_prefetch_factor is not None and cfg.dataloader_num_workers == 0:
        yield ConfigProblem(
            "dataloader_prefetch_factor",
            "dataloader_prefetch_factor needs background workers, but dataloader_num_workers is 0",
            "set `dataloader_num_workers` to 1 or more, or remove dataloader_prefetch_factor",
        )


# -- outputs and trackers -------------------------------------------------------------------------


# Keys in the schema that the engine does not act on yet: like the Axolotl compatibility table's keys,
# accepted when empty or off, refused when set, so that nothing is ever silently ignored.
_NOT_IMPLEMENTED = {
    "hub_model_id": Unimplemented(
        "push the output_dir yourself after training (e.g. `huggingface-cli upload`)"
    ),
    "hf_mlflow_log_artifacts": Unimplemented("remove it"),
    "wandb_watch": Unimplemented("remove it"),
    "wandb_log_model": Unimplemented("remove it"),
}


@rule
def not_implemented(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    for key in TrainConfig.model_fields:
        if key in _NOT_IMPLEMENTED:
            entry = _NOT_IMPLEMENTED[key]
            value = getattr(cfg, key)
            if not entry.accepts(value):
                yield ConfigProblem(
                    key,
                    f"kubetune does not implement {key} yet (hub upload, MLflow artifacts and W&B model "
                    f"watching/upload are not part of this release); it is {value!r}",
                    entry.hint,
                )
    mlflow_on = cfg.use_mlflow if cfg.use_mlflow is not None else bool(cfg.mlflow_tracking_uri)
    for key in ("mlflow_experiment_name", "mlflow_run_name"):
        if getattr(cfg, key) and not mlflow_on:
            yield ConfigProblem(
                key,
                f"{key} is set but MLflow logging is off (use_mlflow is not true and mlflow_tracking_uri is unset)",
                "set use_mlflow: true (and mlflow_tracking_uri, unless MLFLOW_TRACKING_URI is in the environment), "
                f"or remove {key}",
            )
    wandb_on = cfg.use_wandb if cfg.use_wandb is not None else bool(cfg.wandb_project)
    for key in ("wandb_entity", "wandb_name", "wandb_run_id", "wandb_mode"):
        if getattr(cfg, key) and not wandb_on:
            yield ConfigProblem(
                key,
                f"{key} is set but Weights & Biases logging is off (use_wandb is not true and wandb_project is unset)",
                f"set wandb_project (or use_wandb: true), or remove {key}",
            )


from . import (  # noqa: E402, F401  (register the MoE, rl:, qat, tokenizer, optimizer, schedule, strategy and preparation rules)
    moe_rules,
    preference_rules,
    preparation_rules,
    qat_rules,
    tokenizer_rules,
    training_rules,
)
