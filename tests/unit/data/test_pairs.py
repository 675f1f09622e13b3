"""Preference pairs through the pipeline: dropped and split whole, one row of two segments per pair."""

from __future__ import annotations

import numpy as np
from kubetune.data.formats import IGNORE_INDEX, TokenizedExamples
from kubetune.data.pairs import drop_unusable_pairs, pair_rows, split_eval_pairs

from .conftest import decoded_spans


def _examples(sides):
    """sides: [(prompt ids, completion ids)] in chosen/rejected order."""
    ids = [p + c for p, c in sides]
    labels = [[IGNORE_INDEX] * len(p) + c for p, c in sides]
    return TokenizedExamples.from_lists(ids, labels)


def test_a_pair_is_dropped_whole_when_its_row_is_too_long_or_a_side_is_untrained():
    examples = _examples(
        [
            ([1, 2], [3]), ([1, 2], [4]),  # kept: 6 tokens
            ([1, 2], [5, 6, 7]), ([1, 2], [8, 9]),  # 9 tokens > 8: dropped
            ([1, 2], [3]), ([1, 2], []),  # rejected side has no trained token: dropped
            ([1], [7]), ([1], [8]),  # kept
        ]
    )  # fmt: skip
    kept, too_long, untrained = drop_unusable_pairs(examples, sequence_len=8)
    assert (too_long, untrained) == (1, 1)
    assert [kept.input_ids[a:b].tolist() for a, b in zip(kept.offsets[:-1], kept.offsets[1:], strict=True)] == [
        [1, 2, 3], [1, 2, 4], [1, 7], [1, 8],
    ]  # fmt: skip


def test_the_eval_split_never_separates_a_pair():
    sides = []
    for k in range(10):
        sides += [([1], [100 + k]), ([1], [200 + k])]
    train, evaluation = split_eval_pairs(_examples(sides), 0.3, seed=3)
    for part in (train, evaluation):
        last = part.input_ids[part.offsets[1:] - 1].reshape(-1, 2)
        assert (last[:, 1] - last[:, 0] == 100).all()  # chosen k then rejected k
    assert (len(train), len(evaluation)) == (14, 6)


def test_one_row_per_pair_with_the_two_segments(tokenizer):
    prompt = tokenizer("Spell the digit. 3", add_special_tokens=False)["input_ids"]
    three = tokenizer(" three", add_special_tokens=False)["input_ids"]
    two = tokenizer(" 3", add_special_tokens=False)["input_ids"]
    data, stats = pair_rows(_examples([(prompt, three), (prompt, two)]))
    row = data[0]
    assert len(data) == 1 and stats["pairs"] == 1
    assert row["seq_lens"] == [len(prompt) + len(three), len(prompt) + len(two)]
    assert row["position_ids"] == list(range(row["seq_lens"][0])) + list(range(row["seq_lens"][1]))
    assert decoded_spans(tokenizer, row["labels"]) == [" three", " 3"]
    assert np.array_equal(row["input_ids"], prompt + three + prompt + two)
