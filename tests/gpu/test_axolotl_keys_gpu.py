"""The CUDA paths of issue 14's keys (run on a lent GPU: `pytest -m gpu tests/gpu/test_axolotl_keys_gpu.py`):
flex_attn_compile_kwargs compiling the flex attention transformers calls, llama4_linearized_experts and
Mxfp4Config(dequantize=True) loading onto the GPU in bf16."""

from __future__ import annotations

import pytest
import torch

from tests.unit.train.test_attention import Cfg, packed_vs_alone
from tests.unit.train.test_model_options import _llama4, _mxfp4_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_flex_attention_compiled_with_the_given_options_keeps_packed_examples_apart(tiny, monkeypatch):
    from kubetune.config.hardware import FlexCompileKwargs
    from kubetune.train.attention import select_backend
    from transformers.integrations import flex_attention as hf_flex

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", hf_flex.compile_friendly_flex_attention)
    seen = []
    real_compile = torch.compile

    def spy(function, **options):
        seen.append(options)
        return real_compile(function, **options)

    monkeypatch.setattr(torch, "compile", spy)
    options = FlexCompileKwargs(dynamic=False)
    backend = select_backend(
        Cfg(attn_implementation="flex_attention", flex_attn_compile_kwargs=options), cuda=True
    )
    assert backend.name == "flex" and seen == [{"dynamic": False}]
    packed_vs_alone(tiny["model"], backend, atol=3e-2, device="cuda", dtype=torch.bfloat16)


def test_llama4_linearized_experts_on_cuda_in_bf16(tiny, tmp_path):
    from kubetune.train.llama4_experts import linearized_llama4_experts
    from transformers import AutoModelForCausalLM, AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tiny["model"]))
    fused = _llama4(tmp_path, vocab).to("cuda", torch.bfloat16)
    with linearized_llama4_experts() as built:
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "linearized", dtype=torch.bfloat16).to("cuda")
    assert len(built) == 2
    ids = torch.randint(3, vocab, (2, 16), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        got, ref = model(input_ids=ids).logits.float(), fused(input_ids=ids).logits.float()
    assert float((got - ref).norm() / ref.norm()) < 2e-2


def test_mxfp4_dequantize_loads_on_cuda(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Mxfp4Config

    vocab = len(AutoTokenizer.from_pretrained(tiny["model"]))
    _mxfp4_checkpoint(tmp_path / "gpt-oss", vocab)
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "gpt-oss", quantization_config=Mxfp4Config(dequantize=True), dtype=torch.bfloat16,
        device_map={"": 0},
    )  # fmt: skip
    experts = model.model.layers[0].mlp.experts
    assert type(experts).__name__ == "GptOssExperts" and experts.gate_up_proj.dtype == torch.bfloat16
    assert experts.gate_up_proj.is_cuda and getattr(model.config, "quantization_config", None) is None
    ids = torch.randint(3, vocab, (1, 8), device="cuda")
    model(input_ids=ids).logits.float().sum().backward()
    assert experts.gate_up_proj.grad is not None
