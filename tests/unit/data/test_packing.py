"""Packing: efficiency, invariants, and packed logits equal to each example run alone."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubetune.data import (
    PackedCollator,
    TokenizedExamples,
    block_causal_mask,
    pack_lengths,
    packing_efficiency,
)
from kubetune.data.packing import pack


def alpaca_like_lengths(count: int, seed: int = 0, mean: float = 280.0, sigma: float = 0.8) -> np.ndarray:
    """Lognormal lengths with the given mean, as alpaca prompt+response token counts roughly are."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, count).round().astype(np.int64)
    return np.clip(lengths, 8, 2048)


@pytest.mark.parametrize("sigma", [0.5, 0.8, 1.0])
def test_packing_efficiency_on_alpaca_like_lengths_is_at_least_95_percent(sigma):
    lengths = alpaca_like_lengths(20_000, sigma=sigma)
    assert 260 < lengths.mean() < 300
    bins = pack_lengths(lengths, 2048)
    efficiency = packing_efficiency(lengths, len(bins), 2048)
    assert efficiency >= 0.95, efficiency
    # The lower bound on rows is ceil(total / capacity): best-fit decreasing is within a row or two of it.
    assert len(bins) <= int(np.ceil(lengths.sum() / 2048)) * 1.02 + 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=0, max_size=300), st.integers(64, 128))
def test_every_example_is_packed_once_and_no_row_overflows(lengths, capacity):
    bins = pack_lengths(np.array(lengths, dtype=np.int64), capacity)
    placed = sorted(index for row in bins for index in row)
    assert placed == list(range(len(lengths)))
    totals = [sum(lengths[i] for i in row) for row in bins]
    assert all(0 < total <= capacity for total in totals)
    # Best fit never opens a row while another could hold the example: so at most one row is half empty.
    assert sum(total <= capacity / 2 for total in totals) <= 1


def test_pack_rejects_examples_longer_than_the_row():
    with pytest.raises(ValueError, match="within 1..16"):
        pack_lengths(np.array([3, 17]), 16)


def random_examples(lengths, seed=0, vocab=100) -> TokenizedExamples:
    rng = np.random.default_rng(seed)
    ids = [rng.integers(5, vocab, n).tolist() for n in lengths]
    labels = [[-100] * (n // 2) + row[n // 2 :] for n, row in zip(lengths, ids, strict=True)]
    return TokenizedExamples.from_lists(ids, labels)


def test_packed_rows_hold_every_example_intact_with_restarting_positions():
    lengths = [5, 9, 3, 12, 7, 1, 16, 2]
    examples = random_examples(lengths)
    arrays = pack(examples, 16)
    rows = []
    for r in range(len(arrays["row_offsets"]) - 1):
        start, end = arrays["row_offsets"][r], arrays["row_offsets"][r + 1]
        seq_lens = arrays["seq_lens"][arrays["seq_offsets"][r] : arrays["seq_offsets"][r + 1]]
        assert seq_lens.sum() == end - start <= 16
        expected_positions = np.concatenate([np.arange(n) for n in seq_lens])
        assert np.array_equal(arrays["position_ids"][start:end], expected_positions)
        cuts = np.cumsum(seq_lens)[:-1]
        ids = np.split(arrays["input_ids"][start:end], cuts)
        labels = np.split(arrays["labels"][start:end], cuts)
        rows += [(a.tolist(), b.tolist()) for a, b in zip(ids, labels, strict=True)]
    originals = [
        (examples.input_ids[s:e].tolist(), examples.labels[s:e].tolist())
        for s, e in zip(examples.offsets[:-1], examples.offsets[1:], strict=True)
    ]
    assert sorted(rows) == sorted(originals)


# -- the collator and the attention boundaries -------------------------------------------------


def test_collator_boundaries_cover_the_flattened_batch():
    rows = [
        {
            "input_ids": [1, 2, 3, 4, 5],
            "labels": [-100, 2, 3, -100, 5],
            "position_ids": [0, 1, 2, 0, 1],
            "seq_lens": [3, 2],
        },
        {"input_ids": [7, 8], "labels": [-100, 8], "position_ids": [0, 1], "seq_lens": [2]},
    ]
    batch = PackedCollator(pad_token_id=0, pad_to=6)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0], [7, 8, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 5, -100], [-100, 8, -100, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 0, 1, 2, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]]
    assert batch["cu_seqlens"].tolist() == [0, 3, 5, 6, 8, 12]
    assert str(batch["cu_seqlens"].dtype) == "torch.int32"
    assert batch["max_seqlen"] == 4
    # Unpacked rows (no seq_lens / position_ids) are one example each.
    plain = PackedCollator(pad_token_id=0)([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, rows[1]])
    assert plain["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]
    assert plain["cu_seqlens"].tolist() == [0, 3, 5, 6]
    with pytest.raises(ValueError, match="more than pad_to=4"):
        PackedCollator(pad_token_id=0, pad_to=4)(rows)


def test_block_causal_mask_separates_examples():
    import torch

    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0]])
    mask = block_causal_mask(position_ids)[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]
    additive = block_causal_mask(position_ids, dtype=torch.float32)[0, 0]
    assert additive[4, 3] == 0 and additive[4, 2] == torch.finfo(torch.float32).min


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_logits_equal_each_example_run_alone(tokenizer, attention):
    import torch
    from kubetune.tiny import build_tiny_llama

    model = build_tiny_llama(tokenizer).eval()
    model.set_attn_implementation(attention)
    lengths = [23, 7, 31, 12, 40, 5, 18]
    examples = random_examples(lengths, vocab=len(tokenizer))
    arrays = pack(examples, 64)
    rows = []
    for r in range(len(arrays["row_offsets"]) - 1):
        start, end = arrays["row_offsets"][r], arrays["row_offsets"][r + 1]
        seqs = arrays["seq_lens"][arrays["seq_offsets"][r] : arrays["seq_offsets"][r + 1]]
        rows.append(
            {name: arrays[name][start:end] for name in ("input_ids", "labels", "position_ids")}
            | {"seq_lens": seqs}
        )
    assert len(rows) < len(lengths)  # examples really share rows
    batch = PackedCollator(pad_token_id=tokenizer.pad_token_id, pad_to=64)(rows)
    mask = block_causal_mask(batch["position_ids"], dtype=None if attention == "sdpa" else torch.float32)
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask
        ).logits
        alone = {}
        for k in range(len(examples)):
            ids = torch.from_numpy(examples.input_ids[examples.offsets[k] : examples.offsets[k + 1]]).long()
            alone[tuple(ids.tolist())] = model(input_ids=ids[None]).logits[0]
    compared = 0
    for b, row in enumerate(rows):
        offset = 0
        for n in row["seq_lens"]:
            ids = tuple(batch["input_ids"][b, offset : offset + n].tolist())
            torch.testing.assert_close(packed[b, offset : offset + n], alone[ids], atol=1e-5, rtol=1e-5)
            offset += n
            compared += 1
    assert compared == len(lengths)
    assert torch.isfinite(packed).all()  # padded query rows are not fully masked
