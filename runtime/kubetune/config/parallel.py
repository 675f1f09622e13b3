"""Multi-GPU and multi-node training: FSDP, DeepSpeed, DDP; tensor/context parallelism (not yet)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from .base import Section, field

FsdpOption = Literal["full_shard", "shard_grad_op", "hybrid_shard", "no_shard", "offload", "auto_wrap"]
FSDP_SHARDING_STRATEGIES = ("full_shard", "shard_grad_op", "hybrid_shard", "no_shard")
# The keys that shape the device mesh (kubetune.config.mesh); set to more than 1 they need FSDP2.
MESH_KEYS = ("dp_replicate_size", "dp_shard_size", "context_parallel_size", "tensor_parallel_size")


class FsdpConfig(Section):
    """`fsdp_config`: FSDP options. Keys may also be written without the `fsdp_` prefix (newer Axolotl style)."""

    fsdp_version: Literal[1, 2] = field(
        1,
        description="FSDP implementation: 1 (FullyShardedDataParallel) or 2 (fully_shard). Default: 1; 2 "
        "when a parallelism size (tensor_parallel_size, context_parallel_size, dp_shard_size, "
        "dp_replicate_size) is above 1.",
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
        None,
        description="FSDP1: keep the original parameters visible. Default: true. With false, each FSDP unit is "
        "one flat tensor, trained or frozen as a whole: an adapter's trainable layers become units of their "
        "own (peft's wrap policy) and checkpoints keep the original names.",
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

    @model_validator(mode="before")
    @classmethod
    def _fsdp2_on_a_mesh(cls, data: object) -> object:
        # A mesh (tensor/context parallel, HSDP sizes) is sharded by FSDP2 alone: fsdp_version defaults to
        # 2 there, so the seed's nd-parallel overlay (fsdp + tensor_parallel_size, no version) means FSDP2.
        if not isinstance(data, dict) or not data.get("fsdp"):
            return data
        if not any(data.get(key) not in (None, 1) for key in MESH_KEYS):
            return data
        fsdp_config = data.get("fsdp_config")
        if fsdp_config is None:
            return {**data, "fsdp_config": {"fsdp_version": 2}}
        if isinstance(fsdp_config, dict) and fsdp_config.get("fsdp_version") is None:
            return {**data, "fsdp_config": {**fsdp_config, "fsdp_version": 2}}
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
        description="Tensor parallel degree: consecutive ranks of one pod share each layer (the model's "
        "transformers tp_plan, DTensor); a LoRA adapter on a 16/32-bit base, alone or inside FSDP2. Default: 1.",
        ge=1,
    )
    context_parallel_size: int = field(
        1,
        description="Context parallel degree: consecutive ranks of one pod each train one slice of every row, "
        "attending with a ring over the slices (kubetune's ring attention over torch ops; packed examples kept "
        "apart); needs `fsdp` (FSDP2 reduces the gradients over these ranks). Default: 1.",
        ge=1,
    )
    dp_shard_size: int | None = field(
        None,
        description="Ranks one FSDP shard group spans (the mesh's dp_shard dimension; may span pods). "
        "Default: the processes left after dp_replicate_size × context_parallel_size × tensor_parallel_size "
        "when `fsdp` is set, else 1.",
        ge=1,
    )
    dp_replicate_size: int | None = field(
        None,
        description="Replicas of the model across data-parallel groups (the mesh's outermost dimension; "
        "with dp_shard_size > 1 this is HSDP). Default: the processes left over without `fsdp`, else 1.",
        ge=1,
    )
    ring_attn: bool = field(
        False,
        description="Ring attention for context parallelism: how context_parallel_size > 1 always attends in "
        "kubetune (true or false alike); refused without it.",
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
