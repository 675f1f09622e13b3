"""tokenizer_use_mistral_common: accepted, and refused (key path + fix) with the keys it contradicts."""

import copy

import pytest
from kubetune.config import validate_mapping


def _mistral(seed_mapping, **keys) -> dict:
    config = copy.deepcopy(seed_mapping)
    config.update(
        base_model="mistralai/Magistral-Small-2506",
        tokenizer_use_mistral_common=True,
        datasets=[{"path": "fozziethebeat/alpaca_messages_2k_test", "type": "chat_template"}],
    )
    config.pop("model_type")
    config.update(keys)
    return config


def test_the_key_with_chat_data_is_valid(seed_mapping):
    assert validate_mapping(_mistral(seed_mapping)) == []
    # Axolotl's bare `special_tokens:` / `chat_template:` lines are empty, not a contradiction.
    assert validate_mapping(_mistral(seed_mapping, special_tokens=None, chat_template=None)) == []


@pytest.mark.parametrize(
    ("keys", "path", "reason"),
    [
        ({"chat_template": "mistral_v7_tekken"}, "chat_template", "no Jinja template"),
        ({"chat_template_jinja": "{{ messages }}"}, "chat_template_jinja", "no Jinja template"),
        ({"special_tokens": {"pad_token": "<pad>"}}, "special_tokens", "fixed by its tokenizer file"),
        ({"tokens": ["<x>"]}, "tokens", "cannot be extended"),
        ({"eot_tokens": ["<end_of_turn>"]}, "eot_tokens", "ends every assistant turn with </s>"),
        ({"tokenizer_type": "LlamaTokenizer"}, "tokenizer_type", "MistralCommonBackend"),
    ],
)
def test_contradicting_keys_are_refused_with_the_fix(seed_mapping, keys, path, reason):
    problems = validate_mapping(_mistral(seed_mapping, **keys))
    [problem] = [p for p in problems if p.path == path]
    assert reason in problem.message
    assert "tokenizer_use_mistral_common" in problem.fix


def test_a_dataset_template_and_trained_user_turns_are_refused_at_the_entry(seed_mapping):
    entry = {"path": "d", "type": "chat_template", "chat_template": "chatml", "roles_to_train": ["user"]}
    problems = {p.path: p for p in validate_mapping(_mistral(seed_mapping, datasets=[entry]))}
    assert "no Jinja template" in problems["datasets[0].chat_template"].message
    assert "only assistant turns are trained" in problems["datasets[0].roles_to_train[0]"].message


def test_multimodal_stays_refused(seed_mapping):
    problems = validate_mapping(_mistral(seed_mapping, processor_type="AutoProcessor"))
    assert [p.path for p in problems] == ["processor_type"]


def test_off_is_the_default_and_changes_nothing(seed_mapping):
    config = _mistral(seed_mapping, tokenizer_use_mistral_common=False, chat_template="chatml")
    assert validate_mapping(config) == []


def test_preference_training_is_refused(seed_mapping):
    config = _mistral(seed_mapping, rl="dpo", datasets=[{"path": "pairs.jsonl", "type": "chatml.intel"}])
    [problem] = [p for p in validate_mapping(config) if p.path == "rl"]
    assert "Jinja chat template" in problem.message and "tokenizer_use_mistral_common" in problem.fix
