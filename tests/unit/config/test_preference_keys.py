"""rl: dpo / ipo: what the first preference slice accepts, and what it refuses with a fix."""

from __future__ import annotations

import pytest
from kubetune.config import load_config, validate_mapping

PAIRS = {"path": "pairs.jsonl", "type": "chatml.intel"}


def _dpo(seed_mapping, **keys) -> dict:
    mapping = {**seed_mapping, "datasets": [PAIRS], "rl": "dpo", "sample_packing": False}
    mapping |= keys
    return {key: value for key, value in mapping.items() if value is not None}


def _paths(mapping) -> list[str]:
    return [problem.path for problem in validate_mapping(mapping)]


def test_axolotl_dpo_keys_are_accepted_and_read_as_trl_loss_and_beta(seed_mapping):
    assert _paths(_dpo(seed_mapping)) == []
    assert _paths(_dpo(seed_mapping, val_set_size=0.1)) == []  # evaluated on held-out pairs
    assert load_config(_dpo(seed_mapping)).preference_loss() == ("sigmoid", 0.1)  # trl's defaults
    assert load_config(_dpo(seed_mapping, dpo_beta=0.3)).preference_loss() == ("sigmoid", 0.3)
    assert load_config(_dpo(seed_mapping, rl_beta=0.2, dpo_loss_type="ipo")).preference_loss() == ("ipo", 0.2)
    assert load_config(_dpo(seed_mapping, rl="ipo")).preference_loss() == ("ipo", 0.1)
    chat = {
        "path": "p.jsonl",
        "type": "chat_template.default",
        "field_messages": "conversation",
        "field_chosen": "chosen",
        "field_rejected": "rejected",
        "message_property_mappings": {"role": "role", "content": "content"},
        "roles": {"user": ["user"], "assistant": ["assistant"]},
    }
    assert _paths(_dpo(seed_mapping, datasets=[chat])) == []
    assert load_config(seed_mapping).preference_loss() is None


@pytest.mark.parametrize(
    "keys,path",
    [
        ({"adapter": None, "lora_r": None, "lora_alpha": None, "lora_target_modules": None}, "rl"),
        ({"sample_packing": True}, "sample_packing"),
        ({"min_sample_len": 4}, "min_sample_len"),
        ({"train_on_inputs": True}, "train_on_inputs"),
        ({"fsdp": ["full_shard", "auto_wrap"]}, "fsdp"),
        ({"rl_beta": 0.1, "dpo_beta": 0.1}, "dpo_beta"),
        ({"rl": "ipo", "dpo_loss_type": "sigmoid"}, "dpo_loss_type"),
        ({"dpo_label_smoothing": 0.1}, "dpo_label_smoothing"),
        ({"rl": "kto"}, "rl"),
        ({"rl": "orpo"}, "rl"),
        ({"datasets": [{"path": "d.jsonl", "type": "alpaca"}]}, "datasets[0].type"),
    ],
)
def test_what_the_first_slice_does_not_run_is_refused(seed_mapping, keys, path):
    problems = validate_mapping(_dpo(seed_mapping, **keys))
    assert path in [problem.path for problem in problems], problems
    assert all(problem.fix for problem in problems)


def test_pairs_and_dpo_keys_need_rl(seed_mapping):
    mapping = {**seed_mapping, "datasets": [PAIRS], "rl_beta": 0.2}
    assert set(_paths(mapping)) == {"datasets[0].type", "rl_beta"}
    assert _paths({**seed_mapping, "dpo_label_smoothing": 0.0}) == []  # Axolotl's "off" value
