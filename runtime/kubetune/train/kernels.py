"""Fused Triton kernels (liger-kernel) for the element-wise parts of a Llama-family decoder.

    apply_liger_kernels(model) -> list of what was swapped ([] when nothing applies)

RMSNorm, SwiGLU (silu(gate) * up) and rotary embeddings run in eager PyTorch as several passes over
the activations each (RMSNorm alone upcasts to float32 and back). liger's kernels do each in one
pass, forward and backward. Measured on one H200 with the Llama-3-8B shape (bench/notes-gpu.md):
+17% tokens/s for LoRA. `torch_compile` fuses the same operations itself (and more), so the two are
not combined: with `torch_compile: true` the eager modules are left for the compiler.

Only the module classes of architectures whose norm, MLP and rotary functions match liger's
"llama" conventions are touched; anything else is left as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

from torch import nn

log = logging.getLogger(__name__)

# transformers model types whose RMSNorm / SiLU MLP / apply_rotary_pos_emb are the Llama ones.
# Qwen3 adds RMSNorms of the same kind on the attention's queries and keys (q_norm / k_norm).
LLAMA_LIKE = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3"}


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def apply_liger_kernels(model: nn.Module, kinds=("rms_norm", "swiglu", "rope")) -> list[str]:
    """Swap in liger's kernels (`kinds` of rms_norm, swiglu, rope, layer_norm, rms_norm_gated) on a peft-wrapped
    or plain model: RMSNorm / SwiGLU / RoPE of Llama-like architectures, LayerNorm (nn.LayerNorm) of any, the
    gated RMSNorms of the linear-attention / Mamba families (kubetune.train.gated_norm)."""
    if not liger_available():
        log.info("liger kernels: not applied (liger-kernel is not installed)")
        return []
    done = []
    if "layer_norm" in kinds:
        done += _swap_layer_norms(model)
    if "rms_norm_gated" in kinds:
        from kubetune.train.gated_norm import swap_gated_norms

        done += swap_gated_norms(model)
    llama_kinds = [kind for kind in kinds if kind not in ("layer_norm", "rms_norm_gated")]
    if llama_kinds:
        done += _swap_llama_kernels(model, llama_kinds)
    log.info("liger kernels: %s", ", ".join(done) or "nothing matched")
    return done


def _swap_llama_kernels(model: nn.Module, kinds: list[str]) -> list[str]:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in LLAMA_LIKE:
        log.info(
            "liger kernels: %s not applied (model type %r is not one of %s)",
            ", ".join(kinds),
            model_type,
            sorted(LLAMA_LIKE),
        )
        return []
    from liger_kernel.transformers.functional import liger_rms_norm, liger_rope, liger_swiglu

    modeling = importlib.import_module(f"transformers.models.{LLAMA_LIKE[model_type]}.modeling_{model_type}")

    def rms_norm_forward(self, hidden_states):
        return liger_rms_norm(hidden_states, self.weight, self.variance_epsilon, in_place=False)

    def mlp_forward(self, x):
        return self.down_proj(liger_swiglu(self.gate_proj(x), self.up_proj(x)))

    def rotary(q, k, cos, sin, unsqueeze_dim=1):
        return liger_rope(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)

    swapped = {"rms_norm": 0, "swiglu": 0}
    for module in model.modules():
        name = type(module).__name__
        if "rms_norm" in kinds and name.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module.forward = rms_norm_forward.__get__(module)
            swapped["rms_norm"] += 1
        elif "swiglu" in kinds and name.endswith("MLP") and _is_silu_mlp(module):
            module.forward = mlp_forward.__get__(module)
            swapped["swiglu"] += 1
    done = [f"{kind} x{count}" for kind, count in swapped.items() if count]
    if "rope" in kinds and hasattr(modeling, "apply_rotary_pos_emb"):
        # The attention modules look the function up in their module's globals at call time.
        modeling.apply_rotary_pos_emb = rotary  # type: ignore[attr-defined]  # the module is found at run time
        done.append("rope")
    return done


def _swap_layer_norms(model: nn.Module) -> list[str]:
    """liger's fused LayerNorm for every affine nn.LayerNorm (same function: weight, bias, eps)."""
    from liger_kernel.transformers.functional import liger_layer_norm

    def layer_norm_forward(self, x):
        return liger_layer_norm(x, self.weight, self.bias, self.eps)

    count = 0
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) and module.weight is not None and module.bias is not None:
            module.forward = layer_norm_forward.__get__(module)  # type: ignore[method-assign]  # per instance
            count += 1
    if not count:
        log.info("liger kernels: layer_norm not applied (the model has no affine nn.LayerNorm)")
    return [f"layer_norm x{count}"] if count else []


def _is_silu_mlp(module: nn.Module) -> bool:
    act = getattr(module, "act_fn", None)
    silu = isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"  # transformers' own class
    return all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj")) and silu
