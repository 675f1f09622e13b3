"""The speed levers of issue 8, each one switchable on its own, for measuring them in isolation.

bench/gpu_throughput.py `--suite levers` runs a plain training step on the Llama-3-8B shape and turns
these on one at a time. Every lever degrades to a no-op with a reason when its library or CUDA is
missing, so the harness also runs on a CPU with a tiny shape.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

VARLEN_NAME = "kubetune_varlen"


@dataclass(frozen=True)
class Levers:
    attn: str = "sdpa"  # sdpa | flex | varlen (torch.nn.attention.varlen, flash-attention kernels in torch)
    loss: str = "hf"  # hf (logits + HF loss) | chunked (checkpointed chunks) | liger (fused linear CE)
    fused_adamw: bool = False
    liger_kernels: bool = False  # liger RMSNorm, SwiGLU and RoPE in place of the eager ops
    compile_layers: bool = False  # torch.compile of each decoder layer
    gc_every: int = 0  # 0: no activation checkpointing; n: checkpoint every n-th layer (non-reentrant)
    reentrant: bool = False
    nf4: bool = False  # bitsandbytes nf4 + double quant base weights (QLoRA)

    def label(self) -> str:
        parts = [f"attn={self.attn}", f"loss={self.loss}"]
        parts += [
            name
            for name in ("fused_adamw", "liger_kernels", "compile_layers", "reentrant", "nf4")
            if getattr(self, name)
        ]
        if self.gc_every:
            parts.append(f"gc_every={self.gc_every}")
        return ",".join(parts)


def missing(levers: Levers) -> list[str]:
    """Why a lever set cannot run here (empty when it can)."""
    cuda = torch.cuda.is_available()
    reasons = []
    if levers.attn in ("flex", "varlen") and not cuda:
        reasons.append(f"{levers.attn} attention needs CUDA")
    if levers.attn == "varlen" and importlib.util.find_spec("torch.nn.attention.varlen") is None:
        reasons.append("torch.nn.attention.varlen is absent")
    if (levers.loss == "liger" or levers.liger_kernels) and not (cuda and _has("liger_kernel")):
        reasons.append("liger-kernel needs CUDA and the liger_kernel package")
    if levers.compile_layers and not cuda:
        reasons.append("compiled layers are measured on CUDA only")
    if levers.nf4 and not (cuda and _has("bitsandbytes")):
        reasons.append("nf4 needs CUDA and bitsandbytes")
    return reasons


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------- attention


def register_varlen_attention() -> None:
    """Register the engine's attention function over torch's varlen flash kernel under VARLEN_NAME.

    The model then takes `cu_seq_lens_q/k` and `max_length_q/k` keyword arguments (the names
    transformers uses for flash-attn) and never builds a mask: the boundaries are the mask.
    """
    from kubetune.train.attention import varlen_attention_forward
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_NAME, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN_NAME, lambda *args, **kwargs: None)


def set_attention(model, attn: str) -> None:
    name = {"sdpa": "sdpa", "flex": "flex_attention", "varlen": VARLEN_NAME, "eager": "eager"}[attn]
    if attn == "varlen":
        register_varlen_attention()
    # Every submodule shares the one config object, so this switches all layers at once.
    model.config._attn_implementation = name


# ---------------------------------------------------------------- loss


def hf_shift(labels: torch.Tensor) -> torch.Tensor:
    """Labels shifted left by one with -100 at the end: hidden[t] predicts labels[t + 1]."""
    return F.pad(labels[:, 1:], (0, 1), value=-100)


def token_sum_loss(
    kind: str, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Sum of the cross-entropy over trained tokens; hidden [B,T,H], labels already shifted."""
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1)
    if kind == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return liger_fused_linear_cross_entropy(flat_hidden, weight, flat_labels, reduction="sum")
    if kind == "chunked":
        return chunked_cross_entropy(flat_hidden, weight, flat_labels)
    logits = flat_hidden @ weight.t()
    return F.cross_entropy(logits.float(), flat_labels, ignore_index=-100, reduction="sum")


def _chunk_ce(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy((hidden @ weight.t()).float(), labels, ignore_index=-100, reduction="sum")


def chunked_cross_entropy(hidden, weight, labels, chunk: int = 2048) -> torch.Tensor:
    """Cross-entropy in token chunks whose logits are recomputed in backward, never all alive at once."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for h, y in zip(hidden.split(chunk), labels.split(chunk), strict=True):
        total = total + checkpoint(_chunk_ce, h, weight, y, use_reentrant=False)
    return total


# ---------------------------------------------------------------- kernels and compile


def apply_liger_kernels(model) -> None:
    """Swap RMSNorm, SwiGLU and RoPE of a (peft-wrapped) Llama for liger's Triton kernels."""
    from liger_kernel.transformers.functional import liger_rms_norm, liger_rope, liger_swiglu
    from transformers.models.llama import modeling_llama

    def rms_forward(self, hidden_states):
        return liger_rms_norm(hidden_states, self.weight, self.variance_epsilon, in_place=False)

    def mlp_forward(self, x):
        return self.down_proj(liger_swiglu(self.gate_proj(x), self.up_proj(x)))

    def rope(q, k, cos, sin, unsqueeze_dim=1):
        return liger_rope(q, k, cos, sin)

    for module in model.modules():
        if isinstance(module, modeling_llama.LlamaRMSNorm):
            module.forward = rms_forward.__get__(module)
        elif isinstance(module, modeling_llama.LlamaMLP):
            module.forward = mlp_forward.__get__(module)
    modeling_llama.apply_rotary_pos_emb = rope


def remove_liger_kernels(model, original_rope) -> None:
    from transformers.models.llama import modeling_llama

    for module in model.modules():
        if isinstance(module, (modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP)) and "forward" in vars(
            module
        ):
            del module.forward
    modeling_llama.apply_rotary_pos_emb = original_rope


def decoder_layers(model):
    return model.get_base_model().model.layers if hasattr(model, "get_base_model") else model.model.layers


def compile_layers(model, enable: bool) -> None:
    for layer in decoder_layers(model):
        if enable:
            layer.compile(dynamic=False)
        else:
            layer._compiled_call_impl = None


def set_checkpointing(model, every: int, reentrant: bool) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if every <= 0:
        base.gradient_checkpointing_disable()
        return
    base.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": reentrant}, every_n_layers=every
    )


# ---------------------------------------------------------------- nf4


def quantize_nf4(model) -> None:
    """Replace every decoder nn.Linear by a bitsandbytes nf4 + double-quant Linear4bit, in place.

    The same layers transformers' BitsAndBytesConfig(load_in_4bit, nf4, double quant) quantizes;
    embeddings, norms and lm_head stay bf16.
    """
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is not torch.nn.Linear:
                    continue
                quant = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=torch.bfloat16,
                    compress_statistics=True,
                    quant_type="nf4",
                    device="meta",
                )
                weight = bnb.nn.Params4bit(
                    child.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4"
                )
                quant.weight = weight.to(child.weight.device)
                setattr(parent, name, quant)
                del child
        torch.cuda.empty_cache()
    model.is_loaded_in_4bit = True
