"""Key checking: unknown keys get a suggestion at every level; Axolotl-only keys pass only when empty."""

import pytest
from kubetune.config import compat, load_config, validate_mapping
from kubetune.config.datasets import DatasetConfig
from kubetune.config.parallel import FsdpConfig
from kubetune.config.schema import TrainConfig


def _only(problems, path):
    matching = [p for p in problems if p.path == path]
    assert len(matching) == 1, problems
    return matching[0]


@pytest.mark.parametrize(
    ("mutate", "path", "suggestion"),
    [
        (lambda c: c.update(micro_batchsize=2), "micro_batchsize", "micro_batch_size"),
        (lambda c: c.update({"Learning-Rate": 1e-4}), "Learning-Rate", "learning_rate"),
        (
            lambda c: c["datasets"][0].update(feild_messages="m"),
            "datasets[0].feild_messages",
            "field_messages",
        ),
        (
            lambda c: c.update(
                fsdp=["full_shard", "auto_wrap"], fsdp_config={"fsdp_state_dict_typ": "FULL_STATE_DICT"}
            ),
            "fsdp_config.fsdp_state_dict_typ",
            "fsdp_state_dict_type",
        ),
        (lambda c: c.update(special_tokens={"pad_tokn": "x"}), "special_tokens.pad_tokn", "pad_token"),
    ],
)
def test_unknown_key_did_you_mean(seed_mapping, mutate, path, suggestion):
    import copy

    config = copy.deepcopy(seed_mapping)
    mutate(config)
    problem = _only(validate_mapping(config), path)
    assert f"did you mean '{suggestion}'" in problem.message
    assert suggestion in problem.fix


def test_unknown_key_without_a_close_match(seed_mapping):
    problem = _only(validate_mapping({**seed_mapping, "frobnicate": 1}), "frobnicate")
    assert "unknown key 'frobnicate'" in problem.message


def test_key_at_the_wrong_level_is_pointed_to(seed_mapping):
    problems = validate_mapping({**seed_mapping, "field_messages": "conversations"})
    assert "dataset entry" in _only(problems, "field_messages").message
    config = {**seed_mapping, "datasets": [{"path": "d", "type": "alpaca", "sequence_len": 10}]}
    assert "top-level key" in _only(validate_mapping(config), "datasets[0].sequence_len").message


def test_non_string_key_is_reported(seed_mapping):
    problem = _only(validate_mapping({**seed_mapping, True: 1}), "True")
    assert "not a name" in problem.message


@pytest.mark.parametrize("empty", [None, "", [], {}, False])
def test_axolotl_only_keys_are_accepted_when_empty(seed_mapping, empty):
    config = {
        **seed_mapping,
        "strict": empty,
        "eval_table_size": empty,
        "deepspeed": None,
        "special_tokens": None,
    }
    config["datasets"] = [{**seed_mapping["datasets"][0], "shards": empty, "system_prompt": empty}]
    config["fsdp_config"] = None
    assert validate_mapping(config) == []


def test_axolotl_only_key_set_is_an_error_naming_it(seed_mapping):
    problems = validate_mapping({**seed_mapping, "neftune_noise_alpha": 5, "eager_attention": True})
    problem = _only(problems, "neftune_noise_alpha")
    assert "'neftune_noise_alpha' is an Axolotl key that kubetune does not implement" in problem.message
    assert "attn_implementation: eager" in _only(problems, "eager_attention").fix


def test_axolotl_default_value_of_an_always_on_behaviour_is_accepted(seed_mapping):
    assert validate_mapping({**seed_mapping, "shuffle_merged_datasets": True}) == []
    assert [p.path for p in validate_mapping({**seed_mapping, "shuffle_merged_datasets": False})] == [
        "shuffle_merged_datasets"
    ]


def test_low_cpu_mem_usage_is_what_transformers_5_always_does(seed_mapping):
    import inspect

    from transformers import PreTrainedModel

    # transformers drops the argument ("not used anymore"): loading is always low-memory.
    source = inspect.getsource(PreTrainedModel.from_pretrained)
    assert '"low_cpu_mem_usage"' in source.split("Not used anymore", 1)[1].split("\n", 2)[1]
    for value in (True, False):
        assert validate_mapping({**seed_mapping, "low_cpu_mem_usage": value}) == []


def test_axolotl_batch_size_sets_gradient_accumulation(seed_mapping):
    base = {k: v for k, v in seed_mapping.items() if k != "gradient_accumulation_steps"}
    cfg = load_config({**base, "micro_batch_size": 4, "batch_size": 16})
    assert cfg.gradient_accumulation_steps == 4
    assert (
        validate_mapping({**base, "micro_batch_size": 4, "gradient_accumulation_steps": 4, "batch_size": 16})
        == []
    )
    for wrong in ({"gradient_accumulation_steps": 2, "batch_size": 16}, {"batch_size": 10}):
        problems = validate_mapping({**base, "micro_batch_size": 4, **wrong})
        assert [p.path for p in problems] == ["batch_size"]


def test_pretraining_dataset_stands_in_for_datasets(seed_mapping):
    stream = {
        "pretraining_dataset": [{"path": "allenai/c4", "name": "en", "type": "pretrain"}],
        "max_steps": 10,
    }
    base = {k: v for k, v in seed_mapping.items() if k != "datasets"}
    assert validate_mapping({**base, **stream}) == []
    # With another problem in the config, still no placeholder datasets next to the stream.
    assert [p.path for p in validate_mapping({**base, **stream, "lora_r": 0})] == ["lora_r"]
    assert [p.path for p in validate_mapping({**base, **{**stream, "max_steps": None}})] == ["max_steps"]
    assert [p.path for p in validate_mapping({**seed_mapping, **stream})] == ["pretraining_dataset"]


def test_axolotl_bfloat16_is_bf16(seed_mapping):
    base = {k: v for k, v in seed_mapping.items() if k != "bf16"}
    assert load_config({**base, "bfloat16": True}).bf16 is True
    assert load_config({**base, "bfloat16": True, "bf16": "auto"}).bf16 == "auto"  # bf16 says it already
    assert load_config({**base, "bfloat16": False}).bf16 == load_config(base).bf16
    assert [p.path for p in validate_mapping({**base, "bfloat16": True, "bf16": False})] == ["bfloat16"]


def test_hf_use_auth_token_is_what_the_hub_client_always_does(seed_mapping):
    assert validate_mapping({**seed_mapping, "hf_use_auth_token": True}) == []


def test_bare_keys_mean_not_set(seed_mapping):
    cfg = load_config(
        {**seed_mapping, "micro_batch_size": None, "lora_model_dir": None, "wandb_project": None}
    )
    assert cfg.micro_batch_size == 1  # the default, not an error
    assert "lora_model_dir" not in cfg.model_fields_set
    assert "micro_batch_size" not in cfg.to_mapping()


def test_fsdp_config_keys_without_prefix_are_accepted(seed_mapping):
    config = {
        **seed_mapping,
        "fsdp": ["full_shard", "auto_wrap"],
        "fsdp_config": {"version": 2, "offload_params": False, "reshard_after_forward": True},
    }
    cfg = load_config(config)
    assert cfg.fsdp_config.fsdp_version == 2 and cfg.fsdp_config.fsdp_reshard_after_forward is True
    both = {**config, "fsdp_config": {"offload_params": True, "fsdp_offload_params": True}}
    assert [p.path for p in validate_mapping(both)] == ["fsdp_config.offload_params"]


def test_compat_tables_never_shadow_implemented_keys():
    assert not set(compat.TOP_LEVEL) & set(TrainConfig.model_fields)
    assert not set(compat.DATASET) & set(DatasetConfig.model_fields)
    assert not set(compat.FSDP_CONFIG) & set(FsdpConfig.model_fields)
    assert len(compat.TOP_LEVEL) > 200  # the real Axolotl surface, not a token list


def test_custom_format_type_is_accepted_statically(seed_mapping):
    config = {
        **seed_mapping,
        "datasets": [{"path": "d.jsonl", "type": "my_formats.ToolCalls", "field": "text"}],
    }
    cfg = load_config(config)
    entry = cfg.datasets[0]
    assert entry.is_custom_type and entry.custom_type_parts() == ("my_formats", "ToolCalls")
    assert not cfg.datasets[0].model_copy(update={"type": "alpaca"}).is_custom_type


def test_chat_template_dataset_defaults_and_roles(seed_mapping):
    entry = {
        "path": "d.jsonl",
        "type": "chat_template",
        "field_messages": "conversations",
        "message_field_role": "from",
        "message_field_content": "value",
        "roles": {"user": ["human"], "assistant": ["gpt"]},
        "roles_to_train": ["assistant"],
        "train_on_eos": "turn",
        "chat_template": "chatml",
    }
    cfg = load_config({**seed_mapping, "datasets": [entry]})
    ds = cfg.datasets[0]
    assert ds.effective_roles()["user"] == ["human"] and ds.effective_roles()["system"] == ["system"]
    assert ds.effective_roles_to_train() == ["assistant"]
    assert ds.split == "train"


def test_newer_axolotl_fsdp_spelling_is_folded_into_the_fsdp_list(seed_mapping):
    # Axolotl >= 0.10 style: top-level fsdp_version, unprefixed fsdp_config keys, no fsdp list.
    config = {
        **seed_mapping,
        "fsdp_version": 2,
        "fsdp_config": {
            "offload_params": True,
            "state_dict_type": "SHARDED_STATE_DICT",
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
            "reshard_after_forward": True,
        },
    }
    cfg = load_config(config)
    assert cfg.fsdp == ["full_shard", "auto_wrap", "offload"]
    assert cfg.fsdp_config.fsdp_version == 2 and cfg.fsdp_config.fsdp_offload_params is True
    assert load_config(cfg.to_mapping()).to_mapping() == cfg.to_mapping()


def test_sharding_strategy_in_fsdp_config_becomes_the_list_strategy(seed_mapping):
    cfg = load_config(
        {**seed_mapping, "fsdp": ["auto_wrap"], "fsdp_config": {"fsdp_sharding_strategy": "SHARD_GRAD_OP"}}
    )
    assert cfg.fsdp == ["shard_grad_op", "auto_wrap"]
    cfg = load_config({**seed_mapping, "fsdp_config": {"sharding_strategy": "FULL_SHARD"}})
    assert cfg.fsdp == ["full_shard", "auto_wrap"]


def test_empty_fsdp_config_enables_nothing(seed_mapping):
    for empty in (None, {}):
        cfg = load_config({**seed_mapping, "fsdp_config": empty})
        assert not cfg.fsdp
