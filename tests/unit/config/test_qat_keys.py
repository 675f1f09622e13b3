"""qat: and save_only_model: the combinations accepted, and each refusal at its key with a fix."""

import pytest
from kubetune.config import validate_mapping

from .test_bad_configs import DROP, _apply

FULL = dict.fromkeys(("adapter", "lora_r", "lora_alpha", "lora_target_modules"), DROP)
INT4 = {"activation_dtype": "int8", "weight_dtype": "int4", "group_size": 32}
FSDP2 = {"fsdp": ["full_shard", "auto_wrap"], "fsdp_config": {"fsdp_version": 2}}


def _problems(seed_mapping, **changes):
    return validate_mapping(_apply(seed_mapping, changes))


# Axolotl's example blocks (examples/llama-3/3b-qat-*.yaml, qwen3/8b-qat-fsdp2.yml, qat_nvfp4/), plus
# weight-only int4.
ACCEPTED = [
    INT4,
    {"activation_dtype": "int8", "weight_dtype": "int4", "group_size": 256, "fake_quant_after_n_steps": 1000},
    {"weight_dtype": "int4", "group_size": 64},
    {"activation_dtype": "mxfp4", "weight_dtype": "mxfp4", "group_size": 32},
    {"activation_dtype": "nvfp4", "weight_dtype": "nvfp4", "group_size": 16},
]


@pytest.mark.parametrize("block", ACCEPTED, ids=lambda b: f"{b.get('activation_dtype')}-{b['weight_dtype']}")
def test_the_schemes_kubetune_runs_are_accepted_with_fsdp2(seed_mapping, block):
    assert _problems(seed_mapping, qat=block, save_only_model=True, **FULL, **FSDP2) == []


REFUSED = [
    ("int8-weights", {"qat": {"weight_dtype": "int8"}}, "qat"),
    ("fp8", {"qat": {"activation_dtype": "fp8", "weight_dtype": "fp8"}}, "qat"),
    ("mixed-fp4", {"qat": {"activation_dtype": "int8", "weight_dtype": "nvfp4", "group_size": 16}}, "qat"),
    ("unknown-dtype", {"qat": {"weight_dtype": "int3"}}, "qat.weight_dtype"),
    ("no-weight-dtype", {"qat": {"activation_dtype": "int8"}}, "qat.weight_dtype"),
    ("nvfp4-group-32", {"qat": {"activation_dtype": "nvfp4", "weight_dtype": "nvfp4"}}, "qat.group_size"),
    (
        "mxfp4-group-16",
        {"qat": {"activation_dtype": "mxfp4", "weight_dtype": "mxfp4", "group_size": 16}},
        "qat.group_size",
    ),
    (
        "mxfp4-late-start",
        {"qat": {"activation_dtype": "mxfp4", "weight_dtype": "mxfp4", "fake_quant_after_n_steps": 5}},
        "qat.fake_quant_after_n_steps",
    ),
    ("late-start-zero", {"qat": INT4 | {"fake_quant_after_n_steps": 0}}, "qat.fake_quant_after_n_steps"),
    ("quantize-embedding", {"qat": INT4 | {"quantize_embedding": True}}, "qat.quantize_embedding"),
    ("with-lora", {"qat": INT4}, "adapter"),
    ("with-8bit-base", {"qat": INT4, "load_in_8bit": True}, "load_in_8bit"),
    ("with-torch-compile", {"qat": INT4, "torch_compile": True, **FULL}, "torch_compile"),
    ("with-deepspeed", {"qat": INT4, "deepspeed": {"zero_optimization": {"stage": 3}}, **FULL}, "deepspeed"),
    (
        "with-tensor-parallel",
        {"qat": INT4, "tensor_parallel_size": 2, **FSDP2, **FULL},
        "tensor_parallel_size",
    ),
    (
        "save-only-deepspeed",
        {"save_only_model": True, "deepspeed": {"zero_optimization": {"stage": 2}}},
        "save_only_model",
    ),
    ("save-only-fsdp-adapter", {"save_only_model": True, **FSDP2}, "save_only_model"),
    (
        "save-only-plateau",
        {"save_only_model": True, "lr_scheduler": "reduce_lr_on_plateau"},
        "save_only_model",
    ),
]


@pytest.mark.parametrize(("changes", "path"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_what_does_not_run_is_refused_at_its_key_with_a_fix(seed_mapping, changes, path):
    problems = _problems(seed_mapping, **changes)
    assert path in [p.path for p in problems], "\n".join(map(str, problems))
    assert all(p.message and p.fix and not p.message.startswith("internal error") for p in problems)


def test_qat_and_save_only_model_are_no_longer_in_the_unimplemented_table():
    from kubetune.config.compat import TOP_LEVEL

    assert "qat" not in TOP_LEVEL and "save_only_model" not in TOP_LEVEL
