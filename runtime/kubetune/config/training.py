"""Optimisation, schedule, batch sizes, evaluation, checkpoints and logging."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator
from pydantic_core import PydanticCustomError

from .base import Section, field
from .data import StepInterval

Optimizer = Literal[
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adamw_torch_8bit",
    "adamw_torch_4bit",
    "muon",
    "sgd",
]
# bitsandbytes' optimizers: their states cannot hold FSDP2's DTensor shards.
BNB_OPTIMIZERS = ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
# transformers' SchedulerType names (get_scheduler), with transformers' meaning: `constant` does not warm up.
LrScheduler = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
]
# Schedules that adapt to the eval loss: stepped after each evaluation instead of each optimizer step.
EVAL_DRIVEN_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")
# lr_scheduler_kwargs each schedule takes (transformers' schedule functions, ReduceLROnPlateau, GreedyLR);
# the required ones first in REQUIRED_SCHEDULER_KWARGS.
SCHEDULER_KWARGS: dict[str, tuple[str, ...]] = {
    "linear": (),
    "cosine": ("num_cycles",),
    "cosine_with_restarts": ("num_cycles",),
    "polynomial": ("lr_end", "power"),
    "constant": (),
    "constant_with_warmup": (),
    "inverse_sqrt": ("timescale",),
    "reduce_lr_on_plateau": (
        "mode",
        "factor",
        "patience",
        "threshold",
        "threshold_mode",
        "cooldown",
        "min_lr",
        "eps",
    ),
    "cosine_with_min_lr": ("num_cycles", "min_lr", "min_lr_rate"),
    "cosine_warmup_with_min_lr": ("num_cycles", "min_lr", "min_lr_rate", "warmup_lr_rate"),
    "warmup_stable_decay": (
        "num_decay_steps",
        "num_stable_steps",
        "warmup_type",
        "decay_type",
        "min_lr_ratio",
        "num_cycles",
    ),
    "greedy": (
        "mode",
        "factor",
        "patience",
        "threshold",
        "threshold_mode",
        "cooldown",
        "warmup",
        "min_lr",
        "max_lr",
        "eps",
        "smooth",
        "window_size",
        "reset_start",
    ),
}
REQUIRED_SCHEDULER_KWARGS: dict[str, tuple[str, ...]] = {"warmup_stable_decay": ("num_decay_steps",)}

# Values Axolotl (through transformers) accepts that kubetune does not: what to write instead.
AXOLOTL_OPTIMIZERS: dict[str, str] = {
    "adamw_hf": "write optimizer: adamw_torch",
    "adamw_bnb_32bit": "use adamw_torch_fused",
    "adafactor": "use adamw_torch_fused, or adamw_bnb_8bit to save memory",
    "lion_8bit": "use adamw_bnb_8bit",
    "lion_32bit": "use adamw_torch_fused",
    "paged_lion_8bit": "use paged_adamw_8bit",
    "paged_lion_32bit": "use adamw_torch_fused",
    "sgd_8bit": "write optimizer: sgd",
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
        "optimi_adamw ao_adamw_fp8 adopt_adamw came_pytorch dion sinkgd "
        "flash_adamw flash_adam flash_lion q_galore_adamw8bit".split(),
        "use adamw_torch_fused, or adamw_bnb_8bit / paged_adamw_8bit to save optimizer memory",
    ),
    **dict.fromkeys("flash_sgd flash_sgdw".split(), "use sgd"),
    "ao_adamw_8bit": "write optimizer: adamw_torch_8bit (torchao's 8-bit AdamW)",
    "ao_adamw_4bit": "write optimizer: adamw_torch_4bit (torchao's 4-bit AdamW)",
}
AXOLOTL_SCHEDULERS: dict[str, str] = {
    "one_cycle": "use cosine with warmup_ratio",
    "rex": "use cosine or linear",
    "log_sweep": "use cosine or linear",
    "jagged": "use cosine_with_restarts",
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
    def _whole_steps_or_fraction(cls, value: object) -> object:
        # transformers (and so Axolotl) reads a warmup_steps below 1 as a fraction of the total steps.
        if isinstance(value, float) and not 0 < value < 1:
            if not value.is_integer():
                raise PydanticCustomError(
                    "warmup_steps_fractional",
                    "warmup_steps is a whole number of steps, or a fraction below 1; got {value}",
                    {"value": value, "fix": f"write warmup_steps: {round(value)}"},
                )
            return int(value)
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
        description="`adamw_torch`, `adamw_torch_fused`; bitsandbytes (CUDA): `adamw_bnb_8bit` = `adamw_8bit`, "
        "`paged_adamw_8bit`, `paged_adamw_32bit`; torchao's low-bit AdamW (works with FSDP2): `adamw_torch_8bit`, "
        "`adamw_torch_4bit`; `muon` (torch.optim.Muon on the 2-D weights of the decoder layers, AdamW on the "
        "rest; not with FSDP or DeepSpeed); `sgd`. Default: `adamw_torch_fused`.",
    )
    learning_rate: float = field(
        description="Peak learning rate (required; typical: 2e-4 for LoRA, 1e-5 for a full fine-tune).", gt=0
    )
    lr_scheduler: LrScheduler = field(
        "cosine",
        description="Any schedule of transformers' `get_scheduler`, with its meaning: `cosine`, `linear`, "
        "`constant` (no warmup), `constant_with_warmup`, `cosine_with_restarts`, `polynomial`, `inverse_sqrt`, "
        "`cosine_with_min_lr`, `cosine_warmup_with_min_lr`, `warmup_stable_decay` (needs "
        "`lr_scheduler_kwargs.num_decay_steps`), and `reduce_lr_on_plateau` / `greedy` (stepped with the eval "
        "loss after each evaluation; need evaluation data). Default: `cosine`.",
    )
    lr_scheduler_kwargs: dict[str, Any] | None = field(
        None,
        description="Extra arguments of the schedule (transformers' `scheduler_specific_kwargs`), e.g. "
        "`num_cycles` for cosine_with_restarts, `num_decay_steps` for warmup_stable_decay.",
    )
    cosine_min_lr_ratio: float | None = field(
        None,
        description="cosine: floor of the decay as a fraction of `learning_rate`, in [0, 1].",
        ge=0,
        le=1,
    )
    cosine_constant_lr_ratio: float | None = field(
        None,
        description="cosine with `cosine_min_lr_ratio`: the decay reaches the floor at this fraction of the "
        "total steps and stays there (Axolotl's meaning), in [0, 1].",
        ge=0,
        le=1,
    )
    eta_min: float | None = field(
        None,
        description="cosine: floor of the decay as a learning rate (torch's CosineAnnealingLR name); "
        "the same as `cosine_min_lr_ratio: eta_min / learning_rate`.",
        ge=0,
    )
    lr_quadratic_warmup: bool = field(
        False, description="cosine: warm up quadratically ((step / warmup)²) instead of linearly."
    )
    warmup_steps: int | float | None = field(
        None,
        description="Warmup steps; a value below 1 is a fraction of the total steps (as in transformers). "
        "Set this or `warmup_ratio`.",
        ge=0,
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
    adam_epsilon: float = field(
        1e-8, description="Adam epsilon (also spelt `adam_eps`). Default: 1e-8.", gt=0
    )

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
    save_only_model: bool = field(
        False,
        description="Checkpoints hold the model weights and the trainer state only, without the optimizer and "
        "scheduler state (transformers' meaning): a fraction of the disk. A run resumed from such a "
        "checkpoint continues at its step, data position and learning rate with a fresh optimizer "
        "(its moments restart from zero, logged). Not with DeepSpeed or an adapter under FSDP. Default: false.",
    )
    save_strategy: Literal["steps", "epoch", "no"] | None = field(
        None,
        description="transformers' spelling of the checkpoint interval: `steps` (every `save_steps`, default "
        "500 as in transformers), `epoch` (once per epoch) or `no` (no checkpoints; a SIGTERM still saves one).",
    )
    eval_strategy: Literal["steps", "epoch", "no"] | None = field(
        None,
        description="transformers' spelling of the evaluation interval: `steps` (every `eval_steps`, default "
        "`logging_steps` as in transformers), `epoch` (once per epoch) or `no` (never evaluate).",
    )

    @field_validator("save_strategy", mode="before")
    @classmethod
    def _no_best(cls, value: object) -> object:
        if value == "best":
            raise PydanticCustomError(
                "save_strategy_best",
                "save_strategy: best (a checkpoint whenever the eval metric improves) is not implemented by kubetune",
                {
                    "fix": "write save_strategy: steps with save_steps (kubetune tracks best_eval_loss in the summary)"
                },
            )
        return value

    logging_steps: int = field(
        1, description="Log (and report progress) every N optimizer steps. Default: 1.", ge=1
    )
    loss_watchdog_threshold: float | None = field(
        None,
        description="Stop training (and save what was trained) once the logged training loss has stayed above "
        "this for `loss_watchdog_patience` consecutive log lines.",
        gt=0,
    )
    loss_watchdog_patience: int | None = field(
        None,
        description="Consecutive logged losses above `loss_watchdog_threshold` that stop a run. Default: 3.",
        ge=1,
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
