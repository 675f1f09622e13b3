"""Preference training (`rl: dpo` / `rl: ipo`): the pair loss on kubetune's packed rows.

A preference example is ONE packed row of two segments, prompt+chosen then prompt+rejected (positions
restart at 0 for the second; padding is a third segment), labels -100 on the prompts. So the packed
attention paths of SFT (flash varlen, SDPA block-causal masks) run it unchanged, and each segment's
log-probability is the sum over its trained tokens.

The reference policy of a LoRA run is the base model with the adapter disabled (peft's
`disable_adapter()`), run without gradients on the same rows: no second copy of the weights.

The pair losses are trl's (DPOTrainer's `sigmoid` and `ipo` loss types, trl >= 1.16): trl 1.x keeps
them inside `DPOTrainer._compute_loss` rather than as a function, so they are restated here over
per-sequence log-probs, and tests/unit/train/test_preference.py checks loss and reward metrics
against trl's `_compute_loss` on the same pairs. The metrics carry trl's names (`rewards/chosen`, ...).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from kubetune.train.loss import IGNORE_INDEX, causal_lm

PAIR_LOSSES = ("sigmoid", "ipo")
# Sums kept per micro-batch; the log line divides them by the pairs (trl logs the means).
METRIC_NAMES = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


def pair_logps(
    hidden: torch.Tensor, targets: torch.Tensor, position_ids: torch.Tensor, lm_head: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, 2] summed log-probs, [B, 2] trained-token counts) of each row's chosen and rejected segment.

    Segment k of a row starts at its k-th position id 0; a target belongs to the segment of the
    position that predicts it (shift_targets already masks the predictions across a boundary).
    Logits are computed only at trained positions.
    """
    segment = torch.cumsum((position_ids == 0).to(torch.int64), dim=-1) - 1  # 0 chosen, 1 rejected, 2+ pad
    trained = targets != IGNORE_INDEX
    if bool((trained & (segment > 1)).any()):
        raise ValueError("a preference row has trained tokens after its rejected segment")
    logits = lm_head(hidden[trained]).float()
    token_logps = torch.gather(F.log_softmax(logits, dim=-1), 1, targets[trained].unsqueeze(1)).squeeze(1)
    rows = torch.arange(targets.shape[0], device=targets.device).unsqueeze(1).expand_as(targets)
    slot = (rows * 2 + segment.clamp(max=1))[trained]
    width = targets.shape[0] * 2
    logps = torch.zeros(width, device=hidden.device, dtype=torch.float32).index_add(0, slot, token_logps)
    counts = torch.zeros(width, device=hidden.device, dtype=torch.float32).index_add(
        0, slot, torch.ones_like(token_logps)
    )
    return logps.view(-1, 2), counts.view(-1, 2)


def pair_losses(
    logps: torch.Tensor, ref_logps: torch.Tensor, counts: torch.Tensor, *, loss_type: str, beta: float
) -> torch.Tensor:
    """Per-pair loss [B] as trl's DPOTrainer computes it (reverse-KL scores, one loss type)."""
    logratios = logps - ref_logps  # [B, 2]: chosen, rejected
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * (logratios[:, 0] - logratios[:, 1]))
    if loss_type == "ipo":
        # trl normalises IPO's log-ratios by the completion length (confirmed with the IPO authors).
        per_token = logratios / counts.clamp(min=1.0)
        return (per_token[:, 0] - per_token[:, 1] - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown preference loss {loss_type!r}: use one of {', '.join(PAIR_LOSSES)}")


def reward_sums(
    logps: torch.Tensor, ref_logps: torch.Tensor, beta: float, scored: torch.Tensor
) -> torch.Tensor:
    """Sums over the scored pairs of the METRIC_NAMES values (detached), trl's definitions."""
    rewards = beta * (logps - ref_logps).detach()
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    weight = scored.float()
    return torch.stack(
        [
            (chosen * weight).sum(),
            (rejected * weight).sum(),
            ((chosen > rejected).float() * weight).sum(),
            ((chosen - rejected) * weight).sum(),
            (logps[:, 0].detach() * weight).sum(),
            (logps[:, 1].detach() * weight).sum(),
        ]
    )


class PreferenceLoss(nn.Module):
    """What the distributed wrapper wraps for `rl:`: decoder -> pair log-probs -> SUM of pair losses.

    The loop divides by the step's count of pairs (batches.Collate counts pairs for preference
    rows), so the gradient is that of trl's mean over pairs. Reward sums since the last log line
    accumulate in `metric_sums` (with `pairs`), read and reset by the loop when it logs.
    """

    def __init__(self, model: nn.Module, *, loss_type: str, beta: float):
        super().__init__()
        if loss_type not in PAIR_LOSSES:
            raise ValueError(f"unknown preference loss {loss_type!r}: use one of {', '.join(PAIR_LOSSES)}")
        self.model = model
        self.loss_type = loss_type
        self.beta = beta
        self._no_split_modules = getattr(causal_lm(model), "_no_split_modules", None)
        self.metric_sums: torch.Tensor | None = None
        self.pairs = 0

    def _logps(self, input_ids, targets, position_ids, decoder_inputs):
        lm = causal_lm(self.model)
        out = lm.get_decoder()(input_ids=input_ids, use_cache=False, **decoder_inputs)
        return pair_logps(out.last_hidden_state, targets, position_ids, lm.get_output_embeddings())

    def reference(self):
        """The context in which the model is the reference policy: the adapter disabled."""
        disable = getattr(self.model, "disable_adapter", None)
        if disable is None:
            raise ValueError("preference training needs a peft adapter: the reference is the base model")
        return disable()

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, **decoder_inputs) -> torch.Tensor:
        position_ids = decoder_inputs["position_ids"]
        logps, counts = self._logps(input_ids, targets, position_ids, decoder_inputs)
        with torch.no_grad(), self.reference():
            ref_logps, _ = self._logps(input_ids, targets, position_ids, decoder_inputs)
        # A row without trained tokens (an eval batch's padding row) is no pair: it adds nothing.
        scored = (counts > 0).all(dim=1)
        sums = reward_sums(logps, ref_logps, self.beta, scored)
        self.metric_sums = sums if self.metric_sums is None else self.metric_sums + sums
        self.pairs += int(scored.sum())
        losses = pair_losses(logps, ref_logps, counts, loss_type=self.loss_type, beta=self.beta)
        return torch.where(scored, losses, torch.zeros_like(losses)).sum()

    @contextmanager
    def metrics_apart(self):
        """Forward passes inside (evaluation) count apart: the sums from before are restored after."""
        saved = self.metric_sums, self.pairs
        self.metric_sums, self.pairs = None, 0
        try:
            yield
        finally:
            self.metric_sums, self.pairs = saved

    def take_metrics(self) -> dict[str, float] | None:
        """Means since the last call (trl's names), or None when no pair was seen; resets the sums."""
        if self.metric_sums is None or not self.pairs:
            return None
        means = (self.metric_sums.detach().float().cpu() / self.pairs).tolist()
        self.metric_sums, self.pairs = None, 0
        return dict(zip(METRIC_NAMES, means, strict=True))
