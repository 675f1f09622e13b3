"""quantize_moe_experts: accepted with a LoRA adapter on a bitsandbytes base, one process per GPU; refused
(key path + fix) otherwise."""

import copy

import pytest
from kubetune.config import validate_mapping


def _qlora(seed_mapping, **keys) -> dict:
    config = copy.deepcopy(seed_mapping)
    config.update(adapter="qlora", load_in_4bit=True, quantize_moe_experts=True)
    config.update(keys)
    return config


def test_with_qlora_or_an_8bit_lora_it_is_valid(seed_mapping):
    assert validate_mapping(_qlora(seed_mapping)) == []
    assert validate_mapping(_qlora(seed_mapping, adapter="lora", load_in_4bit=False, load_in_8bit=True)) == []
    # lora_target_linear adds linear layers only (the expert tensors' containers are excluded at runtime)
    assert validate_mapping(_qlora(seed_mapping, lora_target_linear=True)) == []
    fsdp2 = {"fsdp": ["full_shard", "auto_wrap"], "fsdp_config": {"fsdp_version": 2}}
    assert validate_mapping(_qlora(seed_mapping, **fsdp2)) == []


@pytest.mark.parametrize(
    ("keys", "path", "reason", "fix"),
    [
        ({"adapter": "lora", "load_in_4bit": False}, "quantize_moe_experts", "bitsandbytes-quantized base", "load_in_4bit: true"),
        ({"fsdp": ["full_shard", "auto_wrap"]}, "quantize_moe_experts", "fsdp does not shard", "remove fsdp"),
        ({"fsdp": ["full_shard", "auto_wrap"], "fsdp_config": {"fsdp_version": 2, "fsdp_cpu_ram_efficient_loading": True}}, "fsdp_config.fsdp_cpu_ram_efficient_loading", "cannot be broadcast", "each rank loads"),
        ({"deepspeed": "deepspeed_configs/zero2.json"}, "quantize_moe_experts", "deepspeed does not shard", "remove deepspeed"),
        ({"lora_target_parameters": ["mlp.experts.gate_up_proj"]}, "lora_target_parameters", "packed 4/8-bit", "lora_target_modules"),
    ],
)  # fmt: skip
def test_refused_where_it_cannot_work(seed_mapping, keys, path, reason, fix):
    problems = [p for p in validate_mapping(_qlora(seed_mapping, **keys)) if p.path == path]
    assert len(problems) == 1, problems
    assert reason in problems[0].message and fix in problems[0].fix


def test_off_is_the_default(seed_mapping):
    config = copy.deepcopy(seed_mapping)
    assert validate_mapping(config | {"quantize_moe_experts": False}) == []
