"""LoRA linear layers as one autograd function: the adapter's term accumulates into the frozen GEMM.

    fuse_lora_layers(model) -> number of peft LoRA Linear layers whose forward now runs fused

peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as separate operations: the adapter's
output is written, scaled and added to the base output, and in the backward the adapter's input
gradient is written and then added to the base's. Those passes over [tokens, features] activations are
most of what LoRA costs beyond the frozen model's GEMMs. Here

    forward:   out = x·Wᵀ (+ b), then out += s·(x·Aᵀ)·Bᵀ    in the same GEMM (addmm, beta = 1)
    backward:  dx  = g·W,        then dx  += (s·g·B)·A       likewise

so the adapter adds two small GEMMs and no element-wise pass in each direction. Parameters, their names,
the optimizer's view and the saved adapter are peft's own: only the forward function of each layer
changes, and only where the result is the same computation (one active plain LoRA adapter, no
dropout, no DoRA or other variant, no adapter bias, a plain unquantised nn.Linear base whose weight is
frozen). The weights are read directly, so a wrapper that gathers sharded weights in module hooks (FSDP,
DeepSpeed ZeRO-3) must not see fused layers: the caller applies this for one process per GPU or DDP.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


class LoRALinear(torch.autograd.Function):
    """y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ with W (and b) frozen; x [..., in], A [r, in], B [out, r]."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        flat = x.reshape(-1, x.shape[-1])
        down = flat @ lora_a.t()  # [tokens, r]
        out = flat @ weight.t() if bias is None else torch.addmm(bias, flat, weight.t())
        out = torch.addmm(out, down, lora_b.t(), alpha=scaling)
        ctx.save_for_backward(flat, down, weight, lora_a, lora_b)
        ctx.scaling = scaling
        ctx.in_shape = x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        flat, down, weight, lora_a, lora_b = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        g_down = (g @ lora_b) * ctx.scaling  # [tokens, r]: the gradient reaching A's output
        grad_b = g.t() @ (down * ctx.scaling)  # [out, r]
        grad_a = g_down.t() @ flat  # [r, in]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.addmm(g @ weight, g_down, lora_a).view(ctx.in_shape)
        return grad_x, None, None, grad_a, grad_b, None


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Forward of a fused peft lora.Linear; peft's own forward for anything outside the fused case."""
    adapters = self.active_adapters
    if args or kwargs or self.disable_adapters or self.merged or len(adapters) != 1:
        return self._peft_forward(x, *args, **kwargs)
    name = adapters[0]
    if name not in self.lora_A:
        return self._peft_forward(x, *args, **kwargs)
    base = self.base_layer
    dtype = base.weight.dtype
    if self.lora_A[name].weight.dtype != dtype and not _autocasts_to(x.device.type, dtype):
        # Without autocast peft runs float32 adapter weights in float32; only autocast (the engine's
        # mixed precision) makes it compute the adapter in the base's dtype, as done here.
        return self._peft_forward(x, *args, **kwargs)
    # The casts' backward returns the adapter's gradients in its own (float32) dtype.
    weight_a = self.lora_A[name].weight.to(dtype)
    weight_b = self.lora_B[name].weight.to(dtype)
    return LoRALinear.apply(x.to(dtype), base.weight, base.bias, weight_a, weight_b, self.scaling[name])


def _autocasts_to(device_type: str, dtype: torch.dtype) -> bool:
    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == dtype


def why_not_fusable(module: nn.Module) -> str | None:
    """None when `module` is a peft lora.Linear the fused function computes exactly; else the reason."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if type(module) is not LoraLinear:
        return "not a plain peft lora.Linear"
    base = module.get_base_layer()
    if type(base) is not nn.Linear:
        return f"base layer is {type(base).__name__} (quantised or wrapped)"
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return "base weights are trained"
    from torch.distributed.tensor import DTensor

    if isinstance(base.weight, DTensor):  # tensor parallel: the layer's own hooks place the activations
        return "base weight is a tensor-parallel DTensor"
    if module.fan_in_fan_out:
        return "fan_in_fan_out"
    for name in module.lora_A:
        if name in getattr(module, "lora_variant", {}):
            return f"adapter {name!r} is a LoRA variant (DoRA, ...)"
        if getattr(module, "lora_bias", {}).get(name):
            return f"adapter {name!r} trains a bias"
        dropout = module.lora_dropout[name]
        if not isinstance(dropout, nn.Identity) and getattr(dropout, "p", 0.0) > 0:
            return "lora_dropout > 0"
    return None


def fuse_lora_layers(model: nn.Module, groups: frozenset[str] | None = None) -> int:
    """Give every fusable peft LoRA Linear in `model` the fused forward; returns how many.

    `groups`: only the layers of these groups (kubetune.train.fast_paths.lora_group: mlp, qkv, o, other).
    """
    from kubetune.train.fast_paths import lora_group

    fused = 0
    reasons: dict[str, int] = {}
    for name, module in model.named_modules():
        if not hasattr(module, "lora_A") or not hasattr(module, "base_layer"):
            continue
        if groups is not None and lora_group(name) not in groups:
            reasons["not switched on"] = reasons.get("not switched on", 0) + 1
            continue
        reason = why_not_fusable(module)
        if reason is not None:
            reasons[reason] = reasons.get(reason, 0) + 1
            continue
        module._peft_forward = module.forward
        module.forward = _fused_forward.__get__(module)
        fused += 1
    if reasons:
        skipped = ", ".join(f"{count} ({why})" for why, count in sorted(reasons.items()))
        log.info("lora: %d layers fused; left to peft: %s", fused, skipped)
    elif fused:
        log.info("lora: %d layers fused (adapter update accumulated into the frozen GEMM)", fused)
    return fused


def unfuse_lora_layers(model: nn.Module) -> None:
    """Restore peft's own forward (e.g. before merging or handing the model to other code)."""
    for module in model.modules():
        original = module.__dict__.pop("_peft_forward", None)
        if original is not None:
            del module.forward
