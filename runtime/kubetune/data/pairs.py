"""Preference pairs through the pipeline: kept, dropped and split together, one row per pair.

A preference format gives two examples per row (chosen, rejected: formats/preference.py). Here a pair
is dropped whole, the eval split is drawn by pair, and each pair becomes ONE row of two packed
segments (`seq_lens = [chosen, rejected]`, positions restarting at the rejected side), the layout
kubetune.train.preference scores.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kubetune.data.errors import data_error
from kubetune.data.formats import IGNORE_INDEX, TokenizedExamples


def _sides(pair_indices: np.ndarray) -> np.ndarray:
    return np.stack([2 * pair_indices, 2 * pair_indices + 1], axis=1).reshape(-1)


def drop_unusable_pairs(examples: TokenizedExamples, sequence_len: int) -> tuple[TokenizedExamples, int, int]:
    """Drop pairs whose row (chosen + rejected) exceeds sequence_len, or with a side not trained.

    Counts are of pairs (too long, untrained)."""
    lengths = examples.lengths.reshape(-1, 2)
    trained = examples.trained_per_example.reshape(-1, 2)
    too_long = lengths.sum(axis=1) > sequence_len
    untrained = (trained == 0).any(axis=1)
    keep = ~(too_long | untrained)
    if keep.all():
        return examples, 0, 0
    kept = examples.select(_sides(np.flatnonzero(keep)))
    return kept, int(too_long.sum()), int((untrained & ~too_long).sum())


def split_eval_pairs(examples: TokenizedExamples, val_set_size: float, seed: int):
    """(train, eval) by a seeded permutation of the pairs (a fraction when < 1, else a count)."""
    pairs = len(examples) // 2
    order = np.random.default_rng(seed).permutation(pairs)
    if not val_set_size:
        return examples.select(_sides(order)), None
    count = math.ceil(pairs * val_set_size) if val_set_size < 1 else int(val_set_size)
    if count >= pairs:
        raise data_error(
            "val_set_size",
            f"val_set_size {val_set_size} leaves no training pairs (there are {pairs})",
            "use a fraction below 1 or a smaller count",
        )
    return examples.select(_sides(order[count:])), examples.select(_sides(np.sort(order[:count])))


def pair_rows(examples: TokenizedExamples):
    """(datasets.Dataset, stats): one row per pair, seq_lens [chosen, rejected]."""
    from kubetune.data.pipeline import _dataset, _table

    lengths = examples.lengths
    position_ids = np.arange(len(examples.input_ids)) - np.repeat(examples.offsets[:-1], lengths)
    pairs = len(examples) // 2
    table = _table(
        {"input_ids": examples.input_ids, "labels": examples.labels, "position_ids": position_ids},
        examples.offsets[::2],
    )
    seq_lens = _table({"seq_lens": lengths.astype(np.int64)}, np.arange(0, 2 * pairs + 1, 2))
    table = table.append_column("seq_lens", seq_lens.column("seq_lens"))
    if examples.flags is not None:  # KTO: the row's desirable label (both its examples carry it)
        import pyarrow as pa

        table = table.append_column("desirable", pa.array(examples.flags[::2].astype(bool)))
    stats: dict[str, Any] = {
        "examples": pairs,
        "pairs": pairs,
        "tokens": int(lengths.sum()),
        "trained_tokens": int((examples.labels != IGNORE_INDEX).sum()),
        "max_example_len": int(lengths.reshape(-1, 2).sum(axis=1).max()) if pairs else 0,
        "mean_example_len": round(float(lengths.reshape(-1, 2).sum(axis=1).mean()), 2) if pairs else 0.0,
        "packed_rows": pairs,
        "packing_efficiency": None,
    }
    return _dataset(table), stats
