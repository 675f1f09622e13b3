"""Cross-field rules of `quantize_moe_experts` (the runtime side: kubetune.train.moe_quant).

The expert tensors are quantized by bitsandbytes into packed tensors behind a torch parametrization:
frozen base weights of a LoRA run on a bitsandbytes-quantized base. FSDP2 shards them as plain tensors
(each rank quantizes the experts it loaded); FSDP1's flat parameters, DeepSpeed and tensor parallelism
do not take them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .problems import ConfigProblem
from .rules import rule
from .schema import TrainConfig
from .sharding import fsdp_version

_KEY = "quantize_moe_experts"


@rule
def quantized_experts(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    if not cfg.quantize_moe_experts:
        return
    if not (cfg.adapter and (cfg.load_in_4bit or cfg.load_in_8bit)):
        yield ConfigProblem(
            _KEY,
            "quantize_moe_experts quantizes the experts of a LoRA run on a bitsandbytes-quantized base, and "
            "this run is not one (it needs an adapter with load_in_4bit or load_in_8bit)",
            "add `adapter: qlora` with `load_in_4bit: true` (or `adapter: lora` with `load_in_8bit: true`), "
            "or remove quantize_moe_experts",
        )
    sharded = [
        key
        for key, on in (
            ("fsdp", bool(cfg.fsdp) and fsdp_version(cfg) != 2),  # FSDP1 flattens them with the others
            ("deepspeed", cfg.deepspeed is not None),
            ("tensor_parallel_size", (cfg.tensor_parallel_size or 1) > 1),
        )
        if on
    ]
    if sharded:
        yield ConfigProblem(
            _KEY,
            f"quantize_moe_experts keeps the packed expert tensors whole in each process (a bitsandbytes "
            f"parametrization that {sharded[0]} does not shard)",
            f"remove {sharded[0]} (one process per GPU; DDP over several), or remove quantize_moe_experts",
        )
    fc = cfg.fsdp_config
    if cfg.fsdp and fc is not None and fc.fsdp_cpu_ram_efficient_loading:
        yield ConfigProblem(
            "fsdp_config.fsdp_cpu_ram_efficient_loading",
            "fsdp_cpu_ram_efficient_loading with quantize_moe_experts: the ranks that do not read the weights "
            "build the experts unquantized, and the first rank's packed experts cannot be broadcast into them",
            "remove fsdp_cpu_ram_efficient_loading (each rank loads and quantizes the experts itself), or "
            "remove quantize_moe_experts",
        )
    if cfg.lora_target_parameters:
        yield ConfigProblem(
            "lora_target_parameters",
            "lora_target_parameters with quantize_moe_experts: the quantized expert tensors are packed 4/8-bit "
            "data behind a bitsandbytes parametrization, which peft's parameter LoRA does not wrap in kubetune",
            "adapt modules (lora_target_modules, e.g. [q_proj, k_proj, v_proj, o_proj]) and leave the experts "
            "frozen, or remove quantize_moe_experts to train LoRA on the bf16 experts",
        )
