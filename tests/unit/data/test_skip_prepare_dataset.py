"""skip_prepare_dataset: the data prepared in memory, equal to the cached path's, with no cache written."""

from __future__ import annotations

import numpy as np
import pytest
from kubetune.config import ConfigError, load_config
from kubetune.data import prepare_datasets
from kubetune.tiny import alpaca_rows, write_jsonl

from .test_pipeline import SEED


def columns(dataset) -> dict[str, list]:
    return {name: dataset[name] for name in sorted(dataset.column_names)}


@pytest.mark.parametrize("packed", [True, False])
def test_in_memory_data_equals_the_cached_data_and_no_cache_is_written(tmp_path, tokenizer, packed):
    write_jsonl(alpaca_rows(80, seed=3), tmp_path / "train.jsonl")
    keys = {
        "base_model": str(tmp_path / "model"),
        "datasets": [{"path": str(tmp_path / "train.jsonl"), "type": "alpaca"}],
        "val_set_size": 0.1,
        "sample_packing": packed,
        "sequence_len": 512,
    }
    cached = prepare_datasets(
        load_config(SEED, overrides=keys | {"dataset_prepared_path": str(tmp_path / "cached")}), tokenizer
    )
    assert cached.path is not None and cached.path.parent == tmp_path / "cached"
    skipped_cfg = load_config(
        SEED,
        overrides=keys | {"dataset_prepared_path": str(tmp_path / "unused"), "skip_prepare_dataset": True},
    )
    skipped = prepare_datasets(skipped_cfg, tokenizer)
    assert skipped.path is None
    assert not (tmp_path / "unused").exists()  # neither written nor read
    assert not (tmp_path / "out" / "prepared").exists() and not (tmp_path / "prepared").exists()
    assert skipped.stats["examples"] == 72 and skipped.stats["eval"]["examples"] == 8
    # The same rows in the same order: token ids, labels, positions (and packed examples' lengths).
    assert columns(skipped.train) == columns(cached.train)
    assert columns(skipped.eval) == columns(cached.eval)
    assert (
        "seq_lens" in skipped.train.column_names if packed else "seq_lens" not in skipped.train.column_names
    )
    labels = np.concatenate([np.array(row) for row in skipped.train["labels"]])
    assert (labels != -100).any() and (labels == -100).any()  # prompts masked, outputs trained
    assert {k: v for k, v in skipped.stats.items() if k != "prepare_seconds"} == {
        k: v for k, v in cached.stats.items() if k != "prepare_seconds"
    }


def test_skip_prepare_dataset_refuses_precompute_ref_log_probs(tmp_path):
    keys = {
        "base_model": str(tmp_path / "model"),
        "rl": "dpo",
        "datasets": [{"path": "pairs.jsonl", "type": "chatml.intel"}],
        "precompute_ref_log_probs": True,
        "skip_prepare_dataset": True,
        "sample_packing": False,
    }
    with pytest.raises(ConfigError) as error:
        load_config(SEED, overrides=keys)
    problems = {problem.path: problem for problem in error.value.problems}
    assert (
        "precompute_ref_log_probs keeps the reference's log-probs" in problems["skip_prepare_dataset"].message
    )
    assert load_config(SEED, overrides=keys | {"precompute_ref_log_probs": False}).skip_prepare_dataset
