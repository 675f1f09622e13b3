"""The losses of each `rl:` type over per-row log-probs, as trl computes them, and their metrics.

Inputs are [B, 2] tensors of a micro-batch's rows (kubetune.train.preference): summed log-probs of
the two segments, their trained-token counts, the reference's log-probs (dpo, ipo, kto), and
`scored` [B], the rows that are real (an eval batch pads with rows of no trained tokens).

  * dpo (sigmoid, robust, exo_pair, sft, or a weighted list of them) / ipo: trl's DPOTrainer keeps
    these inside `_compute_loss`: restated here, with its label smoothing (robust, exo_pair) and WPO
    weighting (use_weighting).
  * orpo: trl's `ORPOTrainer.odds_ratio_loss`, called as is, on per-token mean log-probs, plus the
    NLL of prompt + chosen (ORPOTrainer's `chosen_nll_loss`: the token mean over the micro-batch).
  * simpo: trl's `CPOTrainer.cpo_loss` with loss_type "simpo", called as is, on per-token mean
    log-probs, plus `cpo_alpha` x the NLL of the chosen completions (token mean over the micro-batch).
  * kto: a row is [prompt + completion][prompt + another row's completion] (the KL segment), with a
    desirable/undesirable label; trl's KTOTrainer keeps the loss inside `_compute_loss`: restated
    here. The KL estimate is the mean of the KL segments' log-ratios over the micro-batches of all
    data-parallel ranks (trl gathers the ranks' means), detached and clamped at 0, as trl's.

Each returns `Objective`: `total`, the micro-batch's loss times its count of scored rows (the loop
sums micro-batches and divides by the step's rows, so one micro-batch per step gives trl's mean),
and metric (sum, count) pairs named as trl logs them; tests/unit/train/test_preference_losses.py
checks each against trl's trainer on the same batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F

from kubetune.config.preference import PreferenceObjective


@dataclass
class Objective:
    total: torch.Tensor  # scalar: the loss of the micro-batch x its scored rows
    metrics: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # name: (sum, count)


def _masked_sum(values: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (values.detach().float() * weight).sum(), weight.sum()


def _pair_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps, scored) -> dict:
    weight = scored.float()
    return {
        "rewards/chosen": _masked_sum(chosen_rewards, weight),
        "rewards/rejected": _masked_sum(rejected_rewards, weight),
        "rewards/accuracies": _masked_sum((chosen_rewards > rejected_rewards).float(), weight),
        "logps/chosen": _masked_sum(chosen_logps, weight),
        "logps/rejected": _masked_sum(rejected_logps, weight),
    }


def _per_batch(value: torch.Tensor, scored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-micro-batch metric (trl logs its mean over batches) as (value, 1); (0, 0) for a batch
    without a scored row (an eval batch of padding rows, whose means are empty), which adds nothing."""
    any_row = scored.any()
    value = torch.where(any_row, value.detach().float(), torch.zeros((), device=value.device))
    return value, any_row.float()


def _mean_of_scored(per_row: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    return torch.where(scored, per_row, torch.zeros_like(per_row)).sum()


def _dpo_term(
    loss_type: str, objective: PreferenceObjective, logps, counts, logratios, scored
) -> torch.Tensor:
    """[B] per-pair loss of one of DPOTrainer's loss types (reverse-KL scores)."""
    beta, smoothing = objective.beta, objective.label_smoothing
    delta = logratios[:, 0] - logratios[:, 1]
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss_type == "robust":  # rDPO: unbiased under a share `smoothing` of flipped labels
        clean = -(1 - smoothing) * F.logsigmoid(beta * delta)
        flipped = -smoothing * F.logsigmoid(-beta * delta)
        return (clean - flipped) / (1 - 2 * smoothing)
    if loss_type == "exo_pair":  # EXO: KL(softmax of the rewards || [1 - smoothing, smoothing])
        chosen_q, rejected_q = torch.sigmoid(beta * delta), torch.sigmoid(-beta * delta)
        return chosen_q * (F.logsigmoid(beta * delta) - math.log1p(-smoothing)) + rejected_q * (
            F.logsigmoid(-beta * delta) - math.log(smoothing)
        )
    if loss_type == "ipo":
        # trl normalises IPO's log-ratios by the completion length (confirmed with the IPO authors).
        per_token = logratios / counts.clamp(min=1.0)
        return (per_token[:, 0] - per_token[:, 1] - 1 / (2 * beta)) ** 2
    if loss_type == "sft":  # the chosen completions' NLL, the token mean of the micro-batch, for each pair
        chosen = torch.where(scored, logps[:, 0], torch.zeros_like(logps[:, 0]))
        tokens = torch.where(scored, counts[:, 0], torch.zeros_like(counts[:, 0]))
        return (-chosen.sum() / tokens.sum().clamp(min=1.0)).expand(logps.shape[0])
    raise ValueError(f"unknown DPO loss type {loss_type!r}: use sigmoid, ipo, robust, exo_pair or sft")


def dpo(objective: PreferenceObjective, logps, counts, ref_logps, scored, wpo_weights=None) -> Objective:
    """DPOTrainer's loss: the weighted sum of its loss types' (sigmoid, ipo, robust, exo_pair, sft)
    per-pair losses; rewards beta x (policy - reference). `wpo_weights` [B, 2] (dpo_use_weighting):
    each term's per-pair loss times the pair's chosen x rejected weight, as trl applies it."""
    logratios = logps - ref_logps  # [B, 2]: chosen, rejected
    losses = torch.zeros_like(logratios[:, 0])
    for loss_type, weight in objective.dpo_losses:
        term = _dpo_term(loss_type, objective, logps, counts, logratios, scored)
        if wpo_weights is not None:
            term = term * wpo_weights[:, 0] * wpo_weights[:, 1]
        losses = losses + weight * term
    rewards = objective.beta * logratios.detach()
    metrics = _pair_metrics(rewards[:, 0], rewards[:, 1], logps[:, 0], logps[:, 1], scored)
    return Objective(_mean_of_scored(losses, scored), metrics)


def _trl_self(objective: PreferenceObjective, device: torch.device, **extra) -> SimpleNamespace:
    """What trl's loss methods read of their trainer: the config's numbers and the device."""
    return SimpleNamespace(beta=objective.beta, accelerator=SimpleNamespace(device=device), **extra)


def _trl_experimental(name: str):
    """trl's ORPOTrainer / CPOTrainer class (trl.experimental in trl 1.x; pinned in constraints.txt)."""
    import importlib
    import warnings

    with warnings.catch_warnings():  # "trl.experimental APIs may change": the pin and the tests guard it
        warnings.simplefilter("ignore")
        module = importlib.import_module(f"trl.experimental.{name.lower()}.{name.lower()}_trainer")
    return getattr(module, f"{name}Trainer")


def orpo(objective: PreferenceObjective, logps, counts, nll: tuple[torch.Tensor, torch.Tensor], scored):
    """ORPO: NLL of prompt + chosen minus beta x log sigmoid(log odds ratio) (trl's odds_ratio_loss)."""
    ORPOTrainer = _trl_experimental("ORPO")  # noqa: N806

    mean_logps = logps / counts.clamp(min=1.0)  # ORPOTrainer averages the log-probs over the tokens
    keep = scored.nonzero().squeeze(1)
    chosen, rejected = mean_logps[keep, 0], mean_logps[keep, 1]
    trl_self = _trl_self(objective, logps.device)
    losses, chosen_rewards, rejected_rewards, log_odds_ratio, log_odds_chosen = ORPOTrainer.odds_ratio_loss(
        trl_self, chosen, rejected
    )
    rows = keep.numel()
    nll_sum, nll_tokens = nll
    nll_mean = nll_sum / nll_tokens.clamp(min=1.0)
    total = rows * nll_mean - losses.sum()
    ones = torch.ones_like(chosen)
    metrics = _pair_metrics(chosen_rewards, rejected_rewards, chosen, rejected, ones)
    metrics["nll_loss"] = _per_batch(nll_mean, scored)
    # trl logs the micro-batch means of these two
    metrics["log_odds_ratio"] = _per_batch(log_odds_ratio, scored)
    metrics["log_odds_chosen"] = _per_batch(log_odds_chosen, scored)
    return Objective(total, metrics)


def simpo(objective: PreferenceObjective, logps, counts, scored) -> Objective:
    """SimPO as trl's CPOTrainer(loss_type="simpo") computes it, plus cpo_alpha x the chosen NLL."""
    CPOTrainer = _trl_experimental("CPO")  # noqa: N806

    mean_logps = logps / counts.clamp(min=1.0)  # CPOTrainer averages the log-probs for simpo
    keep = scored.nonzero().squeeze(1)
    chosen, rejected = mean_logps[keep, 0], mean_logps[keep, 1]
    trl_self = _trl_self(
        objective,
        logps.device,
        alpha=0.0,  # trl's AlphaPO transform off (CPOConfig's default)
        loss_type="simpo",
        simpo_gamma=objective.simpo_gamma,
        label_smoothing=0.0,
    )
    losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(trl_self, chosen, rejected)
    rows = keep.numel()
    total = losses.sum()
    metrics = _pair_metrics(chosen_rewards, rejected_rewards, chosen, rejected, torch.ones_like(chosen))
    if objective.cpo_alpha:
        # CPOTrainer's nll_loss: cross-entropy of the chosen completions, the token mean of the micro-batch.
        nll_mean = -logps[keep, 0].sum() / counts[keep, 0].sum().clamp(min=1.0)
        total = total + rows * objective.cpo_alpha * nll_mean
        metrics["nll_loss"] = _per_batch(nll_mean, scored)
    return Objective(total, metrics)


def kto(
    objective: PreferenceObjective,
    logps,
    ref_logps,
    desirable: torch.Tensor,
    scored,
    *,
    kl_group: dist.ProcessGroup | None = None,
) -> Objective:
    """KTOTrainer's `kto` loss: 1 - sigmoid(beta (logratio - KL)) for desirable rows, 1 - sigmoid(beta
    (KL - logratio)) for undesirable ones, weighted; KL = the mean KL-segment log-ratio of the scored
    rows of this micro-batch on every rank of `kl_group` (the data-parallel ranks; None: this rank only).

    trl averages the ranks' micro-batch means (gather_for_metrics(kl).mean()); the sum and count are
    all-reduced here instead, the same number when the ranks score as many rows (a training step) and
    the mean of the real rows when an eval batch pads some ranks with unscored rows. Every rank of the
    group must call it for each micro-batch, as every rank runs each train and eval batch."""
    beta = objective.beta
    weight = scored.float()
    logratios = logps[:, 0] - ref_logps[:, 0]
    kl_logratios = (logps[:, 1] - ref_logps[:, 1]).detach()  # trl computes the policy's KL logps without grad
    kl_totals = torch.stack([(kl_logratios * weight).sum(), weight.sum()])
    if kl_group is not None:
        dist.all_reduce(kl_totals, op=dist.ReduceOp.SUM, group=kl_group)
    kl = (kl_totals[0] / kl_totals[1].clamp(min=1.0)).clamp(min=0)
    good = desirable.bool() & scored
    bad = ~desirable.bool() & scored
    chosen_losses = 1 - torch.sigmoid(beta * (logratios - kl))
    rejected_losses = 1 - torch.sigmoid(beta * (kl - logratios))
    losses = torch.where(
        good,
        objective.desirable_weight * chosen_losses,
        objective.undesirable_weight * rejected_losses,
    )
    rewards = beta * logratios.detach()
    metrics = {
        "rewards/chosen": _masked_sum(rewards, good.float()),
        "rewards/rejected": _masked_sum(rewards, bad.float()),
        "logps/chosen": _masked_sum(logps[:, 0], good.float()),
        "logps/rejected": _masked_sum(logps[:, 0], bad.float()),
        "kl": _per_batch(kl, scored),
    }
    return Objective(_mean_of_scored(losses, scored), metrics)
