"""Preference training (`rl:` dpo, ipo, orpo, kto, simpo): trl's losses on kubetune's packed rows.

A preference example is ONE packed row of two segments (positions restart at 0 for the second;
padding is a third segment), labels -100 on the prompts: prompt+chosen then prompt+rejected for the
pair types, prompt+completion then prompt+another row's completion (the KL segment) for KTO. So
the packed attention paths of SFT (flash varlen, SDPA block-causal masks) run it unchanged, and
each segment's log-probability is the sum over its trained tokens.

The losses are in kubetune.train.preference_losses (trl's, checked against trl's trainers); the
metrics carry trl's names (`rewards/chosen`, ...).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from kubetune.config.preference import PreferenceObjective
from kubetune.train import preference_losses as losses
from kubetune.train.loss import IGNORE_INDEX, causal_lm, causal_lm_loss_sum, decoder_of


def pair_logps(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    position_ids: torch.Tensor,
    lm_head: nn.Module,
    *,
    wpo_weights: bool = False,
) -> tuple[torch.Tensor, ...]:
    """([B, 2] summed log-probs, [B, 2] trained-token counts) of each row's chosen and rejected segment,
    plus with `wpo_weights` the [B, 2] WPO weights of the segments (trl's use_weighting, no gradient):
    exp of the mean over the segment's tokens of log p(token) - log sum_v p(v)^2.

    Segment k of a row starts at its k-th position id 0; a target belongs to the segment of the
    position that predicts it (shift_targets already masks the predictions across a boundary).
    Logits are computed only at trained positions.
    """
    segment = torch.cumsum((position_ids == 0).to(torch.int64), dim=-1) - 1  # 0 chosen, 1 rejected, 2+ pad
    trained = targets != IGNORE_INDEX
    if bool((trained & (segment > 1)).any()):
        raise ValueError("a preference row has trained tokens after its rejected segment")
    logits = lm_head(hidden[trained]).float()
    log_probs = F.log_softmax(logits, dim=-1)
    token_logps = torch.gather(log_probs, 1, targets[trained].unsqueeze(1)).squeeze(1)
    rows = torch.arange(targets.shape[0], device=targets.device).unsqueeze(1).expand_as(targets)
    slot = (rows * 2 + segment.clamp(max=1))[trained]
    width = targets.shape[0] * 2
    logps = torch.zeros(width, device=hidden.device, dtype=torch.float32).index_add(0, slot, token_logps)
    counts = torch.zeros(width, device=hidden.device, dtype=torch.float32).index_add(
        0, slot, torch.ones_like(token_logps)
    )
    if not wpo_weights:
        return logps.view(-1, 2), counts.view(-1, 2)
    with torch.no_grad():
        aligned = token_logps - torch.logsumexp(2 * log_probs, dim=-1)
        sums = torch.zeros(width, device=hidden.device, dtype=torch.float32).index_add(0, slot, aligned)
        weights = torch.exp(sums / counts.clamp(min=1.0))
    return logps.view(-1, 2), counts.view(-1, 2), weights.view(-1, 2)


def chosen_targets(input_ids: torch.Tensor, position_ids: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Next-token targets of the whole first segment (prompt + chosen) of the scored rows: ORPO's NLL
    is over the prompt too (trl's ORPOTrainer labels every attended token of the chosen sequence)."""
    segment = torch.cumsum((position_ids == 0).to(torch.int64), dim=-1) - 1
    targets = torch.full_like(input_ids, IGNORE_INDEX)
    follows = (segment[:, :-1] == 0) & (position_ids[:, 1:] != 0) & scored.unsqueeze(1)
    targets[:, :-1] = torch.where(follows, input_ids[:, 1:], IGNORE_INDEX)
    return targets


class PreferenceLoss(nn.Module):
    """What the distributed wrapper wraps for `rl:`: decoder -> row log-probs -> the rl type's loss.

    forward returns the micro-batch's loss times its rows; the loop divides by the step's count of
    rows (batches.Collate counts rows for preference data), so the gradient is that of trl's mean.
    The reference policy (dpo, ipo, kto) is, in this order of preference: the log-probs precomputed
    into the data (`ref_logps`, precompute_ref_log_probs), the frozen copy given as `reference_model`
    (a full fine-tune), or the model with its adapter disabled (LoRA: no second copy).
    Metric (sum, count) pairs since the last log line accumulate in `metric_sums`, read and reset by
    the loop when it logs (`take_metrics`).
    """

    def __init__(
        self, model: nn.Module, objective: PreferenceObjective, reference_model: nn.Module | None = None
    ):
        super().__init__()
        self.model = model
        self.objective = objective
        # A plain list keeps the frozen copy out of this module's parameters, state dict and DDP.
        self._frozen = [reference_model.eval().requires_grad_(False)] if reference_model is not None else []
        self._no_split_modules = getattr(causal_lm(model), "_no_split_modules", None)
        self.metric_sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def kl_group():
        """The ranks over which KTO's KL estimate is averaged: all of them when several train (DDP; the
        ranks of a tensor-parallel group hold the same rows, which leaves the mean unchanged); None alone."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return dist.group.WORLD
        return None

    def _hidden(self, model, input_ids, decoder_inputs):
        lm = causal_lm(model)
        out = decoder_of(lm)(input_ids=input_ids, use_cache=False, **decoder_inputs)
        return out.last_hidden_state, lm.get_output_embeddings()

    def _logps(self, input_ids, targets, position_ids, decoder_inputs, model=None):
        hidden, lm_head = self._hidden(self.model if model is None else model, input_ids, decoder_inputs)
        return pair_logps(hidden, targets, position_ids, lm_head)

    @contextmanager
    def reference(self):
        """The context in which `self.reference_model()` is the reference policy."""
        if self._frozen:
            yield self._frozen[0]
            return
        disable = getattr(self.model, "disable_adapter", None)
        if disable is None:
            raise ValueError(
                "a preference loss with a reference needs a peft adapter (the base is the reference), "
                "a frozen reference copy, or precomputed reference log-probs"
            )
        with disable():
            yield self.model

    @property
    def frozen_reference(self) -> nn.Module | None:
        """The frozen copy that is the reference of a full fine-tune (None otherwise)."""
        return self._frozen[0] if self._frozen else None

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> bool:
        """TR-DPO (trl.sync_ref_model): every `ref_sync` steps the frozen reference moves towards the
        policy, alpha x policy + (1 - alpha) x reference, with trl's SyncRefModelCallback. DDP keeps the
        policies of all ranks equal, so their references stay equal. True when it synced."""
        if self.objective.ref_sync is None or not self._frozen:
            return False
        alpha, every = self.objective.ref_sync
        if step % every:
            return False
        from trl.trainer.callbacks import SyncRefModelCallback

        SyncRefModelCallback.sync_target_model(self.model, self._frozen[0], alpha)
        return True

    @torch.no_grad()
    def reference_logps(self, input_ids, targets, position_ids, decoder_inputs) -> torch.Tensor:
        with self.reference() as model:
            return self._logps(input_ids, targets, position_ids, decoder_inputs, model=model)[0]

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        *,
        desirable: torch.Tensor | None = None,
        ref_logps: torch.Tensor | None = None,
        **decoder_inputs,
    ) -> torch.Tensor:
        objective = self.objective
        position_ids = decoder_inputs["position_ids"]
        hidden, lm_head = self._hidden(self.model, input_ids, decoder_inputs)
        logps, counts, *wpo = pair_logps(
            hidden, targets, position_ids, lm_head, wpo_weights=objective.use_weighting
        )
        # A row without trained tokens (an eval batch's padding row) is no pair: it adds nothing.
        scored = (counts > 0).all(dim=1)
        if objective.needs_reference and ref_logps is None:
            ref_logps = self.reference_logps(input_ids, targets, position_ids, decoder_inputs)
        if objective.rl in ("dpo", "ipo"):
            weights = wpo[0] if wpo else None
            assert ref_logps is not None  # dpo / ipo need the reference: set above
            result = losses.dpo(objective, logps, counts, ref_logps.to(logps.dtype), scored, weights)
        elif objective.rl == "kto":
            if desirable is None:
                raise ValueError("rl: kto needs each row's desirable label (a KTO dataset type)")
            assert ref_logps is not None  # kto needs the reference: set above
            result = losses.kto(
                objective, logps, ref_logps.to(logps.dtype), desirable, scored, kl_group=self.kl_group()
            )
        elif objective.rl == "orpo":
            nll_targets = chosen_targets(input_ids, position_ids, scored)
            nll = (
                causal_lm_loss_sum(hidden, nll_targets, lm_head),
                (nll_targets != IGNORE_INDEX).sum().float(),
            )
            result = losses.orpo(objective, logps, counts, nll, scored)
        elif objective.rl == "simpo":
            result = losses.simpo(objective, logps, counts, scored)
        else:
            raise ValueError(f"unknown rl type {objective.rl!r}")
        for name, (total, count) in result.metrics.items():
            previous = self.metric_sums.get(name)
            pair = (total.detach().float(), count.detach().float())
            self.metric_sums[name] = (
                pair if previous is None else (previous[0] + pair[0], previous[1] + pair[1])
            )
        return result.total

    @contextmanager
    def metrics_apart(self):
        """Forward passes inside (evaluation) count apart: the sums from before are restored after."""
        saved, self.metric_sums = self.metric_sums, {}
        try:
            yield
        finally:
            self.metric_sums = saved

    def take_metrics(self) -> dict[str, float] | None:
        """Means since the last call under trl's names, or None when no row was seen; resets the sums.

        rewards/margins is the chosen mean minus the rejected mean (trl's KTO definition, and for pairs
        the same number as the mean of the per-pair margins)."""
        sums, self.metric_sums = self.metric_sums, {}
        if not sums:
            return None
        values = torch.stack([torch.stack(pair) for pair in sums.values()]).cpu().tolist()
        means = {name: total / count for name, (total, count) in zip(sums, values, strict=True) if count > 0}
        if not means:
            return None
        if "rewards/chosen" in means and "rewards/rejected" in means:
            means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]
        return means
