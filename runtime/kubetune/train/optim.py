"""Optimizer and learning-rate schedule, built from the config.

    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, total_steps)

The schedule is one multiplier of the peak learning rate per optimizer step: a linear warmup, then
cosine (down to cosine_min_lr_ratio), linear (down to 0) or constant.
"""

from __future__ import annotations

import importlib.util
import math
from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from kubetune.train.errors import UserError

BNB_OPTIMIZERS = {"adamw_bnb_8bit": "AdamW8bit", "paged_adamw_8bit": "PagedAdamW8bit"}


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters; biases and normalisation weights are never decayed.

    Decided by name, not shape: under FSDP1 the parameters are flat shards by the time the optimizer
    is built, but their names are the original ones.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _never_decayed(name) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _never_decayed(name: str) -> bool:
    parts = name.lower().split(".")
    return (
        parts[-1] == "bias" or any("norm" in part for part in parts[:-1]) or "lora_magnitude_vector" in parts
    )


def check_request(cfg, *, cuda: bool) -> None:
    if cfg.optimizer not in BNB_OPTIMIZERS:
        return
    if not cuda or importlib.util.find_spec("bitsandbytes") is None:
        reason = "a CUDA GPU" if not cuda else "the bitsandbytes package, which is not installed"
        raise UserError(
            f"optimizer {cfg.optimizer} is a bitsandbytes optimizer and needs {reason}.",
            "Use `optimizer: adamw_torch_fused` (or adamw_torch), or run on a GPU image with bitsandbytes.",
            key="optimizer",
        )


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate)
    adam = {"lr": cfg.learning_rate, "betas": (cfg.adam_beta1, cfg.adam_beta2), "eps": cfg.adam_epsilon}
    if cfg.optimizer in BNB_OPTIMIZERS:
        import bitsandbytes as bnb

        return getattr(bnb.optim, BNB_OPTIMIZERS[cfg.optimizer])(groups, **adam)
    if cfg.optimizer == "adamw_torch_fused":
        return torch.optim.AdamW(groups, fused=True, **adam)
    return torch.optim.AdamW(groups, **adam)


def warmup_steps(cfg, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total_steps)
    if cfg.warmup_ratio:
        return math.ceil(cfg.warmup_ratio * total_steps)
    return 0


def lr_multiplier(step: int, *, kind: str, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based: the step about to run)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, total_steps: int) -> LambdaLR:
    schedule = partial(
        lr_multiplier,
        kind=cfg.lr_scheduler,
        warmup=warmup_steps(cfg, total_steps),
        total=total_steps,
        min_ratio=cfg.cosine_min_lr_ratio or 0.0,
    )
    return LambdaLR(optimizer, schedule)
