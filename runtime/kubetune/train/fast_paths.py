"""Which fast path runs: the config's switches over kubetune's own choice.

    sw = switches(cfg)
    liger_kinds(sw, default_on=..., cuda=..., compiled=...)  -> element-wise liger kernels to swap in
    lora_groups(sw, default_on=..., sharded=...)             -> LoRA layer groups to fuse
    sw.fused_loss                                            -> the loss's fused linear cross-entropy switch

Axolotl's keys map onto kubetune's paths: `liger_rms_norm` / `liger_glu_activation` / `liger_rope` /
`liger_layer_norm` / `liger_rms_norm_gated` (and `flash_attn_fuse_mlp`, the SwiGLU one, and `flash_attn_rms_norm`) onto kubetune.train.kernels, `liger_fused_linear_cross_entropy` (and
`liger_cross_entropy`, `cut_cross_entropy`, the CutCrossEntropyPlugin) onto kubetune.train.loss's fused
loss, `lora_{mlp,qkv,o}_kernel` onto kubetune.train.lora_fused, `fused_attn_kernel` (Axolotl's q_norm + RoPE
kernel) onto the liger RMSNorm and RoPE switches, `use_kernels` onto the default of the three Llama-family
liger switches. Unset keeps kubetune's choice; true forces the path on wherever it
can run (where it cannot, the reason is logged); false keeps it off. None of them changes the result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kubetune.config.kernels import CUT_CROSS_ENTROPY_PLUGIN

log = logging.getLogger(__name__)


LIGER_KINDS = ("rms_norm", "swiglu", "rope", "layer_norm", "rms_norm_gated")
# Swapped in only when switched on (kubetune's default leaves them to the model's own modules).
_OPT_IN = ("layer_norm", "rms_norm_gated")
LORA_GROUPS = ("mlp", "qkv", "o")


@dataclass(frozen=True)
class Switches:
    """Each: None = kubetune decides, True = forced on where it applies, False = kept off."""

    rms_norm: bool | None = None
    swiglu: bool | None = None
    rope: bool | None = None
    layer_norm: bool | None = None
    rms_norm_gated: bool | None = None
    fused_loss: bool | None = None
    lora_mlp: bool | None = None
    lora_qkv: bool | None = None
    lora_o: bool | None = None


def fused_loss_switch(cfg) -> bool | None:
    """The loss switch from every key that names it (the config rules refuse disagreeing values)."""
    values = [cfg.liger_fused_linear_cross_entropy, cfg.liger_cross_entropy, cfg.cut_cross_entropy]
    if CUT_CROSS_ENTROPY_PLUGIN in (cfg.plugins or ()):
        values.append(True)
    explicit = [value for value in values if value is not None]
    return explicit[0] if explicit else None


def switches(cfg) -> Switches:
    def or_kernels(value):
        return cfg.use_kernels if value is None else value

    def first(*values):
        return next((value for value in values if value is not None), None)

    return Switches(
        rms_norm=or_kernels(first(cfg.liger_rms_norm, cfg.flash_attn_rms_norm, cfg.fused_attn_kernel)),
        swiglu=or_kernels(first(cfg.liger_glu_activation, cfg.flash_attn_fuse_mlp)),
        rope=or_kernels(first(cfg.liger_rope, cfg.fused_attn_kernel)),
        layer_norm=cfg.liger_layer_norm,
        rms_norm_gated=cfg.liger_rms_norm_gated,
        fused_loss=fused_loss_switch(cfg),
        lora_mlp=cfg.lora_mlp_kernel,
        lora_qkv=cfg.lora_qkv_kernel,
        lora_o=cfg.lora_o_kernel,
    )


def liger_kinds(sw: Switches, *, default_on: bool, cuda: bool, compiled: bool) -> list[str]:
    """The liger kernels to swap in. By default RMSNorm / SwiGLU / RoPE go in where kubetune's default
    (`default_on`: a GPU in half precision without the compiler) says so, LayerNorm and the gated RMSNorm
    only when switched on."""
    kinds = []
    for kind in LIGER_KINDS:
        value = getattr(sw, kind)
        if value is None:
            if default_on and kind not in _OPT_IN:
                kinds.append(kind)
        elif value is False:
            log.info("fast paths: liger %s kept off by the config", kind)
        elif not cuda or compiled:
            why = (
                "liger's Triton kernels need a CUDA GPU"
                if not cuda
                else "torch_compile fuses these ops itself"
            )
            log.info("fast paths: liger %s is switched on but not applied (%s)", kind, why)
        else:
            kinds.append(kind)
    return kinds


def lora_groups(sw: Switches, *, default_on: bool, sharded: bool) -> frozenset[str]:
    """LoRA layer groups to fuse: mlp, qkv, o and `other` (LoRA layers outside the three groups, which
    follow kubetune's default). Never under FSDP / DeepSpeed: the fused layers read the weights directly,
    bypassing the hooks that gather sharded weights."""
    groups = set()
    for group in LORA_GROUPS:
        value = getattr(sw, f"lora_{group}")
        if value is False:
            log.info("fast paths: fused LoRA for the %s layers kept off by the config", group)
        elif sharded and value:
            log.info(
                "fast paths: fused LoRA for the %s layers is switched on but not applied (sharded weights)",
                group,
            )
        elif not sharded and (value or default_on):
            groups.add(group)
    if default_on and not sharded:
        groups.add("other")
    return frozenset(groups)


def lora_group(module_name: str) -> str:
    """mlp, qkv, o or other, from a LoRA layer's qualified name (e.g. model.layers.0.self_attn.q_proj)."""
    parts = module_name.lower().split(".")
    leaf = parts[-1]
    if any("mlp" in part or part in ("ffn", "feed_forward") for part in parts[:-1]) or leaf in (
        "gate_proj",
        "up_proj",
        "down_proj",
        "gate_up_proj",
        "fc1",
        "fc2",
        "w1",
        "w2",
        "w3",
    ):
        return "mlp"
    if leaf in ("o_proj", "out_proj", "wo", "dense") and any("attn" in p or "attention" in p for p in parts):
        return "o"
    if leaf in (
        "q_proj",
        "k_proj",
        "v_proj",
        "qkv_proj",
        "query_key_value",
        "wqkv",
        "c_attn",
        "wq",
        "wk",
        "wv",
    ):
        return "qkv"
    return "other"
