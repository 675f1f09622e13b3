"""Fused LoRA layers (kubetune.train.lora_fused) against peft's own forward, on a tiny Llama on CPU.

The fused function must compute what peft computes: the same logits and the same gradient for every
adapter weight and for the input embeddings' output, eagerly and through torch.compile, and it must
leave alone every layer it cannot compute exactly (dropout, DoRA, a disabled adapter).
"""

from __future__ import annotations

import torch
from kubetune.train.lora_fused import fuse_lora_layers, unfuse_lora_layers, why_not_fusable

from .test_fast_paths import tiny_llama


def lora_model(dtype=torch.float32, **lora_keys):
    from peft import LoraConfig, get_peft_model

    model = tiny_llama().to(dtype)
    keys = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear"} | lora_keys
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **keys))
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: give the adapter a non-zero update to compare
            torch.nn.init.normal_(param, std=0.2)
    return peft_model


def logits_and_grads(model, ids) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    (logits.float().square().mean()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_fused_layers_match_peft():
    model = lora_model()
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    ref_logits, ref_grads = logits_and_grads(model, ids)

    fused = fuse_lora_layers(model)
    assert fused == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    logits, grads = logits_and_grads(model, ids)

    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) == 2 * 2 * 7
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, rtol=1e-4, atol=1e-6, msg=name)

    unfuse_lora_layers(model)
    again, _ = logits_and_grads(model, ids)
    torch.testing.assert_close(again, ref_logits)
    assert all("_peft_forward" not in m.__dict__ for m in model.modules())


def test_fused_layers_in_bf16_are_as_close_to_float32_as_peft():
    """The engine's mixed precision: a bf16 base, float32 adapter weights, bf16 autocast. Neither path
    is exact: the fused layers round once per GEMM where peft rounds the adapter's output, its scaled
    copy and the sum. Both are measured against the float32 computation."""
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    truth_logits, truth_grads = logits_and_grads(lora_model(torch.float32), ids)
    model = lora_model(torch.bfloat16)
    assert (
        model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.dtype
        == torch.float32
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        peft_logits, peft_grads = logits_and_grads(model, ids)
        fuse_lora_layers(model)
        logits, grads = logits_and_grads(model, ids)

    assert rel(logits, truth_logits) <= 1.25 * rel(peft_logits, truth_logits) + 1e-3
    for name, truth in truth_grads.items():
        fused_err, peft_err = rel(grads[name], truth), rel(peft_grads[name], truth)
        assert fused_err <= 1.25 * peft_err + 1e-2, f"{name}: fused {fused_err:.2e}, peft {peft_err:.2e}"


def test_fused_layers_compile_to_the_same_result():
    model = lora_model()
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(2))
    ref_logits, ref_grads = logits_and_grads(model, ids)
    fuse_lora_layers(model)
    for layer in model.get_base_model().model.layers:
        layer.compile(backend="aot_eager")  # traces the autograd function, forward and backward
    logits, grads = logits_and_grads(model, ids)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, rtol=1e-4, atol=1e-6, msg=name)


def test_float32_adapters_without_autocast_stay_with_peft():
    """Without autocast peft computes float32 adapter weights in float32 beside a bf16 base: not fused."""
    model = lora_model(torch.bfloat16)
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    ref_logits, ref_grads = logits_and_grads(model, ids)
    fuse_lora_layers(model)
    logits, grads = logits_and_grads(model, ids)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, rtol=0, atol=0, msg=name)


def test_layers_it_cannot_compute_exactly_are_left_to_peft(caplog):
    caplog.set_level("INFO")
    dropout = lora_model(lora_dropout=0.1)
    assert fuse_lora_layers(dropout) == 0
    assert "lora_dropout > 0" in caplog.text

    dora = lora_model(use_dora=True)
    reasons = {
        why_not_fusable(m) for m in dora.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")
    }
    assert reasons == {"adapter 'default' is a LoRA variant (DoRA, ...)"}

    # Fused, then the adapter switched off at run time: peft's own path serves the base model alone.
    model = lora_model()
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(3))
    fuse_lora_layers(model)
    with model.disable_adapter():
        base_logits = model(input_ids=ids).logits
    unfuse_lora_layers(model)
    with model.disable_adapter():
        torch.testing.assert_close(model(input_ids=ids).logits, base_logits)
    assert not torch.allclose(model(input_ids=ids).logits, base_logits)


def test_engine_fuses_single_process_lora_runs(make_config, caplog):
    from kubetune.train import attention
    from kubetune.train import model as model_lib

    cfg, _ = make_config("fused")
    caplog.set_level("INFO")
    tokenizer = model_lib.load_tokenizer(cfg)
    precision = model_lib.resolve_precision(cfg, cuda=False)
    backend = attention.select_backend(cfg, cuda=False)
    model = model_lib.load_model(
        cfg, tokenizer, precision=precision, backend=backend, device=torch.device("cpu")
    )
    expected = 4 * model.config.num_hidden_layers  # the seed targets q, k, v, o in every layer
    assert sum("_peft_forward" in m.__dict__ for m in model.modules()) == expected
    assert f"lora: {expected} layers fused" in caplog.text

    sharded = model_lib.load_model(cfg, tokenizer, precision=precision, backend=backend, device=None)
    assert not any("_peft_forward" in m.__dict__ for m in sharded.modules())
