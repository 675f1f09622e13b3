"""Context parallelism over packed rows: each rank of a cp group holds one slice of every row's tokens,
and attention runs as a ring over the group.

torch's context parallelism (`torch.distributed.tensor.experimental.context_parallel`, what accelerate's
`cp_size` enables) has no varlen support, so it cannot keep packed examples apart; ring-flash-attn needs
flash-attn. Here each rank computes its queries against one key/value block at a time (its own, then
the block the previous rank held, passed around the ring), masked causally by the tokens' place in the
row and by their example (`position_ids` restart at 0 where a packed example starts: the cu_seqlens
boundaries), and merges the blocks' outputs with their log-sum-exp. Each block is computed with torch's
math ops (what SDPA's math backend does), so the log-sum-exp is differentiable and autograd gives the
backward; the ring's send/receive has its reverse as backward (`_RingShift`).

The loss: every rank scores the targets of its own slice; the cp group's sums are all-reduced with
autograd, so every rank of the group holds the row's loss (as the ranks of a tensor-parallel group do)
and the loop counts it once per group. The backward of that all-reduce sums the cp ranks' unit
gradients, which FSDP2's average over the dp_shard × cp ranks then divides back out.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_reduce

RING_ATTENTION = "kubetune_ring"  # the name it is registered under with transformers
DOCUMENTS_KWARG = "ring_documents"  # [B, T] example index of each token of the full rows

_group: dist.ProcessGroup | None = None  # the cp group of this rank, set by `SequenceSplit`


class _RingShift(torch.autograd.Function):
    """Send to the next rank of the ring, receive from the previous one; backward the other way round."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return _shift(tensor, group, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _shift(grad, ctx.group, -1), None


def _shift(tensor: torch.Tensor, group: dist.ProcessGroup, step: int) -> torch.Tensor:
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    tensor = tensor.contiguous()
    received = torch.empty_like(tensor)
    ops = [
        dist.P2POp(dist.isend, tensor, dist.get_global_rank(group, (rank + step) % size), group),
        dist.P2POp(dist.irecv, received, dist.get_global_rank(group, (rank - step) % size), group),
    ]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


def _block(query, key, value, allowed, scaling):
    """(output, log-sum-exp) of the queries over one key/value block; `allowed` [B, 1, Tq, Tk].

    Masked scores are the float minimum, not -inf: a query that may see nothing in this block gets a
    log-sum-exp so low that its merge weight is 0, where -inf would give NaN (and NaN gradients)."""
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), value.float())
    return out, lse


def ring_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: [B, H, Tl, D] (this rank's slice) in, [B, Tl, H, D] out."""
    from transformers.integrations.sdpa_attention import repeat_kv

    documents = kwargs.get(DOCUMENTS_KWARG)
    if documents is None or _group is None:
        raise RuntimeError(
            "kubetune's ring attention was called without its context-parallel inputs; it runs only "
            "inside a context-parallel training step (context_parallel_size > 1)"
        )
    if dropout:
        raise RuntimeError("ring attention has no attention dropout; set the model's attention_dropout to 0")
    rank, size = dist.get_rank(_group), dist.get_world_size(_group)
    length = query.shape[2]
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    groups = getattr(module, "num_key_value_groups", 1)
    positions = torch.arange(length, device=query.device)
    q_index = positions + rank * length
    q_doc = documents[:, q_index]
    out: torch.Tensor | None = None
    lse: torch.Tensor | None = None
    block = torch.stack([key, value])  # one message per ring step
    for step in range(size):
        # Every block is computed, also those wholly in the future of this rank's queries (merge weight
        # 0): each rank's backward must pass the same ring messages back, and autograd skips the
        # backward of a received block no output depends on.
        source = (rank - step) % size
        k_index = positions + source * length
        k_doc = documents[:, k_index]
        allowed = (q_index[:, None] >= k_index[None, :]) & (q_doc[:, :, None] == k_doc[:, None, :])
        k, v = repeat_kv(block[0], groups), repeat_kv(block[1], groups)
        block_out, block_lse = _block(query, k, v, allowed[:, None], scaling)
        if out is None or lse is None:
            out, lse = block_out, block_lse
        else:
            merged = torch.logaddexp(lse, block_lse)
            out = out * torch.exp(lse - merged).unsqueeze(-1) + block_out * torch.exp(
                block_lse - merged
            ).unsqueeze(-1)
            lse = merged
        if step < size - 1:
            block = _RingShift.apply(block, _group)
    assert out is not None  # step 0 is this rank's own block
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make RING_ATTENTION a transformers attn_implementation. No mask function: transformers then
    builds no mask (the documents and the ring are the mask)."""
    from transformers import AttentionInterface

    AttentionInterface.register(RING_ATTENTION, ring_attention_forward)


class SequenceSplit:
    """What CausalLMLoss does around the decoder under context parallelism: this rank's slice of the
    rows in, the cp group's summed loss out."""

    def __init__(self, group: dist.ProcessGroup, pad_token_id: int):
        global _group
        _group = group
        self.group, self.pad_token_id = group, pad_token_id
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)

    def split(self, input_ids: torch.Tensor, targets: torch.Tensor, decoder_inputs: dict):
        """(input_ids, targets, decoder_inputs) of this rank's slice of every row. Rows are padded to a
        multiple of the group size with pad tokens that start examples of their own and train nothing."""
        from kubetune.train.loss import IGNORE_INDEX

        position_ids = decoder_inputs["position_ids"]
        extra = -input_ids.shape[1] % self.size
        if extra:
            input_ids = torch.nn.functional.pad(input_ids, (0, extra), value=self.pad_token_id)
            targets = torch.nn.functional.pad(targets, (0, extra), value=IGNORE_INDEX)
            position_ids = torch.nn.functional.pad(position_ids, (0, extra), value=0)
        documents = torch.cumsum((position_ids == 0).to(torch.int32), dim=-1)
        width = input_ids.shape[1] // self.size
        mine = slice(self.rank * width, (self.rank + 1) * width)
        inputs = {**decoder_inputs, "position_ids": position_ids[:, mine], DOCUMENTS_KWARG: documents}
        return input_ids[:, mine], targets[:, mine], inputs

    def combine(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss sum of the whole rows, on every rank of the group (autograd all-reduce)."""
        return all_reduce(loss, group=self.group)
