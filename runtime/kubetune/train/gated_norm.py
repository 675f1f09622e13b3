"""`liger_rms_norm_gated`: the gated RMSNorms of linear-attention and Mamba layers as liger-kernel's kernels.

transformers writes two gated norms, each as several eager passes over the activations in float32:

- norm, then gate (Qwen3-Next, Qwen3.5, Qwen3.5-MoE, OLMo-Hybrid: after the gated delta rule):
  `weight * rmsnorm(x) * silu(gate)`;
- gate, then norm (Mamba2, Bamba, Granite-MoE-Hybrid, Zamba2 and NemotronH: after the SSM scan):
  `weight * rmsnorm(x * silu(gate))`, the norm taken over groups of `group_size` channels (Zamba2 /
  NemotronH) or the whole width.

liger-kernel has no single gated-norm kernel, but both are its fused RMSNorm and its fused SiLU-multiply
(`liger_swiglu(a, b) = silu(a) * b`) in one order or the other: two passes, float32 inside each kernel, as
its RMSNorm and SwiGLU replace the Llama ones. The result is the same function (the intermediate is
rounded to the activations' dtype between the two kernels). A Mamba layer that runs transformers' fused
scan kernel (`mamba_split_conv1d_scan_combined`) applies its norm inside that kernel and never calls the
module: it is fused already.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

NORM_THEN_GATE = {
    "Qwen3NextRMSNormGated",
    "Qwen3_5RMSNormGated",
    "Qwen3_5MoeRMSNormGated",
    "OlmoHybridRMSNormGated",
}
GATE_THEN_NORM = {
    "MambaRMSNormGated",
    "BambaRMSNormGated",
    "GraniteMoeHybridRMSNormGated",
    "Zamba2RMSNormGated",
}


def _norm_then_gate(self, hidden_states: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers.functional import liger_rms_norm, liger_swiglu

    normed = liger_rms_norm(hidden_states, self.weight, self.variance_epsilon, in_place=False)
    return liger_swiglu(gate.to(normed.dtype), normed)


def _gate_then_norm(self, hidden_states: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    from liger_kernel.transformers.functional import liger_rms_norm, liger_swiglu

    dtype = hidden_states.dtype
    if gate is not None:
        hidden_states = liger_swiglu(gate.to(dtype), hidden_states)
    width = hidden_states.shape[-1]
    group = getattr(self, "group_size", width)
    ones = getattr(self, "_kubetune_unit_weight", None)
    if ones is None or ones.device != hidden_states.device or ones.dtype != dtype:
        ones = torch.ones(group, device=hidden_states.device, dtype=dtype)
        self._kubetune_unit_weight = ones  # the norm alone: the module's own weight spans the whole width
    grouped = hidden_states.reshape(*hidden_states.shape[:-1], width // group, group)
    normed = liger_rms_norm(grouped, ones, self.variance_epsilon, in_place=False).reshape(hidden_states.shape)
    return self.weight * normed.to(dtype)


def swap_gated_norms(model: nn.Module) -> list[str]:
    """Replace the forward of every gated RMSNorm of the two known conventions; returns what was done."""
    count, unknown = 0, set()
    for module in model.modules():
        name = type(module).__name__
        if name in NORM_THEN_GATE and getattr(module, "activation", "silu") == "silu":
            module.forward = _norm_then_gate.__get__(module)  # per instance
            count += 1
        elif name in GATE_THEN_NORM:
            module.forward = _gate_then_norm.__get__(module)  # per instance
            count += 1
        elif name.endswith("RMSNormGated"):
            unknown.add(name)
    for name in sorted(unknown):
        log.info("liger kernels: rms_norm_gated not applied to %s (not one of the known conventions)", name)
    if not count and not unknown:
        log.info("liger kernels: rms_norm_gated not applied (the model has no gated RMSNorm)")
    return [f"rms_norm_gated x{count}"] if count else []
