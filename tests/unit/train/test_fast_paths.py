"""The GPU fast paths (issue 8) on CPU: how they are chosen, how they fall back, and their wiring.

The kernels themselves need CUDA (tests/gpu/test_fast_paths_gpu.py checks them on a GPU); here each
one is replaced by a plain PyTorch reference so that everything around it — the reshapes, the keyword
arguments that travel through transformers, the dispatch — is checked against the ordinary path.
"""

from __future__ import annotations

import importlib.machinery
import logging
import sys
import types
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from kubetune.data import PackedCollator
from kubetune.train import attention, kernels
from kubetune.train import loss as loss_lib
from kubetune.train.loss import IGNORE_INDEX, causal_lm_loss_sum, shift_targets
from torch import nn


def tiny_llama(layers: int = 2, vocab: int = 97):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in Llama-3
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def packed_batch(seed: int = 0, width: int = 48) -> dict:
    """Two rows of several examples each, the second with a padding tail."""
    generator = torch.Generator().manual_seed(seed)

    def row(lengths):
        ids = torch.randint(3, 97, (sum(lengths),), generator=generator).tolist()
        return {"input_ids": ids, "labels": ids, "seq_lens": lengths}

    return PackedCollator(pad_token_id=0, pad_to=width)([row([20, 11, 17]), row([9, 25])])


def cfg(**overrides):
    values = {
        "attn_implementation": None,
        "flash_attention": False,
        "sdp_attention": False,
        "fp16": False,
        "xformers_attention": False,
    }
    values["bf16"] = "auto"
    values.update(overrides)
    return SimpleNamespace(**values)


def fake_module(monkeypatch, name: str, **attrs):
    """Install a stand-in module (and its parents) that importlib.util.find_spec also sees."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        full = ".".join(parts[:i])
        module = types.ModuleType(full)
        module.__spec__ = importlib.machinery.ModuleSpec(full, None)
        monkeypatch.setitem(sys.modules, full, module)
    for key, value in attrs.items():
        setattr(sys.modules[name], key, value)


# ---------------------------------------------------------------- attention


def test_cpu_keeps_sdpa_with_the_block_mask():
    assert attention.select_backend(cfg(), cuda=False).name == "sdpa"


def test_cuda_without_flash_attn_uses_torch_varlen(monkeypatch, caplog):
    from transformers import AttentionInterface

    monkeypatch.setattr(attention, "flash_attn_installed", lambda: False)
    monkeypatch.setattr(attention, "torch_varlen_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    with caplog.at_level(logging.WARNING, logger="kubetune.train.attention"):
        backend = attention.select_backend(cfg(flash_attention=True), cuda=True)
    assert (backend.name, backend.hf_implementation) == ("torch_varlen", attention.TORCH_VARLEN)
    assert attention.TORCH_VARLEN in AttentionInterface._global_mapping
    assert "flash-attn is not installed" in caplog.text  # the fallback is said, not silent


@pytest.mark.parametrize("varlen_kernels", [True, False])
def test_float32_on_cuda_uses_sdpa_with_the_document_mask(monkeypatch, caplog, varlen_kernels):
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: False)
    monkeypatch.setattr(attention, "torch_varlen_available", lambda: varlen_kernels)
    with caplog.at_level(logging.INFO, logger="kubetune.train.attention"):
        backend = attention.select_backend(cfg(bf16=False), cuda=True)
    assert (backend.name, backend.hf_implementation) == ("sdpa", "sdpa")  # FlashAttention: bf16/fp16 only
    assert "float32" in caplog.text


def test_half_precision_without_varlen_kernels_falls_back_to_flex(monkeypatch):
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: False)
    monkeypatch.setattr(attention, "torch_varlen_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert attention.select_backend(cfg(bf16=True), cuda=True).name == "flex"


def reference_varlen(calls):
    """Per-segment causal SDPA: what torch's varlen flash kernel computes."""

    def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
        assert window_size == (-1, 0) and torch.equal(cu_q, cu_k)
        calls.append((cu_q.tolist(), max_q))
        groups = q.shape[1] // k.shape[1]
        out = torch.empty_like(q)
        for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
            qs = q[start:end].transpose(0, 1)
            ks = k[start:end].transpose(0, 1).repeat_interleave(groups, 0)
            vs = v[start:end].transpose(0, 1).repeat_interleave(groups, 0)
            out[start:end] = F.scaled_dot_product_attention(
                qs, ks, vs, is_causal=True, scale=scale
            ).transpose(0, 1)
        return out

    return varlen_attn


def test_torch_varlen_wiring_matches_sdpa_with_the_block_mask(monkeypatch):
    import torch.nn.attention.varlen as varlen_module

    calls = []
    monkeypatch.setattr(varlen_module, "varlen_attn", reference_varlen(calls))
    model = tiny_llama()
    batch = packed_batch()
    sdpa = attention.AttentionBackend("sdpa", "sdpa")
    varlen = attention.AttentionBackend("torch_varlen", attention.TORCH_VARLEN)
    attention.register_torch_varlen()
    with torch.no_grad():
        model.config._attn_implementation = "sdpa"
        expected = model(input_ids=batch["input_ids"], **sdpa.model_inputs(batch)).logits
        model.config._attn_implementation = attention.TORCH_VARLEN
        inputs = varlen.model_inputs(batch)
        got = model(input_ids=batch["input_ids"], **inputs).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-5)
    # Every layer got the flat boundaries and the constant row width (static for compiled layers).
    assert len(calls) == model.config.num_hidden_layers
    assert calls[0] == (batch["cu_seqlens"].tolist(), batch["input_ids"].shape[1])
    assert inputs["attention_mask"] is None and inputs["cu_seq_lens_q"].dtype == torch.int32


def test_torch_varlen_model_still_answers_a_plain_call(monkeypatch):
    """A trained model called with input_ids only (no cu_seqlens) computes plain causal attention."""
    import torch.nn.attention.varlen as varlen_module

    monkeypatch.setattr(varlen_module, "varlen_attn", reference_varlen([]))
    model = tiny_llama()
    ids = torch.randint(3, 97, (2, 16))
    attention.register_torch_varlen()
    with torch.no_grad():
        model.config._attn_implementation = "sdpa"
        expected = model(input_ids=ids).logits
        model.config._attn_implementation = attention.TORCH_VARLEN
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------- loss


def reference_flce(hidden, weight, targets, bias=None, ignore_index=-100, reduction="mean"):
    logits = hidden.float() @ weight.float().t()
    if bias is not None:
        logits = logits + bias.float()
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)


def test_fused_loss_sum_equals_the_plain_loss(monkeypatch):
    fake_module(
        monkeypatch, "liger_kernel.transformers.functional", liger_fused_linear_cross_entropy=reference_flce
    )
    torch.manual_seed(1)
    hidden = torch.randn(2, 12, 16)
    head = nn.Linear(16, 31, bias=False)
    labels = torch.randint(0, 31, (2, 12))
    labels[0, :5] = IGNORE_INDEX
    position_ids = torch.tensor([list(range(7)) + list(range(5)), list(range(12))])
    targets = shift_targets(labels, position_ids)
    plain = causal_lm_loss_sum(hidden, targets, head)  # CPU tensors: the plain path
    fused = loss_lib.fused_loss_sum(hidden, targets, head)
    torch.testing.assert_close(fused, plain)


def test_fused_loss_is_only_used_on_cuda_with_a_plain_head(monkeypatch):
    fake_module(monkeypatch, "liger_kernel")
    hidden = torch.randn(1, 4, 8)
    assert not loss_lib.fused_loss_applies(hidden, nn.Linear(8, 5))  # CPU
    cuda_hidden = SimpleNamespace(is_cuda=True)
    assert loss_lib.fused_loss_applies(cuda_hidden, nn.Linear(8, 5))
    wrapped = nn.Sequential(nn.Linear(8, 5))  # e.g. a peft wrapper: no plain weight to read
    assert not loss_lib.fused_loss_applies(cuda_hidden, wrapped)
    zero3 = nn.Linear(8, 5)
    zero3.weight.ds_id = 7  # a DeepSpeed ZeRO-3 partition: gathered only when the module runs
    assert not loss_lib.fused_loss_applies(cuda_hidden, zero3)


def test_without_liger_the_plain_loss_is_used(monkeypatch):
    monkeypatch.setattr(loss_lib.importlib.util, "find_spec", lambda name: None)
    assert not loss_lib.fused_loss_applies(SimpleNamespace(is_cuda=True), nn.Linear(8, 5))


# ---------------------------------------------------------------- liger kernels


def reference_liger(monkeypatch):
    from transformers.models.llama import modeling_llama

    def rms_norm(x, weight, eps, offset=0.0, casting_mode="llama", in_place=True):
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def swiglu(a, b):
        return F.silu(a) * b

    original = modeling_llama.apply_rotary_pos_emb  # captured: the patch replaces the module global

    def rope(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, rotary_dim=None):
        return original(q, k, cos, sin, unsqueeze_dim)

    # Restore the module global the patch replaces, whatever the test does.
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", modeling_llama.apply_rotary_pos_emb)
    fake_module(
        monkeypatch,
        "liger_kernel.transformers.functional",
        liger_rms_norm=rms_norm,
        liger_swiglu=swiglu,
        liger_rope=rope,
    )
    return modeling_llama


def test_liger_kernels_swap_the_llama_modules_and_keep_the_function(monkeypatch):
    modeling_llama = reference_liger(monkeypatch)
    original_rope = modeling_llama.apply_rotary_pos_emb
    model = tiny_llama()
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        done = kernels.apply_liger_kernels(model)
        got = model(input_ids=ids).logits
    assert done == ["rms_norm x5", "swiglu x2", "rope"]  # 2 layers x 2 norms + the final norm
    assert modeling_llama.apply_rotary_pos_emb is not original_rope
    torch.testing.assert_close(got, expected)


def test_liger_kernels_leave_other_architectures_alone(monkeypatch):
    reference_liger(monkeypatch)
    model = tiny_llama()
    model.config.model_type = "gemma"  # (1 + weight) RMSNorm: not liger's llama convention
    assert kernels.apply_liger_kernels(model) == []
    assert "forward" not in vars(model.model.norm)


def test_liger_kernels_need_the_package(monkeypatch):
    monkeypatch.setattr(kernels, "liger_available", lambda: False)
    assert kernels.apply_liger_kernels(tiny_llama()) == []


@pytest.mark.parametrize(
    ("cuda", "compile_on", "mixed", "expected"),
    [
        (True, False, "bf16", True),
        (True, True, "bf16", False),  # the compiler fuses the same ops
        (True, False, "no", False),  # float32 run: the kernels' llama casting is for half precision
        (False, False, "bf16", False),  # Triton needs a GPU
    ],
)
def test_fused_kernels_only_on_a_gpu_without_the_compiler(cuda, compile_on, mixed, expected):
    from kubetune.train.model import Precision, wants_fused_kernels

    precision = Precision(torch.bfloat16, mixed)
    assert wants_fused_kernels(SimpleNamespace(torch_compile=compile_on), precision, cuda=cuda) is expected
