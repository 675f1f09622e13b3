"""Axolotl's `qat:` block (quantization-aware training) and the combinations kubetune runs.

QAT swaps the model's linear layers for torchao's fake-quantized ones (kubetune.train.qat): the forward
sees the weights (and activations) rounded to the target format, the backward passes straight through,
so the trained weights learn to survive the quantization applied after training. The config module
only names what is accepted; no torch here.
"""

from __future__ import annotations

from typing import Literal

from .base import Section, field

# Axolotl's spellings of the torchao dtypes (src/axolotl/utils/schemas/quantization.py); the three float8
# spellings are one dtype there.
QatDtype = Literal["int4", "int8", "float8_e4m3fn", "fp8", "float8", "nvfp4", "mxfp4"]

# (activation_dtype, weight_dtype) -> the group sizes that scheme takes (None: any that divides every
# linear layer's input width, checked at start) and what it is in torchao.
SCHEMES: dict[tuple[str | None, str], tuple[int | None, str]] = {
    ("int8", "int4"): (None, "int8 per-token dynamic activations, int4 symmetric per-group weights"),
    (None, "int4"): (None, "int4 per-group weights only (torchao's Int4WeightOnlyConfig)"),
    ("mxfp4", "mxfp4"): (32, "MXFP4 (OCP microscaling, e8m0 scale per 32 elements) weights and activations"),
    ("nvfp4", "nvfp4"): (16, "NVFP4 (e4m3 scale per 16 elements) weights and activations; Blackwell GPUs"),
}


def scheme_names() -> str:
    return ", ".join(f"{a or 'none'}/{w}" for a, w in SCHEMES)


class QATBlock(Section):
    """Quantization-aware training: `qat: {activation_dtype, weight_dtype, group_size, ...}`."""

    activation_dtype: QatDtype | None = field(
        None,
        description="Fake-quantized format of the linear layers' inputs: `int8` (with `weight_dtype: int4`), "
        "`mxfp4` or `nvfp4` (with the same weight_dtype), or unset for weight-only int4. Default: unset.",
    )
    weight_dtype: QatDtype = field(
        description="Fake-quantized format of the linear layers' weights: `int4`, `mxfp4` or `nvfp4`. "
        "Required. Other Axolotl values (int8, fp8) are refused: torchao has no QAT for them or kubetune "
        "does not run them yet."
    )
    group_size: int = field(
        32,
        description="Elements per quantization group of a weight row: any size that divides every linear "
        "layer's input width for int4, 32 for mxfp4, 16 for nvfp4. Default: 32.",
        ge=1,
    )
    fake_quant_after_n_steps: int | None = field(
        None,
        description="Train the first N optimizer steps without fake quantization and switch it on from step "
        "N+1 (int4 schemes; torchao's MX/NVFP4 layers have no switch). Default: on from the first step.",
        ge=1,
    )
