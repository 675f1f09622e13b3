"""load_tokenizer: the one tokenizer preprocess and train share (the cache is keyed by it)."""

from __future__ import annotations

import copy
from pathlib import Path

from kubetune.config import load_config
from kubetune.data import load_tokenizer
from kubetune.data.formats.chat_template import LLAMA3

SEED = Path(__file__).resolve().parents[3] / ".." / "shared" / "seed-configs" / "llama3-lora.yml"


def test_special_tokens_tokens_and_named_template_are_applied(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path / "model")
    cfg = load_config(
        SEED,
        overrides={
            "base_model": str(tmp_path / "model"),
            "special_tokens": {"eos_token": "<|im_end|>"},
            "tokens": ["<|extra|>"],
            "lora_modules_to_save": ["embed_tokens", "lm_head"],  # new rows must train
            "chat_template": "llama3",
        },
    )
    loaded = load_tokenizer(cfg)
    assert loaded.eos_token == "<|im_end|>" and loaded.pad_token == "<pad>"  # unset keys stay as they were
    assert loaded.convert_tokens_to_ids("<|extra|>") == len(tokenizer)
    assert loaded.chat_template == LLAMA3


def test_a_tokenizer_without_padding_pads_with_eos(tmp_path, tokenizer):
    without_pad = copy.deepcopy(tokenizer)
    without_pad.pad_token = None
    without_pad.save_pretrained(tmp_path / "model")
    loaded = load_tokenizer(load_config(SEED, overrides={"base_model": str(tmp_path / "model")}))
    assert loaded.pad_token == loaded.eos_token == "</s>"
    assert loaded.chat_template == tokenizer.chat_template  # tokenizer_default: left as shipped
