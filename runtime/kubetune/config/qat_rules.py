"""Cross-field rules of `qat:` (kubetune.config.qat) and of `save_only_model`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .problems import ConfigProblem
from .qat import SCHEMES, scheme_names
from .rules import rule
from .schema import TrainConfig
from .training import EVAL_DRIVEN_SCHEDULERS

# Keys QAT does not run with, and why (Axolotl refuses the adapter and the 4/8-bit base the same way).
_QAT_CLASHES = {
    "adapter": "QAT fake-quantizes the weights that train, and with an adapter the base weights are frozen "
    "(the adapter's output is added unquantized)",
    "load_in_4bit": "QAT trains full-precision weights under fake quantization; a bitsandbytes base cannot train",
    "load_in_8bit": "QAT trains full-precision weights under fake quantization; a bitsandbytes base cannot train",
    "deepspeed": "kubetune runs QAT in one process, with DDP or with FSDP; ZeRO's partitioned weights "
    "are not tested with torchao's fake-quantized layers",
    "torch_compile": "the compiled decoder layers with torchao's fake-quantized layers inside are not tested",
    "rl": "preference training with QAT is not implemented (the reference model would be fake-quantized too)",
}


@rule
def qat(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    block = cfg.qat
    if block is None:
        return
    pair = (block.activation_dtype, block.weight_dtype)
    if pair not in SCHEMES:
        yield ConfigProblem(
            "qat",
            f"qat with activation_dtype {block.activation_dtype} and weight_dtype {block.weight_dtype} is "
            "not a scheme kubetune runs",
            f"use one of (activation/weight): {scheme_names()}",
        )
        return
    group = SCHEMES[pair][0]
    if group is not None and block.group_size != group:
        yield ConfigProblem(
            "qat.group_size",
            f"{block.weight_dtype} quantizes groups of {group} elements, not {block.group_size}",
            f"set `group_size: {group}`",
        )
    if block.fake_quant_after_n_steps is not None and block.weight_dtype != "int4":
        yield ConfigProblem(
            "qat.fake_quant_after_n_steps",
            f"torchao's {block.weight_dtype} QAT layers have no switch to train without fake quantization first",
            "remove fake_quant_after_n_steps (fake quantization from the first step), or use an int4 scheme",
        )
    for key, why in _QAT_CLASHES.items():
        if getattr(cfg, key):
            yield ConfigProblem(key, f"{key} with qat: {why}", f"remove {key}, or remove qat")
    for key in ("tensor_parallel_size", "context_parallel_size"):
        if getattr(cfg, key) > 1:
            yield ConfigProblem(
                key,
                f"{key} with qat: QAT over model-parallel shards is not implemented (a group or a "
                "per-tensor scale would span shards)",
                f"remove {key} (FSDP shards whole weights, and QAT runs with it), or remove qat",
            )


@rule
def save_only_model(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    if not cfg.save_only_model:
        return
    if cfg.deepspeed:
        yield ConfigProblem(
            "save_only_model",
            "DeepSpeed writes the optimizer state with the model in its own checkpoints",
            "remove save_only_model, or train with FSDP instead of deepspeed",
        )
    if cfg.lr_scheduler in EVAL_DRIVEN_SCHEDULERS:
        yield ConfigProblem(
            "save_only_model",
            f"{cfg.lr_scheduler} moves the learning rate with the eval losses it has seen, state that a "
            "checkpoint without the scheduler cannot bring back on resume",
            "remove save_only_model, or use a per-step lr_scheduler (e.g. cosine)",
        )
    if cfg.adapter and (cfg.fsdp or cfg.tensor_parallel_size > 1):
        yield ConfigProblem(
            "save_only_model",
            "an adapter under FSDP or tensor parallelism checkpoints through its own writer, which always "
            "holds the optimizer state (a few MB for an adapter)",
            "remove save_only_model",
        )
