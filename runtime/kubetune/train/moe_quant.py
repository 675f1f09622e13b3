"""`quantize_moe_experts`: the fused 3-D MoE expert tensors quantized by bitsandbytes as the model loads.

transformers 5 holds a MoE layer's routed experts in fused parameters of shape [experts, out, in]
(`experts.gate_up_proj` / `experts.down_proj`; NemotronH: `experts.up_proj` / `experts.down_proj`) on
Qwen3-MoE, Qwen3-Next, Qwen3.5-MoE, GLM-4.5 / 4.7, Mistral 4, NemotronH, Mixtral, OLMoE and others.
`load_in_4bit` / `load_in_8bit` replace nn.Linear layers only, so those experts, most of such a model's
weights, would stay in bf16. With the key, each expert tensor is quantized the moment transformers has set
it on its module: bitsandbytes' `replace_parameter_4bit` (NF4/FP4, the run's bnb_4bit_* settings) keeps
the packed weights and dequantizes on access through a torch parametrization, or, with load_in_8bit,
bitsandbytes' row-wise int8 (Axolotl's 8-bit path). The experts stay frozen (LoRA targets the other
layers), so the computation is the model's own with quantized expert weights, as in QLoRA.

Selection (as Axolotl's): a floating parameter of 3 or more dimensions whose path names an expert
(`...experts.gate_up_proj`), on a module that is not already a bitsandbytes linear layer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from kubetune.train.errors import UserError

log = logging.getLogger(__name__)

KEY = "quantize_moe_experts"
# peft's LoraConfig.exclude_modules: the parametrization containers a quantized expert tensor sits in
# (`experts.parametrizations.down_proj`) end in the projection's name, so a target such as `down_proj`
# (lora_target_linear, or the dense layers' MLP) would match them too; they are not layers LoRA can wrap.
LORA_EXCLUDED = r".*\.parametrizations\..*"


def is_expert_tensor(path: str, module: nn.Module, name: str) -> bool:
    """`path.name` is a fused expert weight that bitsandbytes' linear replacement misses."""
    import bitsandbytes as bnb

    param = module._parameters.get(name)
    if param is None or param.ndim < 3 or not param.is_floating_point() or param.is_meta:
        return False
    if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
        return False
    return "expert" in f"{path}.{name}".lower()


def check_request(cfg, *, cuda: bool, cpu_nf4: bool) -> None:
    """bitsandbytes' quantized expert path is a CUDA path; the CPU backend's nf4 is a test switch only."""
    if not cfg.quantize_moe_experts or cuda or (cpu_nf4 and cfg.load_in_4bit):
        return
    raise UserError(
        "quantize_moe_experts quantizes the MoE expert weights with bitsandbytes, which needs a CUDA GPU, and "
        "this machine has none.",
        "Run on a GPU node, or remove quantize_moe_experts (and load_in_4bit / load_in_8bit) to train a "
        "plain LoRA on CPU.",
        key=KEY,
    )


class _Int8Rows(nn.Module):
    """Parametrization: bitsandbytes' row-wise int8 weights (and their row scales) back to the weight's dtype."""

    def __init__(self, row_stats: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("row_stats", row_stats)
        self.dtype = dtype

    @torch.no_grad()
    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        import bitsandbytes.functional as F

        # bitsandbytes quantizes 2-D row-wise: the expert dims are folded into rows and back.
        rows = F.int8_vectorwise_dequant(packed.reshape(-1, packed.shape[-1]), self.get_buffer("row_stats"))
        return rows.reshape(packed.shape).to(self.dtype)  # bitsandbytes dequantizes to float32


def _quantize_8bit(module: nn.Module, name: str) -> None:
    import bitsandbytes.functional as F
    from bitsandbytes.nn import parametrize as bnb_parametrize

    weight = getattr(module, name).data
    packed, row_stats, _ = F.int8_vectorwise_quant(weight.reshape(-1, weight.shape[-1]).to(torch.float16))
    setattr(module, name, nn.Parameter(packed.reshape(weight.shape), requires_grad=False))
    parametrize.register_parametrization(module, name, _Int8Rows(row_stats, weight.dtype), unsafe=True)
    # bitsandbytes' own caching hooks: one dequantization per module forward, not one per access.
    module.register_forward_pre_hook(bnb_parametrize._enable_parametrization_cache)
    module.register_forward_hook(bnb_parametrize._disable_parametrization_cache, always_call=True)


class ExpertQuantizer:
    """Quantizes expert tensors the way the run's load_in_4bit / load_in_8bit and bnb_4bit_* keys say."""

    def __init__(self, cfg) -> None:
        # FSDP shards the packed bytes as the dtype of the weights around them (as bnb_4bit_quant_storage
        # for the linear layers): the expert tensor's own dtype; uint8 otherwise.
        self.sharded = bool(cfg.fsdp)
        self.eight_bit = bool(cfg.load_in_8bit)
        self.quant_type: Literal["nf4", "fp4"] = cfg.bnb_4bit_quant_type or "nf4"
        self.double_quant = True if cfg.bnb_4bit_use_double_quant is None else cfg.bnb_4bit_use_double_quant
        self.done: list[str] = []

    def __call__(self, path: str, module: nn.Module, name: str) -> None:
        if self.eight_bit:
            _quantize_8bit(module, name)
        else:
            self._quantize_4bit(module, name)
        self.done.append(f"{path}.{name}" if path else name)

    def _quantize_4bit(self, module: nn.Module, name: str) -> None:
        """bitsandbytes' replace_parameter_4bit, with the packed bytes stored as `quant_storage`."""
        import bitsandbytes.functional as F
        from bitsandbytes.nn import parametrize as bnb_parametrize

        weight = getattr(module, name).data
        storage = weight.dtype if self.sharded else torch.uint8
        packed, state = F.quantize_4bit(
            weight, compress_statistics=self.double_quant, quant_type=self.quant_type, quant_storage=storage
        )
        setattr(module, name, nn.Parameter(packed, requires_grad=False))
        parametrize.register_parametrization(
            module, name, bnb_parametrize.Bnb4bitParametrization(state), unsafe=True
        )
        bnb_parametrize._register_parametrization_hooks(module, name)

    def sweep(self, model: nn.Module) -> None:
        """Whatever did not pass through the loader's setter (weights initialised rather than loaded)."""
        for path, module in list(model.named_modules()):
            for name in list(module._parameters):
                if is_expert_tensor(path, module, name):
                    self(path, module, name)


@contextlib.contextmanager
def quantized_experts(cfg) -> Iterator[ExpertQuantizer | None]:
    """Around the base model's from_pretrained: each fused expert tensor is quantized as soon as it is set
    on its module (transformers' `set_param_for_module`), so the bf16 experts of one layer at most are held
    at once on the GPU, not the whole model's. Call `finish(model)` after loading."""
    if not cfg.quantize_moe_experts:
        yield None
        return
    import transformers.core_model_loading as loading
    import transformers.modeling_utils as modeling

    quantizer = ExpertQuantizer(cfg)
    original, warmup = loading.set_param_for_module, modeling.caching_allocator_warmup

    def set_param(model, target_name: str, param_value, *args, **kwargs) -> None:
        original(model, target_name, param_value, *args, **kwargs)
        path, _, name = target_name.rpartition(".")
        module = model.get_submodule(path) if path else model
        if is_expert_tensor(path, module, name):
            quantizer(path, module, name)
            param_value.data = torch.empty(0, device=param_value.device)  # the loader's reference to bf16

    loading.set_param_for_module = set_param
    # transformers reserves the GPU memory of the whole model up front (one allocation, to speed up loading),
    # counting the experts at their bf16 size: that allocation alone is the peak this key avoids.
    modeling.caching_allocator_warmup = lambda *args, **kwargs: None
    try:
        yield quantizer
    finally:
        loading.set_param_for_module, modeling.caching_allocator_warmup = original, warmup


def finish(quantizer: ExpertQuantizer | None, model: nn.Module) -> None:
    """After loading: the rest swept, and a model with no fused expert tensors refused (the key would do
    nothing there)."""
    if quantizer is None:
        return
    quantizer.sweep(model)
    if not quantizer.done:
        raise UserError(
            f"quantize_moe_experts quantizes fused 3-D MoE expert weights, and {type(model).__name__} has none "
            "(its experts, if any, are linear layers, which load_in_4bit / load_in_8bit already quantize).",
            "Remove quantize_moe_experts.",
            key=KEY,
        )
    bits = 8 if quantizer.eight_bit else 4
    log.info("quantize_moe_experts: %d expert tensors in %d-bit (bitsandbytes)", len(quantizer.done), bits)
