"""The training objective: token-sum cross-entropy from the decoder's hidden states.

The loss is a SUM over trained tokens; the loop divides by the number of trained tokens of the whole
optimizer step (all accumulated micro-batches on all ranks), so every trained token weighs the same
however the tokens fall into micro-batches. Logits are computed here, from the hidden states and the
output head, and only for trained positions, so a chunked or fused kernel can replace
`causal_lm_loss_sum` without touching the loop or the model.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import partial
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

IGNORE_INDEX = -100
log = logging.getLogger(__name__)


def shift_targets(labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """targets[:, t] = the label of token t+1 (what position t predicts), IGNORE_INDEX where not trained.

    A position whose next token starts another packed example (position id 0) predicts nothing: the
    last token of one example must not learn the first token of the next.
    """
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    if position_ids is not None:
        targets[:, :-1].masked_fill_(position_ids[:, 1:] == 0, IGNORE_INDEX)
    return targets


def causal_lm_loss_sum(
    hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module, *, fused: bool | None = None
) -> torch.Tensor:
    """Sum of the cross-entropies of the trained positions (targets != IGNORE_INDEX), in float32.

    On CUDA with liger-kernel installed the fused kernel computes it (same value, no logits kept);
    otherwise, or with `fused=False` (the config's switch), the logits of the trained positions are
    materialised here.
    """
    if fused_loss_applies(hidden, lm_head, switch=fused):
        return fused_loss_sum(hidden, targets, lm_head)
    trained = targets != IGNORE_INDEX
    logits = lm_head(hidden[trained]).float()
    return F.cross_entropy(logits, targets[trained], reduction="sum")


_reported: set[str] = set()


def _once(message: str, *args) -> None:
    if message not in _reported:
        _reported.add(message)
        log.info(message, *args)


def loss_function(cfg):
    """The loss sum with the config's fused-loss switch (kubetune.train.fast_paths)."""
    from kubetune.train.fast_paths import fused_loss_switch

    return partial(causal_lm_loss_sum, fused=fused_loss_switch(cfg))


def fused_loss_applies(hidden: torch.Tensor, lm_head: nn.Module, switch: bool | None = None) -> bool:
    """Whether liger-kernel's fused linear cross-entropy can stand in for the plain loss here.

    It reads the output head's weight directly, so the head must be a plain Linear whose full weight is
    present: not a peft wrapper, not a DeepSpeed ZeRO-3 partition (gathered only when the module itself
    runs), not a DTensor shard. `switch` False keeps it off; True and None use it wherever it applies
    (kubetune's default already is on wherever it can run).
    """
    if switch is False:
        _once("loss: plain cross-entropy (the fused linear cross-entropy is switched off by the config)")
        return False
    if not hidden.is_cuda:
        if switch:
            _once("loss: fused linear cross-entropy switched on but not applied (it needs a CUDA GPU)")
        return False
    if importlib.util.find_spec("liger_kernel") is None:
        _once("loss: plain cross-entropy over materialised logits (liger-kernel is not installed)")
        return False
    weight = getattr(lm_head, "weight", None)
    plain = type(lm_head) is nn.Linear and weight is not None and not hasattr(weight, "ds_id")
    if not plain or type(weight).__name__ == "DTensor":
        _once("loss: plain cross-entropy (the output head is wrapped or sharded)")
        return False
    _once("loss: liger-kernel fused linear cross-entropy (logits never materialised)")
    return True


def fused_loss_sum(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    """liger-kernel's fused linear cross-entropy, summed: the logits are computed and consumed in
    chunks inside the kernel, and the gradients of hidden (and of the head, when trained) come out of
    the forward pass, so neither [tokens, vocab] logits nor their gradient are ever stored."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    flat = hidden.reshape(-1, hidden.shape[-1])
    weight = lm_head.weight
    if weight.dtype != flat.dtype:  # e.g. a float32 head after k-bit preparation; autocast skips Triton
        weight = weight.to(flat.dtype)
    bias = None if lm_head.bias is None else lm_head.bias.to(flat.dtype)
    return liger_fused_linear_cross_entropy(
        flat, weight, targets.reshape(-1), bias=bias, ignore_index=IGNORE_INDEX, reduction="sum"
    )


class CausalLMLoss(nn.Module):
    """The module the distributed wrapper (DDP, FSDP, DeepSpeed) wraps: decoder → hidden → loss sum.

    Wrapping the loss together with the model keeps the output head's call inside the wrapper's
    forward (FSDP gathers it there, ZeRO-3 fetches it by hook) while never materialising the logits of
    untrained positions.
    """

    def __init__(self, model: nn.Module, loss_fn=causal_lm_loss_sum, sequence_split=None):
        super().__init__()
        self.model = model  # the transformers model, or the peft model around it
        self.loss_fn = loss_fn
        # context parallelism (train/context_parallel.SequenceSplit): this rank's slice of the rows in,
        # the cp group's loss sum out
        self.sequence_split = sequence_split
        # FSDP's auto-wrap and accelerate read these from the wrapped root.
        self._no_split_modules = getattr(causal_lm(model), "_no_split_modules", None)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, **decoder_inputs) -> torch.Tensor:
        from kubetune.train.model_options import router_aux_loss

        lm = causal_lm(self.model)
        router_loss = router_aux_loss(lm)  # None unless model_config sets output_router_logits
        if router_loss is not None:
            decoder_inputs["output_router_logits"] = True
        if self.sequence_split is not None:
            input_ids, targets, decoder_inputs = self.sequence_split.split(input_ids, targets, decoder_inputs)
        out = decoder_of(lm)(input_ids=input_ids, use_cache=False, **decoder_inputs)
        loss = self.loss_fn(out.last_hidden_state, targets, lm.get_output_embeddings())
        if router_loss is not None:
            # The loss is a token sum the loop divides by the step's trained tokens: weighting the
            # micro-batch's router loss by its trained tokens makes the step's a token-weighted mean.
            loss = loss + router_loss(out.router_logits) * (targets != IGNORE_INDEX).sum()
        return loss if self.sequence_split is None else self.sequence_split.combine(loss)


def decoder_of(lm: nn.Module) -> nn.Module:
    """The decoder stack of a transformers *ForCausalLM (what returns hidden states, not logits).

    transformers' get_decoder finds it by attribute names and base_model_prefix; a model whose prefix
    names no attribute (Llama4ForCausalLM: prefix `language_model`, decoder at `.model`; and so
    Llama4ForConditionalGeneration, whose get_decoder asks it) gets itself back, the head included.
    """
    found = cast("PreTrainedModel", lm).get_decoder()
    inner = getattr(found, "model", None)
    if isinstance(inner, nn.Module) and found.get_output_embeddings() is not None:
        return inner
    return found


def causal_lm(model: nn.Module) -> PreTrainedModel:
    """The transformers *ForCausalLM inside a peft model (or the model itself)."""
    get_base_model = getattr(model, "get_base_model", None)
    return cast("PreTrainedModel", get_base_model() if callable(get_base_model) else model)
