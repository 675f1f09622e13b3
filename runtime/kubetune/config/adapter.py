"""Adapters (LoRA, QLoRA) and quantized loading."""

from __future__ import annotations

from typing import Literal

from .base import Section, field


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
