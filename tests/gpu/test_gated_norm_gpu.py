"""liger_rms_norm_gated and fused_attn_kernel on CUDA (`pytest -m gpu tests/gpu/test_gated_norm_gpu.py`): liger's
real RMSNorm and SiLU-multiply kernels in place of the gated norms give the eager modules' outputs and
gradients in bf16; its RMSNorm / SwiGLU / RoPE on Qwen3 give the eager model's logits."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.unit.train.test_gated_norm import gated_norms

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="needs liger-kernel"),
]


def _run(norm, x, gate):
    x, gate = x.clone().requires_grad_(), gate.clone().requires_grad_()
    out = norm(x, gate)
    out.float().square().sum().backward()
    return out.float(), x.grad.float(), gate.grad.float(), norm.weight.grad.float()


def rel_err(got, ref) -> float:
    return float((got - ref).norm() / ref.norm())


def test_the_liger_gated_norms_match_the_eager_modules():
    from kubetune.train.kernels import apply_liger_kernels

    norms = gated_norms().to("cuda", torch.bfloat16)
    generator = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(4, 256, 64, device="cuda", dtype=torch.bfloat16, generator=generator)
    gate = torch.randn(4, 256, 64, device="cuda", dtype=torch.bfloat16, generator=generator)
    expected = {name: _run(norm, x, gate) for name, norm in norms.items()}
    norms.zero_grad()
    assert apply_liger_kernels(norms, ["rms_norm_gated"]) == ["rms_norm_gated x3"]
    for name, norm in norms.items():
        for got, ref in zip(_run(norm, x, gate), expected[name], strict=True):
            assert rel_err(got, ref) < 1e-2, name


def test_liger_kernels_on_qwen3_match_the_eager_model():
    """fused_attn_kernel's path on its models: liger's RMSNorm (q/k norms included), SwiGLU and RoPE on Qwen3."""
    from kubetune.train.kernels import apply_liger_kernels
    from transformers.models.qwen3 import modeling_qwen3

    from tests.unit.train.test_fused_attn_kernel import tiny_qwen3

    original_rope = modeling_qwen3.apply_rotary_pos_emb
    model = tiny_qwen3().to("cuda", torch.bfloat16)
    ids = torch.randint(0, 97, (2, 256), device="cuda")
    try:
        with torch.no_grad():
            expected = model(input_ids=ids).logits.float()
            assert apply_liger_kernels(model) == ["rms_norm x9", "swiglu x2", "rope"]
            got = model(input_ids=ids).logits.float()
    finally:
        modeling_qwen3.apply_rotary_pos_emb = original_rope
    assert rel_err(got, expected) < 2e-2
