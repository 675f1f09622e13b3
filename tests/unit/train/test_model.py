"""Model loading: adapters (targets, DoRA, rsLoRA, continuing an adapter), special tokens, dtype,
quantization settings and gradient checkpointing, on the tiny model."""

from __future__ import annotations

import pytest
import torch
from kubetune.train.attention import AttentionBackend
from kubetune.train.errors import UserError
from kubetune.train.model import (
    Precision,
    check_request,
    load_model,
    load_tokenizer,
    quantization_config,
    resolve_precision,
)

SDPA = AttentionBackend("sdpa", "sdpa")
FP32 = Precision(torch.float32, "no")


def load(cfg):
    tokenizer = load_tokenizer(cfg)
    return load_model(cfg, tokenizer, precision=FP32, backend=SDPA, device=None), tokenizer


def test_lora_target_linear_covers_every_linear_layer_but_the_head(make_config):
    cfg, _ = make_config(lora_target_linear=True, lora_target_modules=None)
    model, _ = load(cfg)
    targets = set(model.peft_config["default"].target_modules)
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)


def test_seed_targets_dora_rslora_and_modules_to_save(make_config):
    cfg, _ = make_config(peft_use_dora=True, peft_use_rslora=True, lora_modules_to_save=["lm_head"])
    model, _ = load(cfg)
    config = model.peft_config["default"]
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}  # as the seed lists them
    assert config.use_dora and config.use_rslora
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(32 / 16**0.5)  # rsLoRA: alpha / sqrt(r)
    assert "default" in layer.lora_magnitude_vector  # DoRA
    assert any("modules_to_save" in name and p.requires_grad for name, p in model.named_parameters())


def test_continuing_an_adapter_starts_from_its_weights(make_config, tmp_path):
    cfg, _ = make_config()
    model, _ = load(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.125)
    model.save_pretrained(tmp_path / "adapter")
    continued, _ = load(make_config("continued", lora_model_dir=str(tmp_path / "adapter"))[0])
    weights = {name: p for name, p in continued.named_parameters() if "lora_B" in name}
    assert weights and all(p.requires_grad and torch.all(p == 0.125) for p in weights.values())


def test_added_tokens_resize_the_embeddings(make_config):
    cfg, _ = make_config(
        tokens=["<extra_a>", "<extra_b>"],
        special_tokens={"additional_special_tokens": ["<tool>"]},
        lora_modules_to_save=["embed_tokens", "lm_head"],
    )
    from transformers import AutoTokenizer

    before = len(AutoTokenizer.from_pretrained(cfg.base_model))
    model, tokenizer = load(cfg)
    assert len(tokenizer) == before + 3
    assert model.get_input_embeddings().num_embeddings == before + 3
    assert tokenizer.convert_tokens_to_ids("<tool>") >= before


def test_full_fine_tune_trains_everything_with_gradient_checkpointing(make_config):
    cfg, _ = make_config(
        adapter=None, lora_r=None, lora_alpha=None, lora_target_modules=None, gradient_checkpointing=True
    )
    model, _ = load(cfg)
    assert all(p.requires_grad for p in model.parameters())
    assert model.is_gradient_checkpointing and not model.config.use_cache


def test_gradient_checkpointing_changes_memory_not_gradients(make_config):
    from kubetune.train.loss import CausalLMLoss, shift_targets

    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same LoRA initialisation both times
        model, _ = load(make_config(f"gc{checkpointing}", gradient_checkpointing=checkpointing)[0])
        model.train()
        ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))
        positions = torch.arange(16).expand(2, 16)
        loss = CausalLMLoss(model)(
            input_ids=ids, targets=shift_targets(ids, positions), position_ids=positions
        )
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5)


def test_quantization_settings(make_config):
    cfg, _ = make_config(adapter="qlora", load_in_4bit=True, bnb_4bit_compute_dtype="bfloat16")
    config = quantization_config(cfg, Precision(torch.bfloat16, "bf16"))
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    cfg, _ = make_config(
        "fp4", adapter="qlora", load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=False
    )
    config = quantization_config(cfg, Precision(torch.float16, "fp16"))
    assert config.bnb_4bit_quant_type == "fp4" and not config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.float16  # the training dtype when not given
    cfg, _ = make_config("eight", load_in_8bit=True)
    assert quantization_config(cfg, FP32).load_in_8bit
    with pytest.raises(UserError, match="CUDA GPU"):
        check_request(cfg, cuda=False)


def test_cpu_trains_in_float32_whatever_the_config_says(make_config):
    cfg, _ = make_config(bf16=True)
    assert resolve_precision(cfg, cuda=False) == FP32


@pytest.mark.parametrize(
    ("fsdp_keys", "adapter_dtype"),
    [
        ({}, torch.float32),  # peft upcasts adapters: fp32 master weights for the trained part
        (  # FSDP1 flattens a block into one tensor: the adapter keeps the base's bf16
            {
                "fsdp": ["full_shard", "auto_wrap"],
                "fsdp_config": {"fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer"},
            },
            torch.bfloat16,
        ),
        (  # FSDP2 shards parameter by parameter: mixed dtypes are fine, keep fp32 adapters
            {
                "fsdp": ["full_shard", "auto_wrap"],
                "fsdp_config": {"fsdp_version": 2, "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer"},
            },
            torch.float32,
        ),
    ],
)
def test_adapter_dtype_fits_the_sharding(make_config, tiny, fsdp_keys, adapter_dtype):
    from kubetune.train.model import attach_adapter
    from transformers import AutoModelForCausalLM

    cfg, _ = make_config("dtype", lora_target_linear=True, **fsdp_keys)
    base = AutoModelForCausalLM.from_pretrained(tiny["model"], dtype=torch.bfloat16)
    model = attach_adapter(cfg, base)
    lora = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
    assert lora == {adapter_dtype}


def test_float16_is_axolotls_non_amp_float16():
    """float16 weights without autocast on a GPU; fp16 (mixed precision) takes precedence; float32 on CPU."""
    from kubetune.config import load_config
    from kubetune.train.model import Precision, resolve_precision

    lora = {
        "base_model": "m",
        "learning_rate": 1e-4,
        "num_epochs": 1,
        "datasets": [{"path": "d", "type": "alpaca"}],
        "adapter": "lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_target_linear": True,
    }
    cfg = load_config({**lora, "float16": True})  # bf16 stays auto: float16 decides
    assert resolve_precision(cfg, cuda=True) == Precision(torch.float16, "no")
    assert resolve_precision(cfg, cuda=False) == Precision(torch.float32, "no")
    cfg = load_config({**lora, "float16": True, "fp16": True})
    assert resolve_precision(cfg, cuda=True) == Precision(torch.float16, "fp16")


@pytest.mark.parametrize("mode", [None, "max-autotune-no-cudagraphs"])
def test_torch_compile_mode_reaches_every_decoder_layers_compile(make_config, monkeypatch, mode):
    """torch_compile compiles each decoder layer; torch_compile_mode is the `mode` of that torch.compile."""
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: calls.append((type(self), kwargs)))
    cfg, _ = make_config(torch_compile=True, torch_compile_mode=mode)
    model, _ = load(cfg)
    layers = model.base_model.model.model.layers
    assert [kind for kind, _ in calls] == [type(layer) for layer in layers] and len(calls) > 0
    assert all(kwargs == ({"mode": mode} if mode else {}) for _, kwargs in calls)


def test_torch_compile_mode_without_torch_compile_is_refused(seed_mapping):
    from kubetune.config import validate_mapping

    (problem,) = validate_mapping({**seed_mapping, "torch_compile_mode": "max-autotune"})
    assert problem.path == "torch_compile_mode" and "torch_compile: true" in problem.fix
    assert (
        validate_mapping({**seed_mapping, "torch_compile": True, "torch_compile_mode": "max-autotune"}) == []
    )
