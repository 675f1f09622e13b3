"""Fast-path switches (Axolotl's liger / LoRA-kernel / plugin keys) over kubetune's own fused kernels.

Each switch is three-valued: unset lets kubetune decide (its defaults, docs/performance.md), true forces
the path on wherever it applies (a model or layer it cannot apply to is logged and left as it is), false
keeps it off. They change speed and memory, never the result: every fused path computes the same function.
"""

from __future__ import annotations

from pydantic import field_validator
from pydantic_core import PydanticCustomError

from .base import Section, field

CUT_CROSS_ENTROPY_PLUGIN = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
# Axolotl plugins whose work kubetune's own fast paths do, and what each one switches on.
KNOWN_PLUGINS: dict[str, str] = {
    CUT_CROSS_ENTROPY_PLUGIN: "fused linear cross-entropy",
    "axolotl.integrations.liger.LigerPlugin": "the liger_* switches",
}
PLUGIN_HINTS: dict[str, str] = {
    "KernelsPlugin": "MoE expert kernels are not implemented by kubetune; remove the plugin",
    "ExpertParallelPlugin": "kubetune does not implement expert parallelism; remove the plugin",
    "SwanLabPlugin": "kubetune logs progress as JSON lines and in the FineTuneJob's status; remove the plugin",
    "DiffusionPlugin": "diffusion language-model training is not implemented by kubetune",
}


def _switch(description: str):
    return field(None, description=description + " Default: kubetune decides (see docs/performance.md).")


class KernelKeys(Section):
    """Fast paths"""

    plugins: list[str] | None = field(
        None,
        description="Axolotl plugins. `axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin` forces the "
        "fused linear cross-entropy on (as `liger_fused_linear_cross_entropy: true`); "
        "`axolotl.integrations.liger.LigerPlugin` is what Axolotl needs for the `liger_*` keys and changes "
        "nothing by itself. Other plugins are refused.",
    )
    liger_rms_norm: bool | None = _switch("liger-kernel's fused RMSNorm in the decoder layers (CUDA).")
    liger_glu_activation: bool | None = _switch("liger-kernel's fused SwiGLU (silu(gate) * up) MLP (CUDA).")
    flash_attn_fuse_mlp: bool | None = _switch(
        "Axolotl's fused SwiGLU MLP switch: the same path as `liger_glu_activation` (set one of the two)."
    )
    flash_attn_rms_norm: bool | None = _switch(
        "Axolotl's flash-attn fused RMSNorm switch: the same path as `liger_rms_norm` (set one of the two)."
    )
    liger_rope: bool | None = _switch("liger-kernel's fused rotary embedding (CUDA).")
    liger_layer_norm: bool | None = _switch(
        "liger-kernel's fused LayerNorm for the model's nn.LayerNorm modules (CUDA; Llama-family models have none)."
    )
    liger_fused_linear_cross_entropy: bool | None = _switch(
        "The loss from liger-kernel's fused linear cross-entropy: the logits are never materialised (CUDA)."
    )
    liger_cross_entropy: bool | None = _switch(
        "Axolotl's liger cross-entropy over materialised logits; kubetune's fused linear cross-entropy "
        "replaces it: true forces that path, false keeps it off."
    )
    cut_cross_entropy: bool | None = _switch(
        "Cut cross-entropy (the CutCrossEntropyPlugin's switch): kubetune's fused linear cross-entropy "
        "does the same (no logits kept)."
    )
    liger_rms_norm_gated: bool | None = _switch(
        "The gated RMSNorms of linear-attention / Mamba layers (Qwen3-Next, Qwen3.5, OLMo-Hybrid: norm, then "
        "silu(gate); Mamba2, Bamba, Granite-MoE-Hybrid, Zamba2, NemotronH: silu(gate), then the grouped norm) "
        "as liger-kernel's fused RMSNorm and SiLU-multiply kernels (CUDA); off unless switched on."
    )
    fused_attn_kernel: bool | None = _switch(
        "Axolotl's fused q_norm + RoPE switch (one Triton launch in Axolotl): kubetune's liger RMSNorm (the "
        "attention's q/k norms included) and RoPE kernels, two fused kernels, on Llama-family and Qwen3 models "
        "(CUDA): the value of `liger_rms_norm` and `liger_rope` where those are unset."
    )
    lora_mlp_kernel: bool | None = _switch(
        "Fused LoRA layers (the adapter update accumulated into the frozen GEMM) for the MLP projections."
    )
    lora_qkv_kernel: bool | None = _switch("Fused LoRA layers for the q/k/v projections.")
    lora_o_kernel: bool | None = _switch("Fused LoRA layers for the attention output projection.")
    use_kernels: bool | None = _switch(
        "Optimised kernels for the model's layers: kubetune's liger RMSNorm / SwiGLU / RoPE "
        "(the default of the three liger_* switches above that are unset)."
    )

    @field_validator("plugins")
    @classmethod
    def _known_plugins(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if name not in KNOWN_PLUGINS:
                short = name.rpartition(".")[2]
                raise PydanticCustomError(
                    "plugin_not_supported",
                    "plugin '{name}' is not supported by kubetune",
                    {
                        "name": name,
                        "fix": PLUGIN_HINTS.get(short)
                        or "remove it; kubetune runs no plugin code (supported: CutCrossEntropyPlugin, LigerPlugin)",
                    },
                )
        return value
