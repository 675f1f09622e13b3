"""fused_attn_kernel (Axolotl's fused q_norm + RoPE kernel) as kubetune's liger RMSNorm and RoPE switches, and
liger's Llama-convention kernels on Qwen3 (whose attention normalises queries and keys with the same
RMSNorm); liger's kernels stood in for by their definitions on the CPU (tests/gpu/test_gated_norm_gpu.py
runs the real ones on a tiny Qwen3)."""

from __future__ import annotations

import pytest
import torch
from kubetune.train import fast_paths, kernels

from .test_fast_paths import reference_liger


def kinds(cfg, **kwargs):
    options = {"default_on": False, "cuda": True, "compiled": False} | kwargs
    return fast_paths.liger_kinds(fast_paths.switches(cfg), **options)


def test_fused_attn_kernel_switches_the_rms_norm_and_rope_kernels(make_config):
    cfg, _ = make_config(fused_attn_kernel=True)
    assert kinds(cfg) == ["rms_norm", "rope"]  # forced on where kubetune's default is off (e.g. float32)
    assert kinds(cfg, compiled=True) == []  # torch_compile fuses them itself (logged)
    cfg, _ = make_config(fused_attn_kernel=False)
    assert kinds(cfg, default_on=True) == ["swiglu"]  # kept off where they would be on by default
    cfg, _ = make_config(fused_attn_kernel=False, liger_rope=True)
    assert kinds(cfg) == ["rope"]  # the liger key itself wins


def tiny_qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16,
    )  # fmt: skip
    return Qwen3ForCausalLM(config).eval()


@pytest.fixture
def qwen3_liger(monkeypatch):
    from transformers.models.qwen3 import modeling_qwen3

    reference_liger(monkeypatch)  # its rope calls Llama's function: the same as Qwen3's
    monkeypatch.setattr(modeling_qwen3, "apply_rotary_pos_emb", modeling_qwen3.apply_rotary_pos_emb)
    return modeling_qwen3


def test_qwen3_takes_the_llama_kernels_q_and_k_norms_included(qwen3_liger):
    original_rope = qwen3_liger.apply_rotary_pos_emb
    model = tiny_qwen3()
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        done = kernels.apply_liger_kernels(model)
        got = model(input_ids=ids).logits
    # 2 layers x (input, post-attention, q_norm, k_norm) + the final norm
    assert done == ["rms_norm x9", "swiglu x2", "rope"]
    assert "forward" in vars(model.model.layers[0].self_attn.q_norm)
    assert qwen3_liger.apply_rotary_pos_emb is not original_rope
    torch.testing.assert_close(got, expected)
