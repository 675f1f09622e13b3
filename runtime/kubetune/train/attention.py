"""Attention backend: which kernel runs, and how a packed batch tells it where examples end.

Every backend honours packing boundaries; they differ only in how the boundaries are handed over:

  flash_varlen  flash-attn's varlen kernel, given cu_seqlens over the flattened batch (no mask at all);
                also a hub kernel (`kernels-community/...`) that transformers wraps as a flash attention
  torch_varlen  the same FlashAttention-2 kernels as built into torch (torch.nn.attention.varlen), for
                bf16/fp16 on CUDA when flash-attn is absent: no wheel to carry, no mask to build
  flex          torch flex attention with a document-causal BlockMask (CUDA, fp32, or an older torch)
  sdpa, eager   kubetune.data's dense block-diagonal causal 4D mask (CPU, or when asked for)
  sdpa_efficient  SDPA with that mask, restricted to torch's memory-efficient kernel (SDPBackend.
                EFFICIENT_ATTENTION, the xformers kernel torch carries): Axolotl's `xformers` (CUDA only)
  ring          context parallelism: a ring over the cp ranks' slices of the rows (context_parallel.py)

`select_backend` picks one from the config and the machine (logging any fallback);
`AttentionBackend.model_inputs` turns a collated batch into the decoder's keyword arguments.
Everything attention-specific lives here so a faster kernel is a change to this module only.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import cast

import torch
from torch.nn.attention import SDPBackend

from kubetune.config.hardware import is_hub_kernel
from kubetune.train.errors import UserError

log = logging.getLogger(__name__)

FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3")
TORCH_VARLEN = "kubetune_torch_varlen"  # the name it is registered under with transformers
SDPA_EFFICIENT = "kubetune_sdpa_efficient"  # likewise: Axolotl's attn_implementation `xformers`
# The kernels SDPA may choose under `xformers`: xformers' memory-efficient (cutlass) kernel is the one
# torch ships as EFFICIENT_ATTENTION. A tuple at module level so a CPU test can widen it (CPU has none).
EFFICIENT_KERNELS: tuple[SDPBackend, ...] = (SDPBackend.EFFICIENT_ATTENTION,)


@dataclass(frozen=True)
class AttentionBackend:
    name: str  # flash_varlen | torch_varlen | flex | sdpa | sdpa_efficient | eager | ring
    hf_implementation: str  # the `attn_implementation` transformers loads the model with

    def model_inputs(self, batch: dict) -> dict:
        """Decoder keyword arguments (besides input_ids) for a collated, on-device batch."""
        position_ids = batch["position_ids"]
        if self.name == "ring":  # context parallel: the split (context_parallel.py) derives the examples
            return {"position_ids": position_ids}
        if self.name == "flash_varlen":
            # The kernel reads the boundaries directly; max_seqlen stays a Python int (no device sync).
            cu = batch["cu_seqlens"].to(torch.int32)
            max_len = int(batch["max_seqlen"])
            return {
                "position_ids": position_ids,
                "attention_mask": None,
                "cu_seq_lens_q": cu,
                "cu_seq_lens_k": cu,
                "max_length_q": max_len,
                "max_length_k": max_len,
            }
        if self.name == "torch_varlen":
            # max_length is the row width, a constant, so compiled layers see no new int each batch
            # (it only sizes the kernel's grid: blocks past a segment's end exit at once).
            cu = batch["cu_seqlens"].to(torch.int32)
            width = position_ids.shape[-1]
            return {
                "position_ids": position_ids,
                "attention_mask": None,
                "cu_seq_lens_q": cu,
                "cu_seq_lens_k": cu,
                "max_length_q": width,
                "max_length_k": width,
            }
        if self.name == "flex":
            documents = torch.cumsum((position_ids == 0).to(torch.int32), dim=-1)
            return {"position_ids": position_ids, "attention_mask": document_block_mask(documents)}
        from kubetune.data.collator import block_causal_mask

        # SDPA takes a boolean mask (True = may attend); eager adds a float mask to its scores.
        mask = block_causal_mask(position_ids, dtype=torch.float32 if self.name == "eager" else None)
        return {"position_ids": position_ids, "attention_mask": mask}


def document_block_mask(documents: torch.Tensor):
    """A flex-attention BlockMask: causal within each example (blocks of other examples are skipped).

    `documents` [B, T] numbers the examples of each row (padding is an example of its own).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (documents[b, q_idx] == documents[b, kv_idx])

    batch, length = documents.shape
    return create_block_mask(mask_mod, batch, None, length, length, device=documents.device)


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def torch_varlen_available() -> bool:
    """torch ships FlashAttention-2's varlen kernels (torch >= 2.10); they need a GPU of sm80 or newer."""
    if importlib.util.find_spec("torch.nn.attention.varlen") is None or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability() >= (8, 0)


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function over torch's varlen flash kernel: [B, H, T, D] in, [B, T, H, D] out.

    The batch is one flat stream of segments given by cu_seq_lens_q (the attention mask is unused:
    the boundaries are the mask). Grouped-query attention needs no repeat: the kernel takes fewer
    key/value heads as they are.
    """
    if kwargs.get("cu_seq_lens_q") is None:
        # A plain call without packing metadata (a probe, a quick eval on the trained model): each row
        # is one causal sequence, which SDPA computes the same. transformers builds no mask for this
        # implementation, so right padding is harmless here but left padding is not supported.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, None, scaling=scaling, dropout=dropout)
    from torch.nn.attention.varlen import varlen_attn

    batch, heads, length, dim = query.shape
    cu_seqlens, max_length = kwargs["cu_seq_lens_q"], kwargs["max_length_q"]
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.transpose(1, 2).reshape(batch * length, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * length, value.shape[1], dim)
    out = cast(  # a tensor: the log-sum-exp (return_aux) is not asked for
        torch.Tensor,
        varlen_attn(
            q, k, v, cu_seqlens, cu_seqlens, max_length, max_length, scale=scaling, window_size=(-1, 0)
        ),
    )
    return out.view(batch, length, heads, dim), None


def efficient_attention_forward(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers attention function: SDPA allowed only its memory-efficient kernel (Axolotl's xformers).

    The restriction is entered here, around each attention call, so it also holds when gradient
    checkpointing recomputes the layer during backward (the backward of an SDPA call is that of the
    kernel its forward chose). Grouped key/value heads are repeated first: the memory-efficient kernel
    is not one of those that take fewer key/value heads (`enable_gqa`). No kernel that may run ->
    torch's RuntimeError, never a silent fallback to another kernel.
    """
    from torch.nn.attention import sdpa_kernel
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal and attention_mask is None and query.shape[2] > 1)
    with sdpa_kernel(list(EFFICIENT_KERNELS)):
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=causal
        )
    return out.transpose(1, 2).contiguous(), None


def register_sdpa_efficient() -> None:
    """Make SDPA_EFFICIENT a transformers attn_implementation, with SDPA's mask function (a 4D mask
    given by kubetune passes through as is; plain calls get SDPA's own mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SDPA_EFFICIENT, efficient_attention_forward)
    AttentionMaskInterface.register(SDPA_EFFICIENT, sdpa_mask)


def check_model_takes(backend: AttentionBackend, model_class: type) -> None:
    """Refuse, before loading, a kubetune-registered attention function for a model class whose attention
    layers do not look functions up in transformers' registry (older ones such as Falcon index their own
    table of classes by name and would fail with a KeyError while being built)."""
    if backend.hf_implementation == SDPA_EFFICIENT and not getattr(
        model_class, "_supports_attention_backend", False
    ):
        raise UserError(
            f"attn_implementation xformers runs as an attention function registered with transformers, and "
            f"{model_class.__name__}'s attention layers do not take registered functions.",
            "Use `attn_implementation: sdpa` (or flash_attention_2) for this model."
            if getattr(model_class, "_supports_sdpa", False)
            else "Use `attn_implementation: eager` for this model (it has no SDPA attention either).",
            key="attn_implementation",
        )


def register_torch_varlen() -> None:
    """Make TORCH_VARLEN a transformers attn_implementation (needed before the model is loaded).

    Deliberately no mask function: for an implementation without one, transformers builds no mask and
    skips its packed-sequence detection from position_ids (a device-to-host sync every forward). The
    boundaries come as cu_seqlens instead.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(TORCH_VARLEN, varlen_attention_forward)


def _half_precision(cfg) -> bool:
    """Whether the run computes in bf16/fp16 (as kubetune.train.model.resolve_precision decides on CUDA)."""
    return bool(cfg.fp16 or cfg.bf16 is True or (cfg.bf16 == "auto" and torch.cuda.is_bf16_supported()))


def requested_backend(cfg) -> str | None:
    """What the config asks for: hub_kernel | flash | sdpa | eager | flex | xformers, or None (choose for
    the machine)."""
    if is_hub_kernel(cfg.attn_implementation):
        return "hub_kernel"
    if cfg.attn_implementation in FLASH_IMPLEMENTATIONS or cfg.flash_attention:
        return "flash"
    if cfg.attn_implementation == "xformers" or cfg.xformers_attention:
        return "xformers"
    if cfg.attn_implementation == "sdpa" or cfg.sdp_attention:
        return "sdpa"
    if cfg.attn_implementation == "eager":
        return "eager"
    if cfg.attn_implementation == "flex_attention":
        return "flex"
    return None


def check_request(cfg, *, cuda: bool) -> None:
    """Refuse what cannot run here before anything is loaded (bad input, exit 2)."""
    if requested_backend(cfg) == "flash" and not cuda:
        key = "attn_implementation" if cfg.attn_implementation in FLASH_IMPLEMENTATIONS else "flash_attention"
        raise UserError(
            f"{key} asks for FlashAttention, which needs a CUDA GPU, and this machine has none.",
            "Run on a GPU node, or set `flash_attention: false` (and leave attn_implementation unset) to "
            "train with PyTorch SDPA attention on CPU.",
            key=key,
        )
    if requested_backend(cfg) == "hub_kernel":
        _check_hub_kernel(cfg, cuda=cuda)
    if requested_backend(cfg) == "xformers" and not cuda:
        key = "attn_implementation" if cfg.attn_implementation == "xformers" else "xformers_attention"
        raise UserError(
            f"{key} asks for the memory-efficient (xformers) attention kernel, which torch has for CUDA GPUs "
            "only, and this machine has none.",
            "Run on a GPU node, or set `attn_implementation: sdpa` to train with PyTorch SDPA attention on CPU.",
            key=key,
        )


def compile_flex_with(options: dict) -> None:
    """`flex_attn_compile_kwargs`: transformers' flex attention calls through its module-level
    compile_friendly_flex_attention, which compiles torch's flex_attention once with options of its own
    choosing; this puts in its place the same call over flex_attention compiled with `options`."""
    from torch.nn.attention.flex_attention import flex_attention
    from transformers.integrations import flex_attention as hf_flex

    compiled = torch.compile(flex_attention, **options)  # lazy: compiles at the first call

    def compile_friendly_flex_attention(query, key, value, training=False, **kwargs):
        # Inside a compiled region (torch_compile) the outer compile traces flex_attention itself.
        function = flex_attention if torch.compiler.is_compiling() else compiled
        return function(query, key, value, **kwargs)

    hf_flex.compile_friendly_flex_attention = compile_friendly_flex_attention
    log.info("attention: flex attention compiled with %s", options)


def kernels_installed() -> bool:
    return importlib.util.find_spec("kernels") is not None


def _check_hub_kernel(cfg, *, cuda: bool) -> None:
    """A hub attention kernel is compiled CUDA code taking bf16/fp16, fetched by the `kernels` package."""
    name = cfg.attn_implementation
    if not cuda:
        raise UserError(
            f"attn_implementation {name} is a CUDA kernel from the Hub, and this machine has no CUDA GPU.",
            "Run on a GPU node, or set `attn_implementation: sdpa` to train with PyTorch SDPA attention on CPU.",
            key="attn_implementation",
        )
    if not _half_precision(cfg):
        raise UserError(
            f"attn_implementation {name} is a flash-attention kernel, which takes bf16/fp16 only, and this run "
            "computes in float32.",
            "Set `bf16: true` (or fp16: true), or use `attn_implementation: sdpa`.",
            key="attn_implementation",
        )
    if not kernels_installed():
        raise UserError(
            f"attn_implementation {name} is fetched from the Hub by the `kernels` package, which is not installed.",
            "pip install 'kubetune[gpu]' (or just kernels) in the training image, or use "
            "`attn_implementation: flash_attention_2`.",
            key="attn_implementation",
        )


def select_backend(cfg, *, cuda: bool, context_parallel: bool = False) -> AttentionBackend:
    """The backend for this config on this machine; a fallback is logged, never silent.
    `context_parallel`: the mesh has a cp dim (the config rules leave attn_implementation unset then)."""
    check_request(cfg, cuda=cuda)
    if context_parallel:
        from kubetune.train import context_parallel as ring

        ring.register()
        log.info("attention: ring attention over the context-parallel ranks (packed examples kept apart)")
        return AttentionBackend("ring", ring.RING_ATTENTION)
    wanted = requested_backend(cfg)
    if wanted == "hub_kernel":
        # transformers loads it (kernels.get_kernel) and calls its flash_attn_varlen_func through the same
        # wrapper as flash_attention_2's: the cu_seqlens of flash_varlen reach it.
        log.info("attention: hub kernel %s (flash-attention varlen calls)", cfg.attn_implementation)
        return AttentionBackend("flash_varlen", cfg.attn_implementation)
    if wanted == "eager":
        return AttentionBackend("eager", "eager")
    if wanted == "sdpa":
        return AttentionBackend("sdpa", "sdpa")
    if wanted == "xformers":
        register_sdpa_efficient()
        log.info(
            "attention: xformers -> torch SDPA restricted to its memory-efficient kernel "
            "(SDPBackend.EFFICIENT_ATTENTION) with the document mask"
        )
        return AttentionBackend("sdpa_efficient", SDPA_EFFICIENT)
    if wanted == "flex":
        options = getattr(cfg, "flex_attn_compile_kwargs", None)
        if cuda and _half_precision(cfg):
            if options is not None:
                compile_flex_with(options.model_dump(exclude_none=True))
            return AttentionBackend("flex", "flex_attention")
        if options is not None:
            why = "a CUDA GPU" if not cuda else "bf16/fp16 (this run computes in float32)"
            raise UserError(
                f"flex_attn_compile_kwargs sets how flex attention is compiled, and flex attention needs {why}; "
                "SDPA would run here instead, with those options unused.",
                "Run on a GPU node in bf16, or remove flex_attn_compile_kwargs (SDPA with the document mask "
                "then runs, logged).",
                key="flex_attn_compile_kwargs",
            )
        # flex attention compiles its kernels for CUDA, and its backward found none for float32 heads on
        # an H200 (see below): SDPA with the same document mask computes the same attention.
        why = "a CUDA GPU" if not cuda else "bf16/fp16 (this run computes in float32)"
        log.warning("attn_implementation flex_attention needs %s: using SDPA with the document mask", why)
        return AttentionBackend("sdpa", "sdpa")
    if not cuda:
        return AttentionBackend("sdpa", "sdpa")
    if flash_attn_installed():
        implementation = cfg.attn_implementation if cfg.attn_implementation in FLASH_IMPLEMENTATIONS else None
        return AttentionBackend("flash_varlen", implementation or "flash_attention_2")
    if torch_varlen_available() and _half_precision(cfg):
        register_torch_varlen()
        message = "torch's built-in FlashAttention varlen kernels (torch.nn.attention.varlen)"
        if wanted == "flash":
            log.warning("flash_attention requested but flash-attn is not installed: using %s", message)
        else:
            log.info("attention: %s (flash-attn is not installed)", message)
        return AttentionBackend("torch_varlen", TORCH_VARLEN)
    if not _half_precision(cfg):
        # FlashAttention takes bf16/fp16 only, and flex attention's backward found no kernel for the
        # tiny test model's float32 heads on an H200 ("NoValidChoicesError"): SDPA with the
        # block-diagonal mask runs at any precision and head size.
        message = "FlashAttention kernels need bf16/fp16 and this run computes in float32"
        if wanted == "flash":
            log.warning("flash_attention requested but %s: using SDPA with a document mask", message)
        else:
            log.info("attention: SDPA with a document mask (%s)", message)
        return AttentionBackend("sdpa", "sdpa")
    reason = "flash-attn is not installed and this torch/GPU has no built-in varlen flash kernels"
    if wanted == "flash":
        log.warning(
            "flash_attention requested but %s: falling back to flex attention with a document mask "
            "(packing boundaries are still honoured)",
            reason,
        )
    else:
        log.info("attention: flex attention with a document mask (%s)", reason)
    return AttentionBackend("flex", "flex_attention")
