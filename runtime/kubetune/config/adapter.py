"""Adapters (LoRA, QLoRA) and quantized loading."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator
from pydantic_core import PydanticCustomError

from .base import Section, field

# Axolotl's index-range suffix of an unfrozen_parameters pattern (`...weight$[:32000]`).
_ROW_RANGE = re.compile(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$")


def unfrozen_parameter_regex(pattern: str) -> re.Pattern:
    """An `unfrozen_parameters` entry as Axolotl reads it: a regular expression matched from the start of
    a parameter name (re.match), in which a period is a literal period unless a `+` follows it."""
    return re.compile(re.sub(r"\.(?!\+)", r"\\.", pattern))


class Mxfp4Kwargs(Section):
    """Keyword arguments of transformers' `Mxfp4Config` (`model_quantization_config_kwargs`)."""

    dequantize: bool = field(
        False,
        description="Unpack the checkpoint's MXFP4 expert weights into plain bf16 weights as they load, so "
        "they can be trained (required: transformers' MXFP4 layers do not train). Default: false, as in "
        "transformers.",
    )


class LoftQ(Section):
    """peft's LoftQ initialisation of the LoRA weights (`peft.loftq_config`)."""

    loftq_bits: Literal[4] = field(
        4,
        description="Bits of the quantization LoftQ compensates: 4 (bitsandbytes NF4, the only width kubetune "
        "supports). Default: 4.",
    )


class PeftOptions(Section):
    """Axolotl's `peft:` mapping."""

    loftq_config: LoftQ | None = field(
        None,
        description='Initialise LoRA with LoftQ (peft\'s `init_lora_weights="loftq"`, one iteration): each '
        "targeted weight W is replaced by its NF4-quantized value Q(W) and the adapter's B·A starts as the "
        "rank-r part of W - Q(W) (applied times lora_alpha / lora_r, as peft does: `lora_alpha` = `lora_r` "
        "starts closest to W), so base + adapter is closer to W than Q(W) alone, instead of B = 0.",
    )


class AdapterKeys(Section):
    """Adapters and quantization"""

    adapter: Literal["lora", "qlora"] | None = field(
        None,
        description="`lora`, `qlora` (LoRA on a 4-bit quantized base; needs `load_in_4bit: true`), or unset "
        "for a full fine-tune.",
    )
    lora_model_dir: str | None = field(
        None, description="Directory (or hub id) of an existing adapter to continue training from."
    )
    lora_r: int = field(8, description="LoRA rank. Default: 8.", ge=1)
    lora_alpha: int = field(16, description="LoRA scaling numerator (scale = alpha / r). Default: 16.", ge=1)
    lora_dropout: float = field(
        0.0, description="Dropout on the LoRA path, in [0, 1). Default: 0.", ge=0, lt=1
    )
    lora_target_modules: str | list[str] | None = field(
        None,
        description="Module names (or one regular expression) to attach LoRA to, e.g. "
        "`[q_proj, k_proj, v_proj, o_proj]`. With an adapter, set this or `lora_target_linear`.",
    )
    lora_target_linear: bool = field(
        False,
        description="Attach LoRA to every linear layer except the output head (added to `lora_target_modules`).",
    )
    lora_modules_to_save: list[str] | None = field(
        None,
        description="Modules trained in full and saved with the adapter, e.g. `[embed_tokens, lm_head]` "
        "when adding tokens.",
    )
    lora_fan_in_fan_out: bool = field(
        False, description="Set for models whose linear layers store weights transposed (GPT-2 style Conv1D)."
    )
    peft_use_dora: bool = field(False, description="Use DoRA (weight-decomposed LoRA).")
    peft_use_rslora: bool = field(False, description="Use rank-stabilised LoRA scaling (alpha / sqrt(r)).")
    lora_target_parameters: list[str] | None = field(
        None,
        description="Parameters (not modules) to attach LoRA to, by name suffix, e.g. the fused expert weights "
        "of a mixture-of-experts model `[mlp.experts.gate_up_proj, mlp.experts.down_proj]` (peft's "
        "`target_parameters`).",
        min_length=1,
    )
    peft: PeftOptions | None = field(
        None,
        description="peft options as Axolotl groups them: `{loftq_config: {loftq_bits: 4}}` initialises the "
        "adapter with LoftQ. The adapter then trains on top of the NF4-quantized weights, as peft's LoftQ does: "
        "`kubetune merge` / `generate` quantize the same weights again before applying it. Needs `adapter: lora` "
        "(an unquantized base), a CUDA GPU and bitsandbytes (peft computes the quantization there; a CPU run "
        "stops at start); not with `lora_model_dir`.",
    )
    unfrozen_parameters: list[str] | None = field(
        None,
        description="Train only the parameters whose names match one of these patterns, the rest stay "
        "frozen. With an adapter the patterns narrow which adapter weights train (names as in the base "
        "model, e.g. `model.language_model.*` leaves a vision tower's LoRA weights frozen). As in Axolotl, each is a regular expression matched from the start of the "
        "name, and a period is a literal period (unless followed by `+`), e.g. "
        "`[^lm_head.weight$, ^model.embed_tokens.weight$, model.layers.2[0-9]+.mlp]`.",
        min_length=1,
    )

    @field_validator("unfrozen_parameters")
    @classmethod
    def _patterns_compile(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or ():
            if _ROW_RANGE.match(pattern):
                raise PydanticCustomError(
                    "unfrozen_parameters_range",
                    "'{pattern}' ends in an index range, which kubetune does not implement (only whole "
                    "parameters are unfrozen)",
                    {"pattern": pattern, "fix": "drop the [start:end] suffix to train the whole parameter"},
                )
            try:
                unfrozen_parameter_regex(pattern)
            except re.error as err:
                raise PydanticCustomError(
                    "unfrozen_parameters_regex",
                    "'{pattern}' is not a regular expression: {error}",
                    {"pattern": pattern, "error": str(err), "fix": "correct the pattern"},
                ) from None
        return value

    lisa_n_layers: int | None = field(
        None,
        description="LISA (layerwise importance sampled AdamW): in a full fine-tune, train only this many "
        "decoder layers at a time, drawn at random (from `seed`) every `lisa_step_interval` steps; the "
        "other layers are frozen meanwhile, the embeddings, final norm and output head always train. One "
        "process only (not DDP, FSDP or DeepSpeed). Default: off.",
        ge=1,
    )
    lisa_step_interval: int | None = field(
        None,
        description="LISA: optimizer steps between two draws of the trained layers (required with lisa_n_layers).",
        ge=1,
    )
    lisa_layers_attribute: str | None = field(
        None,
        description="LISA: dotted path of the decoder layer list in the model. Default: `model.layers`.",
    )
    load_in_8bit: bool = field(
        False, description="Load the base model in 8-bit (bitsandbytes); needs `adapter: lora`."
    )
    load_in_4bit: bool = field(
        False, description="Load the base model in 4-bit (bitsandbytes); needs `adapter: qlora`."
    )
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] | None = field(
        None,
        description="4-bit: dtype of the matmuls. Default: the training dtype (bfloat16 when bf16 is on).",
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] | None = field(
        None, description="4-bit: quantization data type. Default: nf4."
    )
    bnb_4bit_use_double_quant: bool | None = field(
        None, description="4-bit: also quantize the quantization constants. Default: true."
    )
    quantize_moe_experts: bool = field(
        False,
        description="Also quantize the MoE experts' fused 3-D weight tensors (`experts.gate_up_proj` / "
        "`down_proj` of Qwen3-MoE / Qwen3-Next / Qwen3.5-MoE, GLM-4.5 / 4.7, Mistral 4, NemotronH, Mixtral, "
        "...), which load_in_4bit / load_in_8bit miss (they replace linear layers only): with bitsandbytes, "
        "as each loads, to 4-bit (the bnb_4bit_* settings) or 8-bit row-wise; the experts stay frozen. "
        "About 4x (4-bit) less memory for the experts. Needs `adapter` with load_in_4bit or load_in_8bit and "
        "a CUDA GPU; one process per GPU, DDP or FSDP2 (not FSDP1, DeepSpeed, tensor parallelism or "
        "fsdp_cpu_ram_efficient_loading), LoRA on modules (not `lora_target_parameters`). A model without "
        "fused experts stops at start. Default: false.",
    )
    model_quantization_config: Literal["Mxfp4Config"] | None = field(
        None,
        description="Axolotl's name of the transformers quantization config the base model loads with. "
        "`Mxfp4Config` (gpt-oss checkpoints, whose MoE experts are stored in MXFP4) with "
        "`model_quantization_config_kwargs: {dequantize: true}`: the experts are unpacked into bf16 "
        "weights while loading, on any machine (without it, a GPU with the MXFP4 kernels keeps them "
        "packed, and transformers' MXFP4 layers cannot be trained). Not with load_in_4bit / load_in_8bit.",
    )
    model_quantization_config_kwargs: Mxfp4Kwargs | None = field(
        None, description="Keyword arguments of `model_quantization_config` (`dequantize`)."
    )
