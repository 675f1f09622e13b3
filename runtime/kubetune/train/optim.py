"""Optimizer and learning-rate schedule, built from the config.

    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, total_steps)
    after_evaluation(scheduler, eval_loss)     # steps the schedules driven by the eval loss

Every optimizer comes from a library: torch (AdamW, SGD, Muon), bitsandbytes (8-bit / paged AdamW),
torchao (8-bit / 4-bit AdamW, whose states are tensor subclasses that FSDP2's DTensors shard). Every
schedule named like one of transformers' comes from transformers' `get_scheduler`, with its meaning
(`constant` does not warm up, `constant_with_warmup` does); the cosine variants Axolotl adds
(`cosine_min_lr_ratio` / `eta_min`, `cosine_constant_lr_ratio`, `lr_quadratic_warmup`) are
multipliers of the peak learning rate per optimizer step, defined in `cosine_multiplier`.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from kubetune.train.errors import UserError

log = logging.getLogger(__name__)

BNB_OPTIMIZERS = {
    "adamw_bnb_8bit": "AdamW8bit",
    "adamw_8bit": "AdamW8bit",  # transformers' name for the same bitsandbytes optimizer
    "paged_adamw_8bit": "PagedAdamW8bit",
    "paged_adamw_32bit": "PagedAdamW32bit",
}
TORCHAO_OPTIMIZERS = {"adamw_torch_8bit": "AdamW8bit", "adamw_torch_4bit": "AdamW4bit"}
# bitsandbytes' optimizer states cannot hold FSDP2's DTensor shards (seen on an H200, bench/notes-gpu.md);
# under FSDP2 these names are served by the implementation of the same update whose states can: torchao's
# 8-bit AdamW (block-wise quantised moments, as bitsandbytes') and torch's AdamW for the 32-bit paged one
# (paging only moves the states between GPU and host memory; FSDP2 shards them instead).
FSDP2_SERVED = {
    "adamw_bnb_8bit": "adamw_torch_8bit",
    "adamw_8bit": "adamw_torch_8bit",
    "paged_adamw_8bit": "adamw_torch_8bit",
    "paged_adamw_32bit": "adamw_torch",
}


def served_optimizer(cfg, *, fsdp2: bool) -> str:
    """The optimizer that serves `cfg.optimizer` (its own name, except bitsandbytes' under FSDP2)."""
    if fsdp2 and cfg.optimizer in FSDP2_SERVED:
        return FSDP2_SERVED[cfg.optimizer]
    return cfg.optimizer


EVAL_DRIVEN = ("reduce_lr_on_plateau", "greedy")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters; biases and normalisation weights are never decayed.

    Decided by name, not shape: under FSDP1 the parameters are flat shards by the time the optimizer
    is built, but their names are the original ones.
    """
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
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


def check_request(cfg, *, cuda: bool, fsdp2: bool = False) -> None:
    optimizer = served_optimizer(cfg, fsdp2=fsdp2)
    if optimizer in TORCHAO_OPTIMIZERS and importlib.util.find_spec("torchao") is None:
        raise UserError(
            f"optimizer {cfg.optimizer} is served by torchao's low-bit AdamW{' under FSDP2' if fsdp2 else ''} "
            "and needs the torchao package, which is not installed.",
            "Install kubetune's runtime extra (it pins torchao), or use `optimizer: adamw_torch_fused`.",
            key="optimizer",
        )
    if optimizer not in BNB_OPTIMIZERS:
        return
    if not cuda or importlib.util.find_spec("bitsandbytes") is None:
        reason = "a CUDA GPU" if not cuda else "the bitsandbytes package, which is not installed"
        raise UserError(
            f"optimizer {cfg.optimizer} is a bitsandbytes optimizer and needs {reason}.",
            "Use `optimizer: adamw_torch_fused` (or adamw_torch_8bit, torchao's 8-bit AdamW), or run on a GPU "
            "image with bitsandbytes.",
            key="optimizer",
        )


def build_optimizer(cfg, model: nn.Module, *, fsdp2: bool = False) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay)
    optimizer = served_optimizer(cfg, fsdp2=fsdp2)
    if optimizer != cfg.optimizer:
        log.info(
            "optimizer %s under FSDP2: served by %s (bitsandbytes' states cannot hold FSDP2's sharded "
            "parameters)",
            cfg.optimizer,
            "torchao.optim.AdamW8bit" if optimizer == "adamw_torch_8bit" else "torch.optim.AdamW",
        )
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate)
    adam = {"lr": cfg.learning_rate, "betas": (cfg.adam_beta1, cfg.adam_beta2), "eps": cfg.adam_epsilon}
    if optimizer in BNB_OPTIMIZERS:
        import bitsandbytes as bnb

        return getattr(bnb.optim, BNB_OPTIMIZERS[optimizer])(groups, **adam)
    if optimizer in TORCHAO_OPTIMIZERS:
        import torchao.optim

        return getattr(torchao.optim, TORCHAO_OPTIMIZERS[optimizer])(groups, **adam)
    if optimizer == "muon":
        return build_muon(cfg, model, adam)
    if optimizer == "adamw_torch_fused":
        return torch.optim.AdamW(groups, fused=True, **adam)
    return torch.optim.AdamW(groups, **adam)


# -- Muon ------------------------------------------------------------------------------------------


def muon_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[tuple[str, nn.Parameter]]]:
    """(Muon's, the rest): Muon orthogonalises the 2-D weight matrices of the hidden layers; embeddings,
    the output head, norms and biases go to AdamW, as Muon's authors (and torch's docs) prescribe."""
    from kubetune.train.loss import causal_lm

    lm = causal_lm(getattr(model, "model", model))
    excluded = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        layer = getattr(lm, getter, lambda: None)()
        if layer is not None and getattr(layer, "weight", None) is not None:
            excluded.add(id(layer.weight))
    matrices, rest = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim == 2 and id(param) not in excluded and not _never_decayed(name):
            matrices.append(param)
        else:
            rest.append((name, param))
    return matrices, rest


class MuonWithAdamW(torch.optim.Optimizer):
    """torch.optim.Muon over the hidden weight matrices and torch.optim.AdamW over the rest, seen as one
    optimizer (one set of param_groups for the schedule, one state_dict for checkpoints).

    The two library optimizers do all the work; this class only shares their groups and state.
    """

    def __init__(self, matrices: list[nn.Parameter], rest_groups: list[dict], *, lr, weight_decay, adam):
        self.muon = torch.optim.Muon(
            [{"params": matrices, "weight_decay": weight_decay}],
            lr=lr,
            weight_decay=weight_decay,
            # Scales Muon's update to AdamW's RMS, so that AdamW's learning rate and weight decay fit it.
            adjust_lr_fn="match_rms_adamw",
        )
        self.adamw = torch.optim.AdamW(rest_groups, **adam)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, {"lr": lr})
        self._rebind()

    def _rebind(self) -> None:
        count = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:count], self.param_groups[count:]
        self.muon.state = self.adamw.state = self.state  # parameters are disjoint: one state dict serves both

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # replaces self.param_groups and self.state
        self._rebind()


def build_muon(cfg, model: nn.Module, adam: dict) -> MuonWithAdamW:
    matrices, rest = muon_parameters(model)
    if not matrices:
        raise UserError(
            "optimizer muon found no trainable 2-D weight matrix in the hidden layers.",
            "Use muon for full fine-tuning, or `optimizer: adamw_torch_fused`.",
            key="optimizer",
        )
    decay = [p for name, p in rest if not _never_decayed(name)]
    no_decay = [p for name, p in rest if _never_decayed(name)]
    groups = [
        g
        for g in (
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        )
        if g["params"]
    ]
    return MuonWithAdamW(matrices, groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, adam=adam)


# -- schedules -------------------------------------------------------------------------------------


def warmup_steps(cfg, total_steps: int) -> int:
    """Warmup length in steps: warmup_steps (below 1: a fraction of the total, as in transformers) or
    warmup_ratio of the total, rounded up."""
    if cfg.warmup_steps is not None:
        if isinstance(cfg.warmup_steps, float) and cfg.warmup_steps < 1:
            return math.ceil(cfg.warmup_steps * total_steps)
        return min(int(cfg.warmup_steps), total_steps)
    if cfg.warmup_ratio:
        return math.ceil(cfg.warmup_ratio * total_steps)
    return 0


def cosine_multiplier(
    step: int,
    *,
    warmup: int,
    total: int,
    min_ratio: float = 0.0,
    constant_ratio: float = 0.0,
    quadratic: bool = False,
) -> float:
    """Axolotl's cosine variants, as a multiplier of the peak learning rate at optimizer step `step`
    (0-based): linear (or, with `quadratic`, squared) warmup from 0, then a half cosine from 1 down to
    `min_ratio`, reached at the end, or at `constant_ratio` of the total steps and held from there."""
    if step < warmup:
        fraction = step / max(1, warmup)
        return fraction**2 if quadratic else fraction
    end = int(total * constant_ratio) if constant_ratio else total
    progress = min(1.0, (min(step, end) - warmup) / max(1, end - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_floor(cfg) -> float | None:
    """The cosine's floor as a fraction of the peak: cosine_min_lr_ratio, or eta_min / learning_rate."""
    if cfg.cosine_min_lr_ratio is not None:
        return cfg.cosine_min_lr_ratio
    if cfg.eta_min is not None:
        return cfg.eta_min / cfg.learning_rate
    return None


class EvalDrivenSchedule:
    """A schedule that moves only with the eval loss (ReduceLROnPlateau, transformers' GreedyLR): the
    per-optimizer-step `step()` does nothing, `after_evaluation` steps it with the loss (as the HF Trainer
    does)."""

    def __init__(self, inner):
        self.inner = inner

    def step(self, metrics: float | None = None) -> None:
        if metrics is not None:
            self.inner.step(metrics)

    def get_last_lr(self) -> list[float]:
        return self.inner.get_last_lr()

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, total_steps: int):
    warmup = warmup_steps(cfg, total_steps)
    floor = cosine_floor(cfg)
    if cfg.lr_scheduler == "cosine" and (cfg.lr_quadratic_warmup or cfg.cosine_constant_lr_ratio):
        schedule = partial(
            cosine_multiplier,
            warmup=warmup,
            total=total_steps,
            min_ratio=floor or 0.0,
            constant_ratio=cfg.cosine_constant_lr_ratio or 0.0,
            quadratic=bool(cfg.lr_quadratic_warmup),
        )
        return LambdaLR(optimizer, schedule)
    from transformers import get_scheduler

    name, kwargs = cfg.lr_scheduler, dict(cfg.lr_scheduler_kwargs or {})
    if name == "cosine" and floor is not None:
        name, kwargs = "cosine_with_min_lr", {**kwargs, "min_lr_rate": floor}
    scheduler = get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=kwargs,
    )
    return EvalDrivenSchedule(scheduler) if name in EVAL_DRIVEN else scheduler


def after_evaluation(scheduler, eval_loss: float) -> None:
    """Step a schedule driven by the eval loss (no-op for the per-step ones)."""
    if isinstance(scheduler, EvalDrivenSchedule):
        scheduler.step(eval_loss)
