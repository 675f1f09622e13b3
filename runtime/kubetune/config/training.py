"""Optimisation, schedule, batch sizes, evaluation, checkpoints and logging."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator
from pydantic_core import PydanticCustomError

from .base import Section, field
from .data import StepInterval

Optimizer = Literal["adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "paged_adamw_8bit", "sgd"]
LrScheduler = Literal["cosine", "linear", "constant"]

# Values Axolotl (through transformers) accepts that kubetune does not: what to write instead.
AXOLOTL_OPTIMIZERS: dict[str, str] = {
    "adamw_8bit": "write optimizer: adamw_bnb_8bit (the same bitsandbytes 8-bit AdamW)",
    "adamw_hf": "write optimizer: adamw_torch",
    "adamw_torch_4bit": "use adamw_bnb_8bit or paged_adamw_8bit",
    "paged_adamw_32bit": "use paged_adamw_8bit, or adamw_torch_fused",
    "adamw_bnb_32bit": "use adamw_torch_fused",
    "adafactor": "use adamw_torch_fused, or adamw_bnb_8bit to save memory",
    "lion_8bit": "use adamw_bnb_8bit",
    "lion_32bit": "use adamw_torch_fused",
    "paged_lion_8bit": "use paged_adamw_8bit",
    "paged_lion_32bit": "use adamw_torch_fused",
    "sgd_8bit": "write optimizer: sgd",
    "adamw_torch_8bit": "use adamw_bnb_8bit (bitsandbytes 8-bit AdamW)",
    "adamw_anyprecision": "use adamw_torch_fused",
    "adamw_apex_fused": "use adamw_torch_fused",
    "adamw_torch_xla": "use adamw_torch_fused",
    "adamw_torch_npu_fused": "use adamw_torch_fused",
    "adagrad": "use adamw_torch_fused",
    "rmsprop": "use adamw_torch_fused",
    "galore_adamw": "use adamw_bnb_8bit to save optimizer memory",
    "galore_adamw_8bit": "use adamw_bnb_8bit",
    "lomo": "use adamw_bnb_8bit to save optimizer memory",
    "adalomo": "use adamw_bnb_8bit to save optimizer memory",
    "schedule_free_adamw": "use adamw_torch_fused",
    "grokadamw": "use adamw_torch_fused",
    **dict.fromkeys(
        "optimi_adamw ao_adamw_4bit ao_adamw_8bit ao_adamw_fp8 adopt_adamw came_pytorch muon dion sinkgd "
        "flash_adamw flash_adam flash_lion q_galore_adamw8bit".split(),
        "use adamw_torch_fused, or adamw_bnb_8bit / paged_adamw_8bit to save optimizer memory",
    ),
    **dict.fromkeys("flash_sgd flash_sgdw".split(), "use sgd"),
}
AXOLOTL_SCHEDULERS: dict[str, str] = {
    "constant_with_warmup": "write lr_scheduler: constant (kubetune's constant schedule warms up first)",
    "cosine_with_min_lr": "write lr_scheduler: cosine with cosine_min_lr_ratio",
    "cosine_with_restarts": "use cosine",
    "polynomial": "use linear",
    "inverse_sqrt": "use cosine or linear",
    "reduce_lr_on_plateau": "use cosine or linear",
    "one_cycle": "use cosine with warmup_ratio",
    "rex": "use cosine or linear",
    "log_sweep": "use cosine or linear",
    "warmup_stable_decay": "use cosine or linear",
}


def _known_choice(value: object, table: dict[str, str], what: str) -> object:
    if isinstance(value, str) and value in table:
        raise PydanticCustomError(
            f"{what}_not_implemented",
            "'{value}' is an Axolotl {what} kubetune does not implement",
            {"value": value, "what": what.replace("_", " "), "fix": table[value]},
        )
    return value


class GradientCheckpointingKwargs(Section):
    """Options passed to gradient checkpointing."""

    use_reentrant: bool | None = field(
        None, description="Use the reentrant checkpoint implementation. Default: false."
    )


class TrainingKeys(Section):
    """Training"""

    @field_validator("optimizer", mode="before")
    @classmethod
    def _known_optimizer(cls, value: object) -> object:
        return _known_choice(value, AXOLOTL_OPTIMIZERS, "optimizer")

    @field_validator("warmup_steps", mode="before")
    @classmethod
    def _steps_not_ratio(cls, value: object) -> object:
        if isinstance(value, float) and 0 < value < 1:
            raise PydanticCustomError(
                "warmup_steps_fraction",
                "warmup_steps counts steps; {value} looks like a fraction",
                {"value": value, "fix": f"write warmup_ratio: {value} instead"},
            )
        return value

    @field_validator("lr_scheduler", mode="before")
    @classmethod
    def _known_scheduler(cls, value: object) -> object:
        return _known_choice(value, AXOLOTL_SCHEDULERS, "lr_scheduler")

    num_epochs: float | None = field(
        None,
        description="Passes over the training data (fractions allowed). Set this, `max_steps`, or both "
        "(training stops at whichever comes first).",
        gt=0,
    )
    max_steps: int | None = field(None, description="Stop after this many optimizer steps.", ge=1)
    micro_batch_size: int = field(1, description="Rows per GPU per forward pass. Default: 1.", ge=1)
    gradient_accumulation_steps: int = field(
        1, description="Micro-batches accumulated per optimizer step. Default: 1.", ge=1
    )
    eval_batch_size: int | None = field(
        None, description="Rows per GPU in evaluation. Default: `micro_batch_size`.", ge=1
    )
    optimizer: Optimizer = field(
        "adamw_torch_fused",
        description="`adamw_torch`, `adamw_torch_fused`, `adamw_bnb_8bit`, `paged_adamw_8bit` (both need "
        "bitsandbytes) or `sgd`. Default: `adamw_torch_fused`.",
    )
    learning_rate: float = field(
        description="Peak learning rate (required; typical: 2e-4 for LoRA, 1e-5 for a full fine-tune).", gt=0
    )
    lr_scheduler: LrScheduler = field(
        "cosine", description="`cosine`, `linear` or `constant` (each after the warmup). Default: `cosine`."
    )
    cosine_min_lr_ratio: float | None = field(
        None,
        description="cosine: floor of the decay as a fraction of `learning_rate`, in [0, 1].",
        ge=0,
        le=1,
    )
    warmup_steps: int | None = field(
        None, description="Linear warmup steps. Set this or `warmup_ratio`.", ge=0
    )
    warmup_ratio: float | None = field(
        None, description="Linear warmup as a fraction of the total steps, in [0, 1).", ge=0, lt=1
    )
    weight_decay: float = field(0.0, description="Decoupled weight decay. Default: 0.", ge=0)
    max_grad_norm: float = field(
        1.0, description="Gradient clipping norm; 0 disables clipping. Default: 1.0.", ge=0
    )
    adam_beta1: float = field(0.9, description="Adam beta1. Default: 0.9.", ge=0, lt=1)
    adam_beta2: float = field(0.999, description="Adam beta2. Default: 0.999.", ge=0, lt=1)
    adam_epsilon: float = field(1e-8, description="Adam epsilon. Default: 1e-8.", gt=0)

    gradient_checkpointing: bool = field(
        False,
        description="Recompute activations in the backward pass to save memory. Axolotl's `offload` is "
        "read as `gradient_checkpointing: true` with `activation_offloading: true`.",
    )
    activation_offloading: bool = field(
        False,
        description="Keep the tensors saved for the backward pass in CPU memory (pinned) instead of GPU "
        "memory, copied back when the backward pass needs them (torch's save_on_cpu): less GPU memory, "
        "more host-device traffic; the result is unchanged. With gradient checkpointing these are the "
        "checkpointed layers' inputs. Axolotl's `legacy` value means the same here.",
    )

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _no_offload(cls, value: object) -> object:
        if isinstance(value, str) and value == "offload_disk":
            raise PydanticCustomError(
                "gradient_checkpointing_offload",
                "gradient_checkpointing: {value} (activation offloading to disk) is not implemented by kubetune",
                {"value": value, "fix": "write gradient_checkpointing: offload (offloads to CPU memory)"},
            )
        if value == "offload":  # left unfolded by _one_offloading_spelling: a contradiction
            raise PydanticCustomError(
                "gradient_checkpointing_offload_contradiction",
                "gradient_checkpointing: offload asks for activation offloading, but activation_offloading is false",
                {"fix": "write gradient_checkpointing: true to checkpoint without offloading"},
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _one_offloading_spelling(cls, data: object) -> object:
        """`gradient_checkpointing: offload` and `activation_offloading: legacy` in kubetune's one form."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("activation_offloading") == "legacy":
            data["activation_offloading"] = True
        if data.get("gradient_checkpointing") == "offload" and data.get("activation_offloading") is not False:
            data["gradient_checkpointing"] = True
            data["activation_offloading"] = True
        return data

    gradient_checkpointing_kwargs: GradientCheckpointingKwargs | None = field(
        None, description="Options for gradient checkpointing (`use_reentrant`)."
    )

    eval_steps: StepInterval | None = field(
        None,
        description="Evaluate every N steps (a float in (0, 1): that fraction of the total steps). "
        "Set this or `evals_per_epoch`. Needs evaluation data to have an effect.",
    )
    evals_per_epoch: int | None = field(
        None, description="Evaluate this many times per epoch (0: never).", ge=0
    )
    save_steps: StepInterval | None = field(
        None,
        description="Checkpoint every N steps (a float in (0, 1): that fraction of the total steps). "
        "Set this or `saves_per_epoch`. Default: once per epoch.",
    )
    saves_per_epoch: int | None = field(None, description="Checkpoint this many times per epoch.", ge=1)
    save_total_limit: int | None = field(
        None,
        description="Keep at most this many checkpoints (oldest deleted first). Default: keep all.",
        ge=1,
    )
    logging_steps: int = field(
        1, description="Log (and report progress) every N optimizer steps. Default: 1.", ge=1
    )
    early_stopping_patience: int | None = field(
        None, description="Stop after this many evaluations without improvement of the eval loss.", ge=1
    )
    resume_from_checkpoint: str | None = field(
        None, description="Checkpoint directory to resume from (wins over `auto_resume_from_checkpoints`)."
    )
    auto_resume_from_checkpoints: bool = field(
        True,
        description="Resume from the newest complete checkpoint in `output_dir` when one exists (a restarted "
        "pod continues where it stopped). Default: true.",
    )
