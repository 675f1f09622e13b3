"""Cross-field rules of the keys that decide what a run prepares before training: `skip_prepare_dataset`
(kubetune.data.pipeline). Only the config is read here (the operator runs these rules too).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .problems import ConfigProblem
from .rules import rule
from .schema import TrainConfig


@rule
def skip_prepare_dataset(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    if cfg.skip_prepare_dataset and cfg.rl and cfg.precompute_ref_log_probs:
        yield ConfigProblem(
            "skip_prepare_dataset",
            "precompute_ref_log_probs keeps the reference's log-probs in the prepared-dataset cache, which "
            "skip_prepare_dataset: true turns off",
            "remove skip_prepare_dataset (the cache is then used), or remove precompute_ref_log_probs (the "
            "reference then runs in each step)",
        )
