"""quantize_moe_experts on CUDA (`pytest -m gpu tests/gpu/test_moe_quant_gpu.py`): the fused expert tensors
of a QLoRA base load in 4-bit (their GPU memory about 4x smaller, and never all in bf16 at once while
loading), the run trains, and its adapter reloads on a base quantized the same way."""

from __future__ import annotations

import pytest
import torch

from tests.unit.train import test_moe_quant as cpu

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# Experts large enough to measure: 4 MoE layers x 64 experts x 3 projections of 512 x 256 (100M weights,
# 201 MB in bf16) beside a small attention.
_BIG = {
    "qwen3_moe": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "moe_intermediate_size": 512,
        "num_experts": 64,
    },
    "glm4_moe": {
        "hidden_size": 256,
        "num_hidden_layers": 5,
        "moe_intermediate_size": 512,
        "n_routed_experts": 64,
    },
}


def _load_on_gpu(cfg):
    from kubetune.train.model import Precision, load_model, load_tokenizer

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    model = load_model(
        cfg, load_tokenizer(cfg), precision=Precision(torch.bfloat16, "bf16"), backend=cpu.SDPA,
        device=torch.device("cuda", 0),
    )  # fmt: skip
    return model, torch.cuda.memory_allocated() - before, torch.cuda.max_memory_allocated() - before


@pytest.mark.parametrize("family", sorted(_BIG))
def test_the_experts_take_a_quarter_of_their_bf16_memory(make_config, tiny, tmp_path, monkeypatch, family):
    config_name, model_name, shape = cpu.FAMILIES[family]
    monkeypatch.setitem(cpu.FAMILIES, family, (config_name, model_name, shape | _BIG[family]))
    weights = cpu.tiny_moe(tmp_path / family, family, tiny["model"])
    expert_bytes = sum(weights[name].numel() * 2 for name in cpu.expert_names(weights))  # in bf16
    keys = {"base_model": str(tmp_path / family), "lora_target_modules": cpu.ATTENTION}
    cfg_off, _ = make_config("off", **cpu.QLORA | keys | {"quantize_moe_experts": False})
    model, held_off, _ = _load_on_gpu(cfg_off)
    del model
    cfg_on, _ = make_config("on", **cpu.QLORA | keys)
    model, held_on, peak_on = _load_on_gpu(cfg_on)
    saved = held_off - held_on
    print(f"{family}: experts {expert_bytes / 2**20:.1f} MiB in bf16; held {held_off / 2**20:.1f} -> {held_on / 2**20:.1f} MiB, load peak {peak_on / 2**20:.1f} MiB")  # fmt: skip
    # NF4 with double quantization: 0.5 byte a weight + 1 byte a block of 64 (+ a float a 256 blocks)
    assert 0.70 * expert_bytes < saved < 0.76 * expert_bytes, (saved, expert_bytes)
    assert peak_on < held_off  # quantized as they load: the bf16 experts were never all on the GPU
    experts = [m for n, m in model.named_modules() if n.endswith(".experts")]
    assert experts and all(m.parametrizations.down_proj.original.is_cuda for m in experts)


def test_a_qlora_run_with_quantized_experts_trains_and_its_adapter_reloads_on_cuda(
    make_config, tiny, tmp_path
):
    from kubetune.train import moe_quant
    from transformers import BitsAndBytesConfig

    from tests.unit.train.reload import assert_adapter_matters, load_adapter
    from tests.unit.train.test_runs import logits_of, probe_ids, train_in_process

    cpu.tiny_moe(tmp_path / "moe", "qwen3_moe", tiny["model"])
    steps = cpu.SHORT_RUN
    cfg, _ = make_config(
        base_model=str(tmp_path / "moe"), lora_target_modules=cpu.ATTENTION, lora_modules_to_save=["lm_head"],
        bf16=True, **cpu.QLORA | steps,
    )  # fmt: skip
    run, summary = train_in_process(cfg)
    assert summary["steps"] == 8 and summary["final_train_loss"] < 0.8 * summary["history"][0]["loss"], (
        summary
    )
    ids = probe_ids(tiny).cuda()
    trained = logits_of(run.accelerator.unwrap_model(run.module).model, ids).float()
    nf4 = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )  # fmt: skip
    with moe_quant.quantized_experts(cfg) as experts:
        reloaded = load_adapter(
            str(tmp_path / "moe"),
            cfg.output_dir,
            dtype=torch.bfloat16,
            device="cuda",
            quantization_config=nf4,
        )
    moe_quant.finish(experts, reloaded)
    with torch.no_grad():
        again = reloaded.eval()(input_ids=ids).logits.float()
    assert float((again - trained).norm() / trained.norm()) < 1e-2
    assert_adapter_matters(reloaded, ids, trained, atol=1e-2)


def test_8bit_experts_on_cuda_run_in_bf16(make_config, tiny, tmp_path):
    """load_in_8bit (adapter: lora): the experts in bitsandbytes' row-wise int8, read back in bf16, and
    the adapter gets gradients through them outside autocast too."""
    cpu.tiny_moe(tmp_path / "moe", "qwen3_moe", tiny["model"])
    keys = {
        "adapter": "lora",
        "load_in_4bit": False,
        "load_in_8bit": True,
        "base_model": str(tmp_path / "moe"),
    }
    cfg, _ = make_config(**cpu.QLORA | keys | {"lora_target_modules": cpu.ATTENTION})
    model, _, _ = _load_on_gpu(cfg)
    experts = model.get_base_model().model.layers[0].mlp.experts
    assert experts.parametrizations.gate_up_proj.original.dtype == torch.int8
    assert experts.gate_up_proj.dtype == torch.bfloat16 and experts.gate_up_proj.is_cuda
    ids = torch.randint(3, 300, (2, 16), device="cuda")
    model(input_ids=ids).logits.float().sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
