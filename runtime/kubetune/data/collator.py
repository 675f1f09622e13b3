"""Batches of (packed) rows, with the example boundaries travelling alongside.

Attention must never cross examples. Two ways to enforce it, and the batch carries both:
  * flash-attn varlen: `cu_seqlens` (int32 offsets over the flattened batch) and `max_seqlen`;
  * SDPA / eager: `block_causal_mask(position_ids)`, a [B, 1, T, T] block-diagonal causal mask.
Padding at the end of a row is its own segment (positions restarting at 0, label -100,
attention_mask 0), so the boundaries always cover the whole flattened batch and no padded query
row is fully masked (which would produce NaNs in SDPA).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kubetune.data.formats.base import IGNORE_INDEX


class PackedCollator:
    """rows (dicts with input_ids, labels[, position_ids, seq_lens]) -> dict of torch tensors.

    `pad_to`: pad every batch to this length (e.g. sequence_len with pad_to_sequence_len, so
    shapes stay static); None pads to the longest row of the batch.
    """

    def __init__(self, pad_token_id: int, pad_to: int | None = None):
        if pad_token_id is None:
            raise ValueError("PackedCollator needs a pad_token_id (set special_tokens.pad_token)")
        self.pad_token_id = int(pad_token_id)
        self.pad_to = pad_to

    def __call__(self, rows: Sequence[Mapping]) -> dict:
        import torch

        lengths = [len(row["input_ids"]) for row in rows]
        width = max(lengths, default=0)
        if self.pad_to is not None:
            if width > self.pad_to:
                raise ValueError(f"a row has {width} tokens, more than pad_to={self.pad_to}")
            width = self.pad_to
        batch = len(rows)
        input_ids = np.full((batch, width), self.pad_token_id, np.int64)
        labels = np.full((batch, width), IGNORE_INDEX, np.int64)
        position_ids = np.zeros((batch, width), np.int64)
        attention_mask = np.zeros((batch, width), np.int64)
        segments: list[int] = []  # lengths of every segment of the flattened batch, in order
        for b, (row, length) in enumerate(zip(rows, lengths, strict=True)):
            input_ids[b, :length] = row["input_ids"]
            labels[b, :length] = row["labels"]
            attention_mask[b, :length] = 1
            seq_lens = row.get("seq_lens")
            seq_lens = [length] if seq_lens is None else [int(n) for n in seq_lens]
            if sum(seq_lens) != length:
                raise ValueError(f"row {b}: seq_lens sum to {sum(seq_lens)} but the row has {length} tokens")
            if row.get("position_ids") is not None:
                position_ids[b, :length] = row["position_ids"]
            else:
                position_ids[b, :length] = np.concatenate([np.arange(n) for n in seq_lens]) if length else []
            position_ids[b, length:] = np.arange(width - length)
            segments += seq_lens + ([width - length] if width > length else [])
        cu_seqlens = np.zeros(len(segments) + 1, np.int32)
        np.cumsum(segments, out=cu_seqlens[1:])
        return {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(position_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "cu_seqlens": torch.from_numpy(cu_seqlens),
            "max_seqlen": max(segments, default=0),
        }


def block_causal_mask(position_ids, dtype=None):
    """[B, 1, T, T] causal mask that also separates examples (a new one starts at position 0).

    dtype None: bool, True = may attend (what SDPA takes). A float dtype: additive, 0 where
    allowed and the dtype's minimum elsewhere (what eager attention adds to its scores).
    Pass it as `attention_mask` to a transformers model: 4D masks are used as given.
    """
    import torch

    segment = torch.cumsum((position_ids == 0).to(torch.int32), dim=-1)
    same = segment[:, :, None] == segment[:, None, :]
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    mask = (same & causal)[:, None]
    if dtype is None:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
