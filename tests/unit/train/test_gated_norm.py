"""liger_rms_norm_gated: which gated RMSNorms are swapped for liger's RMSNorm + SiLU-multiply kernels, and
that the swapped modules compute the same function (liger's kernels stood in for by their definitions on
the CPU; tests/gpu/test_gated_norm_gpu.py runs the real ones)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kubetune.train import fast_paths, kernels
from torch import nn

from .test_fast_paths import fake_module


def reference_liger(monkeypatch) -> list[str]:
    calls: list[str] = []

    def rms_norm(x, weight, eps, offset=0.0, casting_mode="llama", in_place=True):
        calls.append("rms_norm")
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def swiglu(a, b):
        calls.append("swiglu")
        return F.silu(a.float()).to(b.dtype) * b

    fake_module(
        monkeypatch, "liger_kernel.transformers.functional", liger_rms_norm=rms_norm, liger_swiglu=swiglu
    )
    return calls


def gated_norms() -> nn.ModuleDict:
    from transformers.models.falcon_h1.modeling_falcon_h1 import FalconH1RMSNormGated
    from transformers.models.mamba2.modeling_mamba2 import MambaRMSNormGated
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextRMSNormGated
    from transformers.models.zamba2.modeling_zamba2 import Zamba2RMSNormGated

    torch.manual_seed(0)
    norms = nn.ModuleDict(
        {
            "qwen3_next": Qwen3NextRMSNormGated(64),  # norm, then silu(gate)
            "nemotron_h": Zamba2RMSNormGated(64, group_size=16),  # silu(gate), then the norm per 16 channels
            "mamba2": MambaRMSNormGated(64),  # silu(gate), then the norm over the width
            "falcon_h1": FalconH1RMSNormGated(64, n_groups=2),  # another convention: left as it is
        }
    )
    for norm in norms.values():
        nn.init.normal_(norm.weight, 1.0, 0.2)
    return norms


def test_the_known_gated_norms_compute_the_same_through_liger(monkeypatch):
    calls = reference_liger(monkeypatch)
    norms = gated_norms()
    x, gate = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    expected = {name: norm(x, gate) for name, norm in norms.items()}
    expected_ungated = norms["mamba2"](x)
    assert kernels.apply_liger_kernels(norms, ["rms_norm_gated"]) == ["rms_norm_gated x3"]
    assert "forward" not in vars(norms["falcon_h1"])
    for name, norm in norms.items():
        torch.testing.assert_close(norm(x, gate), expected[name], msg=name)
    torch.testing.assert_close(norms["mamba2"](x), expected_ungated)
    assert calls.count("swiglu") == 3 and calls.count("rms_norm") == 4


def test_a_hybrid_model_has_its_gated_norms_swapped(monkeypatch):
    """A tiny NemotronH (Mamba2 mixer on transformers' PyTorch scan, attention, MoE): the one gated norm of
    its Mamba layer is swapped and the logits do not change."""
    from transformers import NemotronHConfig, NemotronHForCausalLM

    reference_liger(monkeypatch)
    config = NemotronHConfig(
        vocab_size=97, hidden_size=64, num_hidden_layers=3, hybrid_override_pattern="M*E", num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, mamba_num_heads=4, mamba_head_dim=16, ssm_state_size=16, n_groups=2,
        intermediate_size=128, moe_intermediate_size=64, moe_shared_expert_intermediate_size=64,
        n_routed_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = NemotronHForCausalLM(config).eval()
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        assert kernels.apply_liger_kernels(model, ["rms_norm_gated"]) == ["rms_norm_gated x1"]
        torch.testing.assert_close(model(input_ids=ids).logits, expected)


def test_the_gated_norm_is_swapped_in_only_when_switched_on(make_config):
    def kinds(cfg, **kwargs):
        options = {"default_on": True, "cuda": True, "compiled": False} | kwargs
        return fast_paths.liger_kinds(fast_paths.switches(cfg), **options)

    cfg, _ = make_config()
    assert "rms_norm_gated" not in kinds(cfg)  # kubetune's default: the model's own module
    cfg, _ = make_config(liger_rms_norm_gated=True)
    assert "rms_norm_gated" in kinds(cfg) and "rms_norm_gated" in kinds(cfg, default_on=False)
    assert kinds(cfg, default_on=False, cuda=False) == []  # liger's Triton kernels need a GPU
    cfg, _ = make_config(liger_rms_norm_gated=False)
    assert "rms_norm_gated" not in kinds(cfg)
