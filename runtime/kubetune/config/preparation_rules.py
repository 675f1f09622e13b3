"""Cross-field rules of the keys that decide what a run prepares and downloads before training:
`skip_prepare_dataset` (kubetune.data.pipeline) and `base_model_ignore_patterns` (kubetune.sources.fetch).

Only the config is read here (the operator runs these rules too): a local base model is recognised by its
spelling, or as an existing directory relative to the config's directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .problems import ConfigProblem
from .rules import rule
from .schema import TrainConfig
from .sources import HUB, scheme_of


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


@rule
def base_model_ignore_patterns(cfg: TrainConfig, source_dir: Path | None) -> Iterator[ConfigProblem]:
    if not cfg.base_model_ignore_patterns:
        return
    scheme = scheme_of(cfg.base_model, source_dir)
    if scheme != HUB:
        what = "a local directory" if scheme is None else f"an object-store prefix ({scheme}://)"
        yield ConfigProblem(
            "base_model_ignore_patterns",
            f"base_model_ignore_patterns leaves files of a hub repository out of the download, and base_model "
            f"is {what}: nothing is downloaded from the hub",
            "remove base_model_ignore_patterns (delete the unwanted files from the model's directory "
            "instead), or name the hub id in base_model",
        )
    for index, pattern in enumerate(cfg.base_model_ignore_patterns):
        if not pattern.strip():
            yield ConfigProblem(
                f"base_model_ignore_patterns[{index}]",
                "an empty pattern matches no file",
                "remove it, or write a glob such as '*.pth' or 'original/*'",
            )
