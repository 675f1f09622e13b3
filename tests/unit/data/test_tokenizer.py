"""load_tokenizer: the one tokenizer preprocess and train share (the cache is keyed by it)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from kubetune.config import ConfigError, load_config
from kubetune.data import DataError, load_tokenizer
from kubetune.data.formats.named_templates import LLAMA3
from kubetune.data.tokenizer import tokenizer_source

from .conftest import train_config

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


def test_a_tokenizer_without_padding_is_refused_with_the_config_fix(tmp_path, tokenizer):
    without_pad = copy.deepcopy(tokenizer)
    without_pad.pad_token = None
    without_pad.save_pretrained(tmp_path / "model")
    with pytest.raises(DataError) as caught:
        load_tokenizer(load_config(SEED, overrides={"base_model": str(tmp_path / "model")}))
    assert isinstance(caught.value, ConfigError)
    [problem] = caught.value.problems
    assert problem.path == "special_tokens.pad_token"
    assert 'special_tokens: {pad_token: "</s>"}' in problem.fix
    # The fix works: the config's pad token is applied, the template left as shipped.
    cfg = load_config(
        SEED, overrides={"base_model": str(tmp_path / "model"), "special_tokens": {"pad_token": "</s>"}}
    )
    loaded = load_tokenizer(cfg)
    assert loaded.pad_token == loaded.eos_token == "</s>"
    assert loaded.chat_template == tokenizer.chat_template  # tokenizer_default: left as shipped


def test_a_relative_base_model_resolves_against_the_config_directory(tmp_path, tokenizer, monkeypatch):
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    tokenizer.save_pretrained(config_dir / "model")
    (config_dir / "train.yml").write_text(SEED.read_text())
    monkeypatch.chdir(tmp_path)  # "model" does not exist here: only the config directory has it
    cfg = load_config(config_dir / "train.yml", overrides={"base_model": "model"})
    assert tokenizer_source(cfg) == str(config_dir / "model")
    assert load_tokenizer(cfg).get_vocab() == tokenizer.get_vocab()
    cfg = load_config(
        config_dir / "train.yml", overrides={"base_model": "org/name", "tokenizer_config": "model"}
    )
    assert tokenizer_source(cfg) == str(config_dir / "model")  # tokenizer_config first, resolved too
    assert tokenizer_source(train_config(base_model="org/name")) == "org/name"  # a hub id stays as written
    assert tokenizer_source(train_config(config_dir, base_model="model")) == str(config_dir / "model")


def test_tokenizer_legacy_decides_the_word_marker_after_a_special_token(tmp_path):
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "▁": 4, "h": 5, "i": 6, "▁h": 7, "hi": 8, "▁hi": 9}
    merges = [("▁", "h"), ("h", "i"), ("▁h", "i")]
    LlamaTokenizer(vocab=vocab, merges=merges, pad_token="<pad>").save_pretrained(tmp_path / "model")
    pieces = {}
    for legacy in (None, True, False):
        cfg = load_config(SEED, overrides={"base_model": str(tmp_path / "model"), "tokenizer_legacy": legacy})
        tok = load_tokenizer(cfg)
        pieces[legacy] = tok.convert_ids_to_tokens(tok("hi</s>hi", add_special_tokens=False)["input_ids"])
    assert pieces[True] == ["▁hi", "</s>", "▁hi"]
    assert pieces[False] == pieces[None] == ["▁hi", "</s>", "hi"]
