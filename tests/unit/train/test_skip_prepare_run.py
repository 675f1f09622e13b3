"""skip_prepare_dataset in a whole run: it trains on the data the cached path gives, and writes no cache."""

from __future__ import annotations

import pytest

from .test_runs import train_in_process

pytestmark = pytest.mark.slow

STEPS = {"max_steps": 6, "learning_rate": 0.01, "warmup_steps": 1}


def test_a_run_without_the_prepared_cache_trains_exactly_as_the_cached_run(make_config, tmp_path):
    cached_cfg, _ = make_config("cached", dataset_prepared_path=str(tmp_path / "cache"), **STEPS)
    _, cached = train_in_process(cached_cfg)
    assert any((tmp_path / "cache").iterdir())
    skip_cfg, _ = make_config(
        "skipped", dataset_prepared_path=str(tmp_path / "unused"), skip_prepare_dataset=True, **STEPS
    )
    _, skipped = train_in_process(skip_cfg)
    assert not (tmp_path / "unused").exists()  # nothing written (nor read: it never existed)
    assert not (tmp_path / "skipped" / "out" / "prepared").exists()
    losses = [entry["loss"] for entry in skipped["history"]]
    assert skipped["steps"] == 6 and losses == [entry["loss"] for entry in cached["history"]]
    assert losses[-1] < losses[0]
