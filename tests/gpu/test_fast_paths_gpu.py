"""The GPU fast paths of issue 8 against the plain ones, on CUDA (run on a lent H200: `pytest -m gpu`).

Each fast kernel must compute the same function as the path it replaces, on fresh random inputs, to
within bf16 rounding (relative error ~1e-3..1e-2); a masking or indexing error is O(1).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_liger = pytest.mark.skipif(
    importlib.util.find_spec("liger_kernel") is None, reason="needs liger-kernel"
)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).norm() / ref.float().norm())


def tiny_llama(layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()


def packed(lengths_per_row: list[list[int]], width: int, seed: int) -> dict:
    from kubetune.data import PackedCollator

    generator = torch.Generator().manual_seed(seed)
    rows = []
    for lengths in lengths_per_row:
        ids = torch.randint(3, 512, (sum(lengths),), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": ids, "seq_lens": lengths})
    batch = PackedCollator(pad_token_id=0, pad_to=width)(rows)
    return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@pytest.mark.skipif(importlib.util.find_spec("torch.nn.attention.varlen") is None, reason="torch < 2.10")
def test_torch_varlen_matches_sdpa_with_block_mask_and_compiles():
    from kubetune.train import attention

    attention.register_torch_varlen()
    model = tiny_llama()
    sdpa = attention.AttentionBackend("sdpa", "sdpa")
    varlen = attention.AttentionBackend("torch_varlen", attention.TORCH_VARLEN)
    batches = [
        packed([[300, 100, 112], [50, 400]], 512, seed=1),
        packed([[512], [7, 9, 200, 64]], 512, seed=2),
    ]

    def run(backend, batch):
        model.config._attn_implementation = backend.hf_implementation
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], **backend.model_inputs(batch)).logits

    eager = []
    for batch in batches:
        real = batch["attention_mask"].bool()
        expected, got = run(sdpa, batch), run(varlen, batch)
        assert rel_err(got[real], expected[real]) < 2e-2
        eager.append(got)
    # Compiled layers, as with `torch_compile: true`: a new number of segments must not break or change it.
    for layer in model.model.layers:
        layer.compile()
    for batch, expected in zip(batches, eager, strict=True):
        real = batch["attention_mask"].bool()
        assert rel_err(run(varlen, batch)[real], expected[real]) < 2e-2


@needs_liger
@pytest.mark.parametrize("train_head", [False, True])  # LoRA (frozen head) and full fine-tuning
def test_fused_loss_matches_the_plain_loss(train_head):
    from kubetune.train.loss import IGNORE_INDEX, fused_loss_applies, fused_loss_sum

    torch.manual_seed(3)
    head = nn.Linear(256, 4096, bias=False).to("cuda", torch.bfloat16).requires_grad_(train_head)
    hidden = torch.randn(2, 384, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 4096, (2, 384), device="cuda")
    targets[:, :100] = IGNORE_INDEX
    assert fused_loss_applies(hidden, head)

    def plain():
        logits = (hidden.reshape(-1, 256) @ head.weight.t()).float()
        return F.cross_entropy(logits, targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")

    results = []
    for fn in (plain, lambda: fused_loss_sum(hidden, targets, head)):
        hidden.grad = head.weight.grad = None
        loss = fn()
        loss.backward()
        results.append(
            (loss.detach(), hidden.grad.clone(), None if not train_head else head.weight.grad.clone())
        )
    (ref_loss, ref_dh, ref_dw), (loss, dh, dw) = results
    assert abs(float(loss - ref_loss)) / float(ref_loss) < 1e-3
    assert rel_err(dh, ref_dh) < 2e-2
    if train_head:
        assert rel_err(dw, ref_dw) < 2e-2


@needs_liger
def test_liger_kernels_match_the_eager_modules():
    from kubetune.train.kernels import apply_liger_kernels
    from transformers.models.llama import modeling_llama

    original_rope = modeling_llama.apply_rotary_pos_emb
    model = tiny_llama()
    ids = torch.randint(0, 512, (2, 256), device="cuda")
    try:
        with torch.no_grad():
            expected = model(input_ids=ids).logits
            assert apply_liger_kernels(model)
            got = model(input_ids=ids).logits
    finally:
        modeling_llama.apply_rotary_pos_emb = original_rope
    assert rel_err(got, expected) < 2e-2


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_qlora_in_bf16_keeps_frozen_weights_bf16(tmp_path):
    """No float32 copies of the embeddings and head (+2 GiB at 8B); only the adapter trains."""
    from kubetune.config import load_config
    from kubetune.tiny import make_fixture
    from kubetune.train import attention
    from kubetune.train import model as model_lib

    paths = make_fixture(tmp_path, examples=32)
    cfg = load_config(
        {
            "base_model": paths["model"],
            "datasets": [{"path": paths["train"], "type": "alpaca"}],
            "output_dir": str(tmp_path / "out"),
            "adapter": "qlora",
            "load_in_4bit": True,
            "bnb_4bit_use_double_quant": True,
            "lora_r": 8,
            "lora_alpha": 16,
            "lora_target_linear": True,
            "gradient_checkpointing": True,
            "bf16": True,
            "micro_batch_size": 2,
            "num_epochs": 1,
            "learning_rate": 1e-3,
            "sequence_len": 128,
        }
    )
    tokenizer = model_lib.load_tokenizer(cfg)
    precision = model_lib.resolve_precision(cfg, cuda=True)
    backend = attention.select_backend(cfg, cuda=True)
    model = model_lib.load_model(
        cfg, tokenizer, precision=precision, backend=backend, device=torch.device("cuda")
    )
    base = model.get_base_model()
    assert base.get_input_embeddings().weight.dtype == torch.bfloat16
    assert base.get_output_embeddings().weight.dtype == torch.bfloat16
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    batch = packed([[60, 40], [100]], 128, seed=4)
    batch["input_ids"] = batch["input_ids"] % len(tokenizer)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(input_ids=batch["input_ids"], **backend.model_inputs(batch))
    out.logits.float().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_fused_lora_layers_match_peft_on_cuda_compiled():
    """The fused LoRA layers (cuBLAS addmm, Inductor) against peft's layers, bf16 autocast as in the engine:
    both measured against the float32 computation of the same weights."""
    from kubetune.train.lora_fused import fuse_lora_layers
    from peft import LoraConfig, get_peft_model

    def build(dtype):
        model = get_peft_model(
            tiny_llama().to(dtype),
            LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules="all-linear"),
        )
        torch.manual_seed(1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                nn.init.normal_(param, std=0.05)
        return model.train()

    def run(model, ids):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=model.dtype == torch.bfloat16):
            logits = model(input_ids=ids).logits
        logits.float().square().mean().backward()
        return logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    ids = torch.randint(0, 512, (2, 512), device="cuda")
    truth, truth_grads = run(build(torch.float32), ids)
    model = build(torch.bfloat16)
    peft_logits, peft_grads = run(model, ids)
    assert fuse_lora_layers(model) == 2 * 7
    for layer in model.get_base_model().model.layers:
        layer.compile()
    for _ in range(2):  # the second call runs the compiled graph
        logits, grads = run(model, ids)
    assert rel_err(logits, truth) <= 1.25 * rel_err(peft_logits, truth) + 1e-3
    for name, ref in truth_grads.items():
        assert rel_err(grads[name], ref) <= 1.25 * rel_err(peft_grads[name], ref) + 1e-2, name
