"""Axolotl's other spellings of kubetune settings reach the one setting the engine reads."""

import pytest
from kubetune.config import load_config, validate_mapping

BASE = {
    "base_model": "m",
    "learning_rate": 1e-4,
    "num_epochs": 1,
    "datasets": [{"path": "d", "type": "alpaca"}],
}


@pytest.mark.parametrize(
    ("keys", "attribute", "value"),
    [
        ({"adam_eps": 1e-9}, "adam_epsilon", 1e-9),  # what the optimizer gets as eps (test_optim)
        ({"bfloat16": True}, "bf16", True),
        (
            {"batch_size": 8, "micro_batch_size": 2},
            "gradient_accumulation_steps",
            4,
        ),  # Axolotl's normalize_config
        ({"warmup_steps": 0.1}, "warmup_steps", 0.1),  # a fraction of the total steps (test_optim)
        ({"warmup_steps": 10.0}, "warmup_steps", 10),
        ({"evaluation_strategy": "no"}, "eval_strategy", "no"),
        ({"model_revision": "v1.0"}, "revision_of_model", "v1.0"),  # reaches from_pretrained (test_revision)
    ],
)
def test_spelling_reaches_the_setting(keys, attribute, value):
    cfg = load_config({**BASE, **keys})
    assert getattr(cfg, attribute) == value and type(getattr(cfg, attribute)) is type(value)


def test_both_spellings_at_once_are_refused():
    (problem,) = validate_mapping({**BASE, "adam_eps": 1e-9, "adam_epsilon": 1e-9})
    assert problem.path == "adam_eps" and "keep only 'adam_epsilon'" in problem.fix


def test_float16_contradictions_are_refused():
    """A full fine-tune in pure float16, and float16 with bf16: true (the precision itself: test_model)."""
    lora = {**BASE, "adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_target_linear": True}
    assert validate_mapping({**lora, "float16": True}) == []
    assert [p.path for p in validate_mapping({**BASE, "float16": True, "bf16": False})] == ["float16"]
    assert [p.path for p in validate_mapping({**lora, "float16": True, "bf16": True})] == ["float16"]


def test_hf_use_auth_token_true_is_what_kubetune_always_does():
    assert validate_mapping({**BASE, "hf_use_auth_token": True}) == []  # the token of HF_TOKEN / the login
    (problem,) = validate_mapping({**BASE, "hf_use_auth_token": "hf_abc"})
    assert problem.path == "hf_use_auth_token" and "HF_TOKEN" in problem.fix


def test_gradient_checkpointing_beside_fsdp_activation_checkpointing_is_fsdps_alone():
    fsdp = {"fsdp": ["full_shard", "auto_wrap"], "fsdp_config": {"activation_checkpointing": True}}
    cfg = load_config({**BASE, **fsdp, "gradient_checkpointing": True})
    # the same request twice: FSDP's checkpoint wrapper does it, the model's own is not switched on as well
    assert cfg.fsdp_config.fsdp_activation_checkpointing is True and cfg.gradient_checkpointing is False
    assert load_config({**BASE, "gradient_checkpointing": True}).gradient_checkpointing is True  # no FSDP


def test_tokens_given_as_special_tokens_mapping_says_where_they_belong():
    """Axolotl's `tokens` is a list (archived examples give a mapping of special tokens, which Axolotl refuses
    too): kubetune keeps refusing it, and the fix points at special_tokens."""
    from kubetune.config import validate_mapping

    base = {
        "base_model": "m",
        "learning_rate": 1e-4,
        "num_epochs": 1,
        "datasets": [{"path": "d", "type": "alpaca"}],
    }
    (problem,) = validate_mapping({**base, "tokens": {"bos_token": "<s>", "eos_token": "</s>"}})
    assert (
        problem.path == "tokens"
        and "special_tokens" in problem.fix
        and "bos_token, eos_token" in problem.message
    )
    assert validate_mapping({**base, "special_tokens": {"bos_token": "<s>", "eos_token": "</s>"}}) == []
    (other,) = validate_mapping({**base, "tokens": {"word": "x"}})
    assert "list" in other.fix  # any other mapping: the generic list message


def test_fused_attn_kernel_is_a_fast_path_switch():
    """Axolotl's fused q_norm + RoPE switch reads as kubetune's liger RMSNorm and RoPE switches (what each value
    does: tests/unit/train/test_fused_attn_kernel.py)."""
    from kubetune.config import validate_mapping

    base = {
        "base_model": "m",
        "learning_rate": 1e-4,
        "num_epochs": 1,
        "datasets": [{"path": "d", "type": "alpaca"}],
    }
    assert validate_mapping({**base, "fused_attn_kernel": True}) == []
    assert validate_mapping({**base, "fused_attn_kernel": False}) == []
