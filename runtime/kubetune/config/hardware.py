"""Precision, attention implementation and data loading."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from .base import Section, field
from .qat import QATBlock

ATTN_IMPLEMENTATIONS = (
    "eager",
    "sdpa",
    "flash_attention_2",
    "flash_attention_3",
    "flex_attention",
    "xformers",
)
# Attention kernels from the Hub's `kernels-community` organisation (the one transformers loads without
# `allow_all_kernels`), e.g. `kernels-community/vllm-flash-attn3` (FlashAttention-3 with gpt-oss' attention
# sinks): transformers fetches the kernel with the `kernels` package and runs it through its flash-attention
# wrapper, so packed rows reach it as cu_seqlens like flash_attention_2's.
HUB_KERNEL = re.compile(r"kernels-community/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._-]+)?")


def is_hub_kernel(value: object) -> bool:
    return isinstance(value, str) and HUB_KERNEL.fullmatch(value) is not None


ATTN_HINTS = {
    "sage": "use flash_attention_2",
    "s2": "use flash_attention_2",
}


class FlexCompileKwargs(Section):
    """Keyword arguments of the `torch.compile` of flex attention (`flex_attn_compile_kwargs`)."""

    dynamic: bool | None = field(
        None, description="Compile for dynamic shapes (true) or specialise on each shape (false)."
    )
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = field(
        None, description="torch.compile's mode, e.g. `max-autotune-no-cudagraphs` (tunes the kernels)."
    )
    fullgraph: bool | None = field(None, description="Refuse graph breaks.")


class PrecisionKeys(Section):
    """Precision and attention"""

    bf16: bool | Literal["auto"] = field(
        "auto",
        description="Train in bfloat16 mixed precision: true, false or `auto` (on when the GPU supports it). "
        "Default: `auto`.",
    )
    fp16: bool = field(False, description="Train in float16 mixed precision (with loss scaling).")
    float16: bool | None = field(
        None,
        description="Axolotl's non-AMP float16: the weights load in float16 and train without mixed precision "
        "or loss scaling (GPU). `fp16: true` (mixed precision) takes precedence; with `bf16: auto` this "
        "key decides. Default: off.",
    )
    tf32: bool | Literal["auto"] = field(
        False, description="Allow TF32 matmuls on Ampere and newer GPUs: true, false or `auto`."
    )
    flash_attention: bool = field(
        False, description="Use FlashAttention 2 (needs flash-attn); packed rows use its varlen kernels."
    )
    sdp_attention: bool = field(False, description="Use PyTorch scaled-dot-product attention.")
    xformers_attention: bool = field(
        False,
        description="Axolotl's xformers attention, the same as `attn_implementation: xformers` (CUDA only).",
    )
    attn_implementation: (
        Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention", "xformers"]
        | Annotated[str, StringConstraints(pattern=HUB_KERNEL.pattern)]
        | None
    ) = field(
        None,
        description="transformers attention implementation, an alternative spelling of the flags above; "
        "`flex_attention` is torch's flex attention with a document mask (bf16/fp16 on a CUDA GPU; elsewhere "
        "SDPA with the same mask runs, logged). `xformers` is xformers' memory-efficient kernel as torch "
        "ships it: SDPA restricted to `SDPBackend.EFFICIENT_ATTENTION` with the document mask (any "
        "precision; CUDA only, a CPU run stops at start, as does a model whose attention layers take no "
        "registered attention function, e.g. Falcon; the xformers package is not needed). "
        "`kernels-community/NAME` (e.g. `kernels-community/vllm-flash-attn3`, FlashAttention-3 with gpt-oss' "
        "attention sinks) is a flash-attention kernel transformers fetches from the Hub with the `kernels` "
        "package (kubetune[gpu]); packed rows reach it as cu_seqlens; CUDA and bf16/fp16 only, a CPU run "
        "stops at start. Default: "
        "`flash_attention_2` with `flash_attention`, else kubetune picks the fastest kernel for the machine.",
    )
    flex_attn_compile_kwargs: FlexCompileKwargs | None = field(
        None,
        description="With `attn_implementation: flex_attention`: the options of the `torch.compile` of "
        "torch's flex_attention (transformers compiles it once with none of its own on torch >= 2.7), e.g. "
        "`{dynamic: false, mode: max-autotune-no-cudagraphs}` as in Axolotl's Llama 4 examples. Flex "
        "attention runs on a CUDA GPU in bf16/fp16 only: elsewhere the run stops at start rather than fall "
        "back to SDPA with these options unused.",
    )
    qat: QATBlock | None = field(
        None,
        description="Quantization-aware training (a full fine-tune): every linear layer trains with torchao's "
        "fake quantization to the scheme given (int8/int4, int4, mxfp4 or nvfp4), so the weights learn to "
        "survive quantizing the result afterwards. The saved model has plain weights (transformers loads it); "
        "quantize it with the same scheme after training (docs/training.md). Default: off.",
    )
    torch_compile: bool = field(False, description="Compile the model with `torch.compile`.")
    torch_compile_mode: (
        Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None
    ) = field(
        None,
        description="`mode` of the `torch.compile` that `torch_compile: true` runs on each decoder layer: "
        "`default`, `reduce-overhead` (CUDA graphs), `max-autotune` (Inductor tunes its kernels, with CUDA "
        "graphs; minutes of compiling first) or `max-autotune-no-cudagraphs`. Needs `torch_compile: true`. "
        "Default: torch's `default`.",
    )

    @field_validator("attn_implementation", mode="before")
    @classmethod
    def _known_implementation(cls, value: object) -> object:
        if not isinstance(value, str) or value in ATTN_IMPLEMENTATIONS or is_hub_kernel(value):
            return value
        hint = ATTN_HINTS.get(value)
        if hint is None and "/" in value:
            hint = (
                "kubetune loads hub attention kernels from kernels-community only (transformers' verified "
                "organisation), e.g. kernels-community/vllm-flash-attn3; or use flash_attention_2"
            )
        if hint is None:  # listed here: the union with the hub-kernel pattern would blur pydantic's message
            choices = ", ".join(ATTN_IMPLEMENTATIONS)
            raise PydanticCustomError(
                "attn_implementation_unknown",
                "attn_implementation '{value}' is not one of " + choices + " or kernels-community/NAME",
                {"value": value, "fix": f"use one of: {choices}"},
            )
        raise PydanticCustomError(
            "attn_implementation_not_implemented",
            "attn_implementation '{value}' is not implemented by kubetune",
            {"value": value, "fix": hint},
        )


class LoaderKeys(Section):
    """Data loading"""

    dataloader_num_workers: int = field(
        0, description="Background worker processes per rank feeding batches. Default: 0 (in-process).", ge=0
    )
    dataloader_prefetch_factor: int | None = field(
        None, description="Batches each worker loads ahead (needs `dataloader_num_workers` > 0).", ge=1
    )
    dataloader_pin_memory: bool = field(
        True, description="Pin host memory of batches for faster copies. Default: true."
    )
