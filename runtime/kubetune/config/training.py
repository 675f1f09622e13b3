"""Optimisation, schedule, batch sizes, evaluation, checkpoints and logging."""

from __future__ import annotations

from typing import Literal

from .base import Section, field
from .data import StepInterval

Optimizer = Literal["adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "paged_adamw_8bit", "sgd"]
LrScheduler = Literal["cosine", "linear", "constant"]


class GradientCheckpointingKwargs(Section):
    """Options passed to gradient checkpointing."""

    use_reentrant: bool | None = field(
        None, description="Use the reentrant checkpoint implementation. Default: false."
    )


class TrainingKeys(Section):
    """Training"""

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
        description="cosine: floor of the decay as a fraction of `learning_rate`, in [0, 1).",
        ge=0,
        lt=1,
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
        False, description="Recompute activations in the backward pass to save memory."
    )
    gradient_checkpointing_kwargs: GradientCheckpointingKwargs | None = field(
        None, description="Options for gradient checkpointing (`use_reentrant`)."
    )

    eval_steps: StepInterval | None = field(
        None,
        description="Evaluate every N steps (a float in (0, 1): that fraction of the total steps). "
        "Set this or `evals_per_epoch`. Needs evaluation data to have an effect.",
    )
    evals_per_epoch: int | None = field(None, description="Evaluate this many times per epoch.", ge=1)
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
