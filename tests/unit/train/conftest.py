"""Fixtures for the engine tests: the tiny model and data, and configs built on the seed config.

Every run config is the reference llama3-lora.yml with its hub paths replaced by the local tiny
fixture, plus a test overlay that makes it CPU-sized (short rows, a few dozen steps).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from .support import SEED, SEED_DIR, build_config


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    from kubetune.tiny import make_fixture

    paths = make_fixture(tmp_path_factory.mktemp("tiny"), examples=512, seed=0)
    paths["prepared"] = str(tmp_path_factory.mktemp("prepared"))
    return paths


@pytest.fixture(scope="session")
def seed_mapping() -> dict:
    if not SEED.is_file():
        pytest.fail(f"seed configs not found at {SEED_DIR.resolve()}")
    return yaml.safe_load(SEED.read_text())


@pytest.fixture
def make_config(tiny, seed_mapping, tmp_path):
    """make_config(name, **keys) -> (TrainConfig, YAML path): seed config + local paths + CPU overlay + keys."""

    def build(name: str = "run", *, overlay_file: Path | None = None, **keys):
        return build_config(seed_mapping, tiny, tmp_path / name, overlay_file=overlay_file, **keys)

    return build


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps process-wide singletons; each in-process run starts from a clean one."""
    yield
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture(scope="session")
def tiny_tp(tiny, tmp_path_factory) -> dict:
    """The tiny fixture with its vocabulary padded to a multiple of 4: transformers' Llama tp_plan splits
    lm_head's output (the vocabulary) across the tensor-parallel ranks, which needs it to divide evenly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tmp_path_factory.mktemp("tiny-tp") / "model"
    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    model = AutoModelForCausalLM.from_pretrained(tiny["model"])
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=4, mean_resizing=False)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return {**tiny, "model": str(model_dir)}
