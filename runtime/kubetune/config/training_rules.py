"""Cross-field rules of the optimizer, the schedule, the checkpoint/eval strategies and the loss watchdog."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .kernels import CUT_CROSS_ENTROPY_PLUGIN
from .problems import ConfigProblem
from .rules import _has_eval_data as has_eval_data
from .rules import rule
from .schema import TrainConfig
from .training import EVAL_DRIVEN_SCHEDULERS, REQUIRED_SCHEDULER_KWARGS, SCHEDULER_KWARGS


@rule
def schedule_options(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    cosine = cfg.lr_scheduler == "cosine"
    for key in ("cosine_constant_lr_ratio", "eta_min", "lr_quadratic_warmup"):
        if getattr(cfg, key) not in (None, False) and not cosine:
            yield ConfigProblem(
                key,
                f"{key} applies to the cosine schedule, but lr_scheduler is {cfg.lr_scheduler}",
                f"remove {key}, or set `lr_scheduler: cosine`",
            )
    if cfg.eta_min is not None and cfg.cosine_min_lr_ratio is not None:
        yield ConfigProblem(
            "eta_min",
            "eta_min and cosine_min_lr_ratio both set the floor of the cosine decay",
            "keep only one of them (cosine_min_lr_ratio = eta_min / learning_rate)",
        )
    if cfg.eta_min is not None and cfg.eta_min > cfg.learning_rate:
        yield ConfigProblem(
            "eta_min",
            f"eta_min ({cfg.eta_min}) is above learning_rate ({cfg.learning_rate})",
            "use a floor below the peak learning rate",
        )
    if cfg.cosine_constant_lr_ratio and cfg.cosine_min_lr_ratio is None and cfg.eta_min is None:
        yield ConfigProblem(
            "cosine_constant_lr_ratio",
            "cosine_constant_lr_ratio holds the decay at its floor, but no floor is set",
            "add cosine_min_lr_ratio (the floor as a fraction of learning_rate)",
        )
    floor = cfg.cosine_min_lr_ratio is not None or cfg.eta_min is not None
    if cfg.lr_quadratic_warmup and (floor or cfg.cosine_constant_lr_ratio):
        yield ConfigProblem(
            "lr_quadratic_warmup",
            "lr_quadratic_warmup's schedule decays to 0: it cannot be combined with a cosine floor",
            "remove lr_quadratic_warmup, or the floor (cosine_min_lr_ratio / eta_min / cosine_constant_lr_ratio)",
        )
    if cfg.lr_scheduler in ("constant", *EVAL_DRIVEN_SCHEDULERS):
        for key in ("warmup_steps", "warmup_ratio"):
            if getattr(cfg, key):
                fix = "write `lr_scheduler: constant_with_warmup`" if cfg.lr_scheduler == "constant" else ""
                yield ConfigProblem(
                    key,
                    f"lr_scheduler {cfg.lr_scheduler} has no warmup (transformers' meaning), but {key} is set",
                    fix or f"remove {key}",
                )
    yield from _scheduler_kwargs(cfg)
    if cfg.lr_scheduler in EVAL_DRIVEN_SCHEDULERS and not has_eval_data(cfg):
        yield ConfigProblem(
            "lr_scheduler",
            f"{cfg.lr_scheduler} lowers the learning rate when the eval loss stops improving, but there is no "
            "evaluation data",
            "add `val_set_size: 0.05` (or test_datasets), or pick another lr_scheduler",
        )


def _scheduler_kwargs(cfg: TrainConfig) -> Iterator[ConfigProblem]:
    allowed = SCHEDULER_KWARGS[cfg.lr_scheduler]
    given = cfg.lr_scheduler_kwargs or {}
    for key in given:
        if key not in allowed:
            takes = ", ".join(allowed) if allowed else "none"
            yield ConfigProblem(
                f"lr_scheduler_kwargs.{key}",
                f"{cfg.lr_scheduler} takes no argument '{key}'",
                f"remove it (arguments of {cfg.lr_scheduler}: {takes})",
            )
    for key in REQUIRED_SCHEDULER_KWARGS.get(cfg.lr_scheduler, ()):
        if key not in given:
            yield ConfigProblem(
                "lr_scheduler_kwargs",
                f"{cfg.lr_scheduler} needs lr_scheduler_kwargs.{key}",
                f"add `lr_scheduler_kwargs: {{{key}: N}}`",
            )
    if cfg.lr_scheduler in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        floors = [key for key in ("min_lr", "min_lr_rate") if key in given]
        if len(floors) != 1:
            yield ConfigProblem(
                "lr_scheduler_kwargs",
                f"{cfg.lr_scheduler} needs exactly one of lr_scheduler_kwargs.min_lr / min_lr_rate",
                "add `lr_scheduler_kwargs: {min_lr_rate: 0.1}`, or use cosine with cosine_min_lr_ratio",
            )


@rule
def strategies(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    contradicting = {
        ("save_strategy", "no"): ("save_steps", "saves_per_epoch"),
        ("save_strategy", "epoch"): ("save_steps", "saves_per_epoch"),
        ("save_strategy", "steps"): ("saves_per_epoch",),
        ("eval_strategy", "no"): ("eval_steps", "evals_per_epoch"),
        ("eval_strategy", "epoch"): ("eval_steps", "evals_per_epoch"),
        ("eval_strategy", "steps"): ("evals_per_epoch",),
    }
    for (key, value), others in contradicting.items():
        if getattr(cfg, key) != value:
            continue
        for other in others:
            if getattr(cfg, other) is not None:
                yield ConfigProblem(
                    other, f"{other} contradicts {key}: {value}", f"keep only one of {key} / {other}"
                )
    if cfg.eval_strategy in ("steps", "epoch") and not has_eval_data(cfg):
        yield ConfigProblem(
            "eval_strategy",
            f"eval_strategy: {cfg.eval_strategy} evaluates, but there is no evaluation data",
            "add `val_set_size: 0.05` (or test_datasets), or write eval_strategy: no",
        )
    if cfg.loss_watchdog_patience is not None and cfg.loss_watchdog_threshold is None:
        yield ConfigProblem(
            "loss_watchdog_patience",
            "loss_watchdog_patience counts losses above loss_watchdog_threshold, which is not set",
            "add loss_watchdog_threshold, or remove loss_watchdog_patience",
        )


@rule
def optimizer_placement(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    if cfg.ddp_find_unused_parameters and (cfg.fsdp or cfg.deepspeed is not None):
        yield ConfigProblem(
            "ddp_find_unused_parameters",
            "ddp_find_unused_parameters is a DDP option, but this run shards with FSDP or DeepSpeed",
            "remove ddp_find_unused_parameters",
        )
    if cfg.optimizer == "muon" and (cfg.fsdp or cfg.deepspeed is not None):
        yield ConfigProblem(
            "optimizer",
            "muon orthogonalises each whole weight matrix, which FSDP and DeepSpeed shard across ranks",
            "use muon with one GPU or DDP, or adamw_torch_8bit / adamw_torch_fused with FSDP",
        )


@rule
def fast_path_switches(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    loss_keys = ("liger_fused_linear_cross_entropy", "liger_cross_entropy", "cut_cross_entropy")
    values = {key: getattr(cfg, key) for key in loss_keys if getattr(cfg, key) is not None}
    if CUT_CROSS_ENTROPY_PLUGIN in (cfg.plugins or ()):
        values["plugins"] = True
    if len(set(values.values())) > 1:
        on = [key for key, value in values.items() if value]
        off = [key for key, value in values.items() if not value]
        yield ConfigProblem(
            off[0],
            f"{off[0]} switches the fused linear cross-entropy off, but {on[0]} switches it on",
            "keep one of them (they all name kubetune's one fused loss)",
        )

    rms_norm = {cfg.liger_rms_norm, cfg.flash_attn_rms_norm} - {None}
    if len(rms_norm) > 1:
        yield ConfigProblem(
            "flash_attn_rms_norm",
            "flash_attn_rms_norm and liger_rms_norm disagree; both switch kubetune's one fused RMSNorm",
            "keep one of them",
        )
    swiglu = {cfg.liger_glu_activation, cfg.flash_attn_fuse_mlp} - {None}
    if len(swiglu) > 1:
        yield ConfigProblem(
            "flash_attn_fuse_mlp",
            "flash_attn_fuse_mlp and liger_glu_activation disagree; both switch kubetune's one fused SwiGLU",
            "keep one of them",
        )
