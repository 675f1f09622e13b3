"""Axolotl's fast-path keys (liger_*, lora_*_kernel, plugins, use_kernels) switch kubetune's own paths.

Each switch: unset = kubetune decides, true = forced on where it applies, false = kept off. Which
path runs is checked here on CPU (the kernels are stand-ins, as in test_fast_paths.py); that they
compute the same result is checked there and in tests/gpu.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from kubetune.train import fast_paths, kernels
from kubetune.train import loss as loss_lib
from torch import nn

from .test_fast_paths import fake_module, reference_liger, tiny_llama

CCE = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
LIGER = "axolotl.integrations.liger.LigerPlugin"


def kinds(cfg, *, default_on=True, cuda=True, compiled=False):
    return fast_paths.liger_kinds(
        fast_paths.switches(cfg), default_on=default_on, cuda=cuda, compiled=compiled
    )


def test_liger_switches_choose_the_element_wise_kernels(make_config):
    cfg, _ = make_config()
    assert kinds(cfg) == ["rms_norm", "swiglu", "rope"]  # kubetune's default on a GPU in half precision
    assert kinds(cfg, default_on=False) == []  # e.g. a float32 run
    cfg, _ = make_config(
        plugins=[LIGER], liger_rms_norm=False, liger_glu_activation=True, liger_layer_norm=True
    )
    assert kinds(cfg) == ["swiglu", "rope", "layer_norm"]
    assert kinds(cfg, default_on=False) == ["swiglu", "layer_norm"]  # forced on even where the default is off
    # forced, but liger cannot run there (no GPU; the compiler fuses these ops itself): the default stays
    assert (
        kinds(cfg, default_on=False, cuda=False) == [] and kinds(cfg, default_on=False, compiled=True) == []
    )
    cfg, _ = make_config(use_kernels=False, liger_rope=True)
    assert kinds(cfg) == ["rope"]  # use_kernels is the default of the three Llama-family switches
    cfg, _ = make_config(use_kernels=True)
    assert kinds(cfg, default_on=False) == ["rms_norm", "swiglu", "rope"]
    cfg, _ = make_config(flash_attn_fuse_mlp=False)  # Axolotl's older SwiGLU switch
    assert kinds(cfg) == ["rms_norm", "rope"]
    cfg, _ = make_config(flash_attn_rms_norm=False)  # and its flash-attn RMSNorm switch
    assert kinds(cfg) == ["swiglu", "rope"]
    cfg, _ = make_config(flash_attn_rms_norm=True)
    assert kinds(cfg, default_on=False) == ["rms_norm"]


def test_only_the_chosen_liger_kernels_are_swapped_in(monkeypatch):
    reference_liger(monkeypatch)
    model = tiny_llama()
    assert kernels.apply_liger_kernels(model, ["rms_norm"]) == ["rms_norm x5"]
    assert "forward" in vars(model.model.norm) and "forward" not in vars(model.model.layers[0].mlp)


def test_liger_layer_norm_swaps_every_affine_layer_norm_and_keeps_the_function(monkeypatch):
    calls = []

    def layer_norm(x, weight, bias, eps):
        calls.append(x.shape)
        return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps)

    fake_module(monkeypatch, "liger_kernel.transformers.functional", liger_layer_norm=layer_norm)
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.LayerNorm(8, elementwise_affine=False))
    x = torch.randn(2, 8)
    expected = model(x)
    assert kernels.apply_liger_kernels(model, ["layer_norm"]) == ["layer_norm x1"]
    torch.testing.assert_close(model(x), expected)
    assert calls == [torch.Size([2, 8])]


def test_lora_kernel_switches_choose_the_fused_layer_groups(make_config):
    def groups(cfg, default_on=True, sharded=False):
        return fast_paths.lora_groups(fast_paths.switches(cfg), default_on=default_on, sharded=sharded)

    cfg, _ = make_config()
    assert groups(cfg) == {"mlp", "qkv", "o", "other"} and groups(cfg, default_on=False) == set()
    cfg, _ = make_config(lora_qkv_kernel=False, lora_mlp_kernel=True, lora_o_kernel=True)
    assert groups(cfg) == {"mlp", "o", "other"}
    assert groups(cfg, default_on=False) == {"mlp", "o"}  # forced on under torch_compile too
    assert groups(cfg, sharded=True) == set()  # FSDP / DeepSpeed: never (logged)
    names = {
        "base_model.model.model.layers.0.self_attn.q_proj": "qkv",
        "base_model.model.model.layers.0.self_attn.o_proj": "o",
        "base_model.model.model.layers.0.mlp.down_proj": "mlp",
        "base_model.model.lm_head": "other",
    }
    assert {name: fast_paths.lora_group(name) for name in names} == names


@pytest.mark.parametrize(
    ("keys", "fused"),
    [
        ({}, 8),  # the seed targets q, k, v, o in each of the tiny model's 2 layers: all fused by default
        ({"lora_qkv_kernel": False}, 2),  # o_proj only
        ({"lora_qkv_kernel": False, "lora_o_kernel": False}, 0),
    ],
)
def test_engine_fuses_the_switched_on_lora_groups(make_config, keys, fused):
    from kubetune.train import attention
    from kubetune.train import model as model_lib

    cfg, _ = make_config("fused", **keys)
    tokenizer = model_lib.load_tokenizer(cfg)
    model = model_lib.load_model(
        cfg,
        tokenizer,
        precision=model_lib.resolve_precision(cfg, cuda=False),
        backend=attention.select_backend(cfg, cuda=False),
        device=torch.device("cpu"),
    )
    assert model.config.num_hidden_layers == 2
    assert sum("_peft_forward" in m.__dict__ for m in model.modules()) == fused


@pytest.mark.parametrize(
    ("keys", "switch"),
    [
        ({}, None),
        ({"plugins": [CCE]}, True),
        ({"cut_cross_entropy": True}, True),
        ({"liger_fused_linear_cross_entropy": False}, False),
        ({"plugins": [LIGER], "liger_cross_entropy": True}, True),
    ],
)
def test_loss_switch_from_the_keys_that_name_it(make_config, keys, switch):
    cfg, _ = make_config(**keys)
    assert fast_paths.fused_loss_switch(cfg) is switch
    assert loss_lib.loss_function(cfg).keywords == {"fused": switch}


def test_loss_switch_off_keeps_the_plain_loss_where_the_fused_one_would_run(monkeypatch, caplog):
    fake_module(monkeypatch, "liger_kernel")
    cuda_hidden = SimpleNamespace(is_cuda=True)
    head = nn.Linear(8, 5)
    assert loss_lib.fused_loss_applies(cuda_hidden, head, switch=None)
    assert loss_lib.fused_loss_applies(cuda_hidden, head, switch=True)
    caplog.set_level(logging.INFO)
    assert not loss_lib.fused_loss_applies(cuda_hidden, head, switch=False)
    assert "switched off by the config" in caplog.text


# ---------------------------------------------------------------- attn_implementation


@pytest.mark.parametrize(
    ("implementation", "cuda", "bf16", "backend"),
    [
        ("flex_attention", True, True, ("flex", "flex_attention")),  # even with flash-attn installed
        ("flex_attention", False, True, ("sdpa", "sdpa")),  # no GPU: the same document mask through SDPA
        ("flex_attention", True, False, ("sdpa", "sdpa")),  # float32 heads: no flex backward kernel
        ("sdpa", True, True, ("sdpa", "sdpa")),
        ("eager", True, True, ("eager", "eager")),
        ("flash_attention_2", True, True, ("flash_varlen", "flash_attention_2")),
        ("xformers", True, False, ("sdpa_efficient", "kubetune_sdpa_efficient")),  # any precision
    ],
)
def test_attn_implementation_picks_the_backend(monkeypatch, caplog, implementation, cuda, bf16, backend):
    from kubetune.train import attention

    monkeypatch.setattr(attention, "flash_attn_installed", lambda: True)
    config = SimpleNamespace(
        attn_implementation=implementation,
        flash_attention=False,
        sdp_attention=False,
        xformers_attention=False,
        fp16=False,
        bf16=bf16,
    )
    with caplog.at_level(logging.WARNING, logger="kubetune.train.attention"):
        chosen = attention.select_backend(config, cuda=cuda)
    assert (chosen.name, chosen.hf_implementation) == backend
    if implementation == "flex_attention" and backend[0] == "sdpa":
        assert "flex_attention needs" in caplog.text  # the fallback is said, not silent


def test_attn_implementations_without_a_kubetune_backend_are_refused_with_the_fix():
    from kubetune.config import validate_mapping

    base = {
        "base_model": "m",
        "learning_rate": 1e-4,
        "num_epochs": 1,
        "datasets": [{"path": "d", "type": "alpaca"}],
    }
    assert validate_mapping({**base, "attn_implementation": "flex_attention"}) == []
    assert validate_mapping({**base, "attn_implementation": "xformers"}) == []
    # Hub kernels of kernels-community load through transformers (train/attention.py); other orgs are refused.
    assert validate_mapping({**base, "attn_implementation": "kernels-community/vllm-flash-attn3"}) == []
    assert (
        validate_mapping({**base, "flash_attention": True, "attn_implementation": "kernels-community/x"})
        == []
    )
    (problem,) = validate_mapping({**base, "attn_implementation": "someone/flash-attn3"})
    assert problem.path == "attn_implementation" and "kernels-community" in problem.fix
    (problem,) = validate_mapping({**base, "attn_implementation": "sage"})
    assert problem.path == "attn_implementation" and "flash_attention_2" in problem.fix
    (problem,) = validate_mapping({**base, "attn_implementation": "foo"})
    assert "xformers" in problem.fix and "'foo'" in problem.message
