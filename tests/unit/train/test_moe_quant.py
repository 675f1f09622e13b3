"""quantize_moe_experts on tiny random MoE models of the families Axolotl's examples use (transformers'
fused 3-D experts: Qwen3-MoE, GLM-4.5, NemotronH, Mixtral): which tensors are quantized, that they load
packed and dequantize to the checkpoint's weights, that LoRA trains around them, and the refusals.

bitsandbytes' 4-bit runs on the CPU under the KUBETUNE_CPU_NF4 test switch (slowly; the real path is
CUDA: tests/gpu/test_axolotl_keys_gpu.py measures the memory on a GPU)."""

from __future__ import annotations

import pytest
import torch
from kubetune.train import moe_quant
from kubetune.train.attention import AttentionBackend
from kubetune.train.errors import UserError
from kubetune.train.model import CPU_NF4_ENV, Precision, check_request, load_model, load_tokenizer

from .test_model_options import backward

pytest.importorskip("bitsandbytes")

SDPA = AttentionBackend("sdpa", "sdpa")
FP32 = Precision(torch.float32, "no")
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
QLORA = {"adapter": "qlora", "load_in_4bit": True, "quantize_moe_experts": True, "model_type": None}
# bitsandbytes' CPU 4-bit matmul needs every linear dimension to be a multiple of its block of 64.
_SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip
FAMILIES = {
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {"intermediate_size": 128, "moe_intermediate_size": 64, "num_experts": 4, "num_experts_per_tok": 2},
    ),  # fmt: skip
    # the first layer dense (a linear down_proj beside the experts' fused down_proj in layer 1)
    "glm4_moe": (
        "Glm4MoeConfig",
        "Glm4MoeForCausalLM",
        {
            "intermediate_size": 128,
            "moe_intermediate_size": 64,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "first_k_dense_replace": 1,
            "n_group": 1,
            "topk_group": 1,
        },
    ),  # fmt: skip
    # attention then MoE (NemotronH's experts have no gate: `up_proj` / `down_proj`)
    "nemotron_h": (
        "NemotronHConfig",
        "NemotronHForCausalLM",
        {
            "intermediate_size": 128,
            "moe_intermediate_size": 64,
            "moe_shared_expert_intermediate_size": 64,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "hybrid_override_pattern": "*E",
            "n_groups": 1,
        },
    ),  # fmt: skip
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        {"intermediate_size": 64, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),  # fmt: skip
}


# A short run that trains (the loss falls in 8 steps at this rate), no mid-run saves or evaluations.
SHORT_RUN = {
    "max_steps": 8,
    "learning_rate": 0.01,
    "warmup_steps": 1,
    "saves_per_epoch": None,
    "eval_steps": None,
}


def tiny_moe(directory, family: str, tokenizer_dir: str) -> dict[str, torch.Tensor]:
    """A random-init model of `family` saved with the tiny fixture's tokenizer; returns its weights."""
    import transformers

    config_name, model_name, shape = FAMILIES[family]
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    config = getattr(transformers, config_name)(vocab_size=len(tokenizer), **(_SHAPE | shape))
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def expert_names(weights: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, tensor in weights.items() if tensor.ndim == 3 and ".experts." in name}


def load(cfg):
    tokenizer = load_tokenizer(cfg)
    return load_model(cfg, tokenizer, precision=FP32, backend=SDPA, device=None)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_fused_experts_load_in_4bit_and_lora_trains_around_them(
    make_config, tiny, tmp_path, monkeypatch, family
):
    """Every fused expert tensor (and nothing else) is held as NF4 bytes (half a byte per weight) and reads
    back as the checkpoint's weight to NF4's precision; without the key the same load keeps them float32."""

    monkeypatch.setenv(CPU_NF4_ENV, "1")
    weights = tiny_moe(tmp_path / family, family, tiny["model"])
    experts = expert_names(weights)
    assert experts
    targets = ATTENTION + ["down_proj"]  # down_proj: the dense / shared MLPs' linear layers, not the experts
    cfg, _ = make_config(base_model=str(tmp_path / family), lora_target_modules=targets, **QLORA)
    model = load(cfg)
    base = model.get_base_model()
    quantized = set()
    for name, module in base.named_modules():
        for pname in getattr(module, "parametrizations", {}):
            quantized.add(f"{name}.{pname}")
            packed = module.parametrizations[pname].original
            assert packed.dtype == torch.uint8 and not packed.requires_grad
            assert packed.numel() * 2 == weights[f"{name}.{pname}"].numel()
            expected = weights[f"{name}.{pname}"]
            error = (getattr(module, pname) - expected).abs().mean() / expected.abs().mean()
            assert error < 0.15, (name, pname, error)  # NF4's mean relative error is about 0.1
    assert quantized == experts
    assert not any("parametrizations" in name and "lora" in name for name, _ in model.named_modules())
    backward(model)
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "lora_" in n
    }

    off = QLORA | {"quantize_moe_experts": False}
    cfg, _ = make_config("plain", base_model=str(tmp_path / family), lora_target_modules=ATTENTION, **off)
    plain = load(cfg).get_base_model()
    for name in experts:
        assert plain.get_parameter(name).dtype == torch.float32


def test_8bit_experts_read_back_as_the_weights(tiny, tmp_path):
    """With load_in_8bit the experts are bitsandbytes' row-wise int8 (one scale a row), read in their dtype."""
    import transformers

    weights = tiny_moe(tmp_path / "m", "qwen3_moe", tiny["model"])
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)

    class Cfg:
        load_in_8bit, bnb_4bit_quant_type, bnb_4bit_use_double_quant, fsdp = True, None, None, None

    quantizer = moe_quant.ExpertQuantizer(Cfg())
    quantizer.sweep(model)
    assert set(quantizer.done) == expert_names(weights)
    for name in quantizer.done:
        path, _, pname = name.rpartition(".")
        module = model.get_submodule(path)
        assert module.parametrizations[pname].original.dtype == torch.int8
        assert getattr(module, pname).dtype == torch.float32
        torch.testing.assert_close(getattr(module, pname), weights[name], atol=0.02, rtol=0.02)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[5, 6, 7]])).logits).all()


def test_a_model_without_fused_experts_is_refused(make_config, monkeypatch):
    monkeypatch.setenv(CPU_NF4_ENV, "1")
    cfg, _ = make_config(lora_target_modules=ATTENTION, **QLORA | {"model_type": "LlamaForCausalLM"})
    with pytest.raises(UserError, match="LlamaForCausalLM has none") as caught:
        load(cfg)
    assert caught.value.key == "quantize_moe_experts"


def test_without_cuda_it_is_refused_at_start(make_config, monkeypatch):
    monkeypatch.delenv(CPU_NF4_ENV, raising=False)
    cfg, _ = make_config(lora_target_modules=ATTENTION, **QLORA)
    with pytest.raises(UserError, match="needs a CUDA GPU") as caught:
        check_request(cfg, cuda=False)
    assert caught.value.key == "quantize_moe_experts" and "remove quantize_moe_experts" in caught.value.fix
    check_request(cfg, cuda=True)  # on a GPU it goes ahead
    monkeypatch.setenv(CPU_NF4_ENV, "1")
    check_request(cfg, cuda=False)  # the CPU test switch


def test_a_qlora_run_with_quantized_experts_trains_and_its_adapter_reloads(
    make_config, tiny, tmp_path, monkeypatch
):
    """A whole run (loop, save) with 4-bit experts; the adapter on a base quantized the same way (plain
    transformers + peft) gives the trained model's logits, and the adapter moves them."""
    from .reload import assert_adapter_matters, assert_reproduces, load_adapter
    from .test_runs import logits_of, probe_ids, train_in_process

    monkeypatch.setenv(CPU_NF4_ENV, "1")
    tiny_moe(tmp_path / "moe", "qwen3_moe", tiny["model"])
    steps = SHORT_RUN
    cfg, _ = make_config(
        base_model=str(tmp_path / "moe"),
        lora_target_modules=ATTENTION,
        lora_modules_to_save=["lm_head"],
        **QLORA | steps,
    )
    run, summary = train_in_process(cfg)
    assert summary["steps"] == 8 and summary["final_train_loss"] < 0.8 * summary["history"][0]["loss"], (
        summary
    )
    ids = probe_ids(tiny)
    trained = logits_of(run.accelerator.unwrap_model(run.module).model, ids)
    with moe_quant.quantized_experts(cfg) as experts:
        reloaded = load_adapter(
            str(tmp_path / "moe"), cfg.output_dir, quantization_config=_nf4(torch.float32)
        )
    moe_quant.finish(experts, reloaded)
    assert len(experts.done) == 4
    assert_reproduces(reloaded, ids, trained, atol=1e-4)
    assert_adapter_matters(reloaded, ids, trained, atol=1e-4)


@pytest.mark.slow
def test_under_fsdp2_on_two_processes_the_quantized_experts_train_as_in_one(
    make_config, tiny, tmp_path, monkeypatch
):
    """FSDP2 shards the packed experts (stored as the other weights' dtype) like any frozen weight: two CPU
    ranks of 2 rows train the adapter one process trains on 2 x 2 rows, and it reloads."""
    from .reload import assert_adapter_matters, assert_reproduces, load_adapter
    from .support import torchrun_train
    from .test_runs import logits_of, probe_ids, train_in_process

    monkeypatch.setenv(CPU_NF4_ENV, "1")
    tiny_moe(tmp_path / "moe", "qwen3_moe", tiny["model"])
    keys = QLORA | {
        "base_model": str(tmp_path / "moe"), "lora_target_modules": ATTENTION, "lora_modules_to_save": ["lm_head"],
        "max_steps": 4, "learning_rate": 0.01, "warmup_steps": 1, "micro_batch_size": 2, "lora_dropout": 0.0,
        "bnb_4bit_compute_dtype": "float32", "saves_per_epoch": None, "eval_steps": None,
    }  # fmt: skip
    cfg, _ = make_config("one", gradient_accumulation_steps=2, **keys)
    run, _ = train_in_process(cfg)
    ids = probe_ids(tiny)
    trained = logits_of(run.accelerator.unwrap_model(run.module).model, ids)
    fsdp2 = {
        "fsdp": ["full_shard", "auto_wrap"],
        "fsdp_config": {"fsdp_version": 2, "fsdp_transformer_layer_cls_to_wrap": "Qwen3MoeDecoderLayer"},
    }
    cfg, path = make_config("fsdp2", gradient_accumulation_steps=1, **keys | fsdp2)
    done = torchrun_train(path, 2, timeout=600, env={"KUBETUNE_CPU_FSDP": "1", CPU_NF4_ENV: "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert "quantize_moe_experts: 4 expert tensors in 4-bit" in done.stderr
    with moe_quant.quantized_experts(cfg) as experts:
        reloaded = load_adapter(cfg.base_model, cfg.output_dir, quantization_config=_nf4(torch.float32))
    moe_quant.finish(experts, reloaded)
    # bitsandbytes' CPU 4-bit matmuls and the two ranks' float32 gradient sums round differently from one
    # process's (the same tolerance as the Llama QLoRA + FSDP test); a lost adapter is off by far more.
    assert_reproduces(reloaded, ids, trained, atol=1e-3)
    assert_adapter_matters(reloaded, ids, trained, atol=1e-3)


def _nf4(compute_dtype: torch.dtype):
    """The base's linear layers quantized as kubetune quantized them for training."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
    )
