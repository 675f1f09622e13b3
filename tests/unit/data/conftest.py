"""Shared fixtures: one tiny tokenizer trained locally (no hub), helpers to read labels back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune.config import DatasetConfig, TrainConfig, load_config
from kubetune.data import IGNORE_INDEX
from kubetune.data.formats.instruct import ALPACA_NO_INPUT, ALPACA_WITH_INPUT
from kubetune.tiny import alpaca_rows, train_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    corpus = [" ".join(row.values()) for row in alpaca_rows(200)]
    corpus += [ALPACA_WITH_INPUT, ALPACA_NO_INPUT, "system user assistant human gpt"]
    return train_tokenizer(corpus)


def train_config(source_dir: Path | None = None, **keys: Any) -> TrainConfig:
    """A whole TrainConfig for the data functions, which take the typed config: `keys` over a minimal
    valid one, written into `source_dir` when given (relative paths and custom formats resolve there)."""
    mapping = {
        "base_model": "unused",
        "learning_rate": 1e-4,
        "num_epochs": 1,
        "datasets": [{"path": "unused.jsonl", "type": "alpaca"}],
    } | keys
    if source_dir is None:
        return load_config(mapping)
    path = source_dir / "kubetune-test-config.yml"
    path.write_text(yaml.safe_dump(mapping))
    return load_config(path)


def entry(**keys: Any) -> DatasetConfig:
    """One `datasets[i]` entry (path given when the test does not care)."""
    return DatasetConfig.model_validate({"path": "unused.jsonl"} | keys)


def example(examples, k: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of example k of a TokenizedExamples."""
    start, end = examples.offsets[k], examples.offsets[k + 1]
    return examples.input_ids[start:end].tolist(), examples.labels[start:end].tolist()


def trained_spans(labels: list[int]) -> list[list[int]]:
    """The maximal runs of trained label ids, in order."""
    spans, current = [], []
    for label in labels:
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(label)
    if current:
        spans.append(current)
    return spans


def decoded_spans(tokenizer, labels: list[int]) -> list[str]:
    return [tokenizer.decode(span) for span in trained_spans(labels)]
