"""Multi-GPU and multi-node training: FSDP, DeepSpeed, DDP; tensor/context parallelism (not yet)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from .base import Section, field

FsdpOption = Literal["full_shard", "shard_grad_op", "hybrid_shard", "no_shard", "offload", "auto_wrap"]
FSDP_SHARDING_STRATEGIES = ("full_shard", "shard_grad_op", "hybrid_shard", "no_shard")


class FsdpConfig(Section):
    """`fsdp_config`: FSDP options. Keys may also be written without the `fsdp_` prefix (newer Axolotl style)."""

    fsdp_version: Literal[1, 2] = field(
        1, description="FSDP implementation: 1 (FullyShardedDataParallel) or 2 (fully_shard). Default: 1."
    )
    fsdp_offload_params: bool | None = field(
        None,
        description="Offload parameters (and gradients) to CPU. Default: true when `fsdp` lists `offload`.",
    )
    fsdp_state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT"] | None = field(
        None,
        description="Checkpoint layout: FULL_STATE_DICT (gathered on rank 0) or SHARDED_STATE_DICT (one shard "
        "per rank; faster). The final model is always saved in full. Default: SHARDED_STATE_DICT.",
    )
    fsdp_transformer_layer_cls_to_wrap: str | None = field(
        None,
        description="Decoder layer class to wrap as an FSDP unit, e.g. `LlamaDecoderLayer`. Default: the "
        "model's `_no_split_modules`.",
    )
    fsdp_auto_wrap_policy: Literal["TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP"] | None = field(
        None, description="How modules are wrapped. Default: TRANSFORMER_BASED_WRAP."
    )
    fsdp_min_num_params: int | None = field(
        None, description="SIZE_BASED_WRAP: minimum parameters of a wrapped module.", ge=1
    )
    fsdp_cpu_ram_efficient_loading: bool | None = field(
        None,
        description="Only the first process of each pod reads the weights; the others build the model "
        "without them and receive rank 0's when FSDP shards it (FSDP1: turns on fsdp_sync_module_states). "
        "One read per pod instead of one per process; with transformers 5.17 the other processes still "
        "allocate the model's size in host memory (zeros), so it does not lower the peak (docs/training.md). "
        "4-bit bases are read by every process (transformers cannot build them empty).",
    )
    fsdp_sync_module_states: bool | None = field(
        None, description="FSDP1: broadcast the module states from rank 0 when wrapping. Default: false."
    )
    fsdp_use_orig_params: bool | None = field(
        None, description="FSDP1: keep the original parameters visible (needed for adapters). Default: true."
    )
    fsdp_activation_checkpointing: bool | None = field(
        None, description="FSDP's own activation checkpointing (instead of `gradient_checkpointing`)."
    )
    fsdp_reshard_after_forward: bool | None = field(
        None, description="FSDP2: free gathered parameters after the forward pass. Default: true."
    )
    fsdp_backward_prefetch: Literal["BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH"] | None = field(
        None,
        description="FSDP1: when the next unit's parameters are gathered in the backward pass: BACKWARD_PRE "
        "(before the current unit's gradients; more overlap, more memory), BACKWARD_POST or NO_PREFETCH. "
        "Default: accelerate's (BACKWARD_PRE).",
    )


class ParallelKeys(Section):
    """Distributed training"""

    @model_validator(mode="before")
    @classmethod
    def _one_activation_checkpointing(cls, data: object) -> object:
        # gradient_checkpointing: true beside fsdp_activation_checkpointing: true (Axolotl's FSDP examples)
        # asks for the same thing twice: each decoder layer's activations recomputed in the backward pass.
        # FSDP's own (non-reentrant) checkpointing does it; a reentrant request disagrees (rules refuse it).
        if (
            not isinstance(data, dict)
            or data.get("gradient_checkpointing") is not True
            or not data.get("fsdp")
        ):
            return data
        fsdp_config = data.get("fsdp_config")
        kwargs = data.get("gradient_checkpointing_kwargs")
        reentrant = isinstance(kwargs, dict) and kwargs.get("use_reentrant") is True
        if (
            isinstance(fsdp_config, dict)
            and fsdp_config.get("fsdp_activation_checkpointing") is True
            and not reentrant
        ):
            return {**data, "gradient_checkpointing": False}
        return data

    fsdp: list[FsdpOption] | None = field(
        None,
        description="Enable FSDP with these options: one sharding strategy (full_shard, shard_grad_op, "
        "hybrid_shard, no_shard; default full_shard), plus `auto_wrap` and/or `offload`.",
        min_length=1,
    )
    fsdp_config: FsdpConfig | None = field(None, description="FSDP options (a mapping), used with `fsdp`.")
    deepspeed: str | dict[str, Any] | None = field(
        None,
        description="DeepSpeed config: a path to its JSON file (relative paths resolve against the "
        "config's directory; the file must exist) or the config inline as a mapping.",
    )
    tensor_parallel_size: int = field(
        1,
        description="Tensor parallel degree. kubetune does not implement tensor parallelism yet: must be 1.",
        ge=1,
    )
    context_parallel_size: int = field(
        1,
        description="Context parallel degree. kubetune does not implement context parallelism yet: must be 1.",
        ge=1,
    )
    ring_attn: bool = field(
        False,
        description="Ring attention for context parallelism. Not implemented by kubetune yet: must be false.",
    )
    ddp_backend: Literal["auto", "nccl", "gloo"] = field(
        "auto",
        description="kubetune: torch.distributed backend. Default: `auto` (nccl on GPUs, gloo on CPU).",
    )
    ddp_find_unused_parameters: bool | None = field(
        None,
        description="DDP: look for parameters that got no gradient in each backward pass (needed when parts of "
        "the model are skipped; costs a graph traversal per step). Default: false.",
    )
    ddp_timeout: int = field(
        1800,
        description="Seconds a collective may wait before the job fails (e.g. while rank 0 prepares data). Default: 1800.",
        ge=1,
    )
