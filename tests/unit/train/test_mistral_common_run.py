"""`kubetune train` with tokenizer_use_mistral_common: a tiny Llama whose vocabulary is a tekken.json built
here (no hub), chat data encoded by mistral-common; the loss falls and the result loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from kubetune.cli import main as cli
from kubetune.data import load_tokenizer
from kubetune.data.pipeline import make_format
from transformers import AutoTokenizer

from .reload import load_full_model
from .support import build_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mistral_tiny(tmp_path_factory) -> dict:
    from kubetune.tiny import make_mistral_fixture

    paths = make_mistral_fixture(tmp_path_factory.mktemp("mistral-tiny"), examples=512, seed=0)
    paths["prepared"] = str(tmp_path_factory.mktemp("prepared"))
    return paths


def test_full_fine_tune_on_mistral_common_chat_data_learns_and_the_result_loads(
    seed_mapping, mistral_tiny, tmp_path
):
    no_adapter = dict.fromkeys(("adapter", "lora_r", "lora_alpha", "lora_target_modules", "model_type"))
    cfg, path = build_config(
        seed_mapping,
        {**mistral_tiny, "train": mistral_tiny["chat"]},
        tmp_path / "run",
        tokenizer_use_mistral_common=True,
        datasets=[{"path": mistral_tiny["chat"], "type": "chat_template"}],
        learning_rate=0.005,
        **no_adapter,
    )
    assert cli(["train", str(path)]) == 0
    out = Path(cfg.output_dir)
    summary = json.loads((out / "training_summary.json").read_text())
    losses = [entry["loss"] for entry in summary["history"]]
    assert len(losses) == summary["steps"] == 30
    assert sum(losses[-5:]) / 5 <= 0.7 * losses[0], losses

    # The result: the model, and mistral-common's own tokenizer file beside it, which AutoTokenizer
    # picks for a Mistral architecture; the reloaded model is the trained one (lower loss on the data).
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert type(tokenizer).__name__ == "MistralCommonBackend"
    from kubetune.train.results import load_tokenizer as result_tokenizer  # what generate / merge load

    assert type(result_tokenizer(out, cfg)).__name__ == "MistralCommonBackend"
    assert (out / "tekken.json").read_bytes() == (Path(mistral_tiny["model"]) / "tekken.json").read_bytes()
    rows = [json.loads(line) for line in Path(mistral_tiny["chat"]).read_text().splitlines()[:32]]
    examples = make_format(cfg.datasets[0], "datasets[0]", cfg, load_tokenizer(cfg)).tokenize_rows(rows)
    before = chat_loss(load_full_model(mistral_tiny["model"]), examples)
    after = chat_loss(load_full_model(out), examples)
    assert after < 0.6 * before, (before, after)


def chat_loss(model, examples) -> float:
    """Mean loss of the trained (assistant) tokens of every example."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for k in range(len(examples)):
            start, end = examples.offsets[k], examples.offsets[k + 1]
            ids = torch.tensor([examples.input_ids[start:end].tolist()])
            labels = torch.tensor([examples.labels[start:end].tolist()])
            total += model(input_ids=ids, labels=labels).loss.item()
    return total / len(examples)
