"""Quantization-aware training (Axolotl's `qat:` block) on torchao's QAT API.

    check_request(cfg, cuda=...)   before anything loads: the scheme runs on this machine
    prepare(cfg, model)            every nn.Linear -> torchao's fake-quantized linear (before FSDP wraps it)
    FakeQuantSwitch                fake_quant_after_n_steps: off for the first N steps, then on

torchao's prepare step swaps each linear layer for one whose forward rounds the weight (and the input)
to the target format and back, with a straight-through backward: training sees the quantization error
and learns around it. The swapped layers keep the parameter names and add no tensors to the state dict,
so the saved result is the plain model, as Axolotl saves it after its `convert` step (loads with
transformers); it is quantized afterwards with `ptq_config`, the torchao config of the same scheme.
All linear layers are fake-quantized, the output head included, as Axolotl does (quantize_'s default).
"""

from __future__ import annotations

import logging
from functools import partial

import torch
from torch import nn

from kubetune.train.errors import UserError

log = logging.getLogger("kubetune.train")

# NVFP4's QAT forward runs the real NVFP4 matmul (torch._scaled_mm with fp4 blocks): sm_100 and newer.
NVFP4_CAPABILITY = (10, 0)


def ptq_config(block):
    """The torchao post-training quantization config of the block's scheme: what to quantize the trained
    model with (`torchao.quantization.quantize_(model, ptq_config(block))`), and the base of QAT's prepare."""
    from torchao.quantization import Int4WeightOnlyConfig, Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerGroup

    scheme = (block.activation_dtype, block.weight_dtype)
    if scheme == ("int8", "int4"):
        int4 = torch.int4  # type: ignore[attr-defined]  # a torch >= 2.6 dtype torch's stubs do not list
        return Int8DynamicActivationIntxWeightConfig(
            weight_dtype=int4, weight_granularity=PerGroup(block.group_size)
        )
    if scheme == (None, "int4"):
        return Int4WeightOnlyConfig(group_size=block.group_size)
    from torchao.prototype.mx_formats import (
        MXDynamicActivationMXWeightConfig,
        NVFP4DynamicActivationNVFP4WeightConfig,
    )

    if scheme == ("mxfp4", "mxfp4"):
        fp4 = torch.float4_e2m1fn_x2
        return MXDynamicActivationMXWeightConfig(activation_dtype=fp4, weight_dtype=fp4, block_size=32)
    if scheme == ("nvfp4", "nvfp4"):
        return NVFP4DynamicActivationNVFP4WeightConfig()
    raise ValueError(
        f"qat scheme {scheme} passed validation but has no torchao config"
    )  # the rules refuse it


def qat_config(block):
    """torchao's QATConfig (prepare step) of the block."""
    from torchao.quantization.qat import QATConfig

    if block.weight_dtype == "mxfp4":
        # Named fake-quantize configs rather than the PTQ base: from the base torchao picks the real MX
        # gemm (Blackwell only); its default here is the emulated one, which runs on any GPU and the CPU.
        from torchao.prototype.qat import MXFakeQuantizeConfig

        mx = MXFakeQuantizeConfig(dtype=torch.float4_e2m1fn_x2, block_size=32)
        return QATConfig(activation_config=mx, weight_config=mx, step="prepare")
    return QATConfig(ptq_config(block), step="prepare")


def check_request(cfg, *, cuda: bool) -> None:
    """NVFP4's fake quantization runs NVFP4 matmuls, which only Blackwell (sm_100+) GPUs have."""
    block = cfg.qat
    if block is None or block.weight_dtype != "nvfp4":
        return
    capability = torch.cuda.get_device_capability() if cuda else None
    if capability is None or capability < NVFP4_CAPABILITY:
        where = f"compute capability {capability[0]}.{capability[1]}" if capability else "no CUDA GPU"
        raise UserError(
            f"qat with nvfp4 runs torchao's NVFP4 matmuls in the forward, which need a Blackwell GPU "
            f"(compute capability 10.0 or newer), and this machine has {where}.",
            "Run on a Blackwell node (B200, GB200), or use `qat: {activation_dtype: mxfp4, weight_dtype: "
            "mxfp4, group_size: 32}` (emulated, any GPU) or the int8/int4 scheme.",
            key="qat.weight_dtype",
        )


def prepare(cfg, model: nn.Module) -> int:
    """Swap every nn.Linear of `model` for torchao's fake-quantized linear; returns how many."""
    from torchao.quantization import quantize_

    block = cfg.qat
    linears = [(name, module) for name, module in model.named_modules() if type(module) is nn.Linear]
    uneven = [(name, module.in_features) for name, module in linears if module.in_features % block.group_size]
    if uneven:
        name, width = uneven[0]
        raise UserError(
            f"qat.group_size {block.group_size} does not divide the input width of {len(uneven)} linear "
            f"layer(s) of the model, e.g. {name} ({width}): each weight row is quantized in whole groups.",
            "Pick a group_size that divides every layer's input width (e.g. 32).",
            key="qat.group_size",
        )
    quantize_(model, qat_config(block))
    log.info(
        "qat: %d linear layers fake-quantized (%s/%s, groups of %d)%s; the saved model keeps plain weights: "
        "quantize it afterwards with torchao's %s",
        len(linears),
        block.activation_dtype or "none",
        block.weight_dtype,
        block.group_size,
        f", off for the first {block.fake_quant_after_n_steps} steps"
        if block.fake_quant_after_n_steps
        else "",
        type(ptq_config(block)).__name__,
    )
    return len(linears)


class FakeQuantSwitch:
    """fake_quant_after_n_steps: fake quantization off while fewer than N optimizer steps are done (as
    Axolotl's QATCallback, from the step count, so a resumed run is in the right state)."""

    def __init__(self, model: nn.Module, after_steps: int) -> None:
        self.model, self.after_steps = model, after_steps
        self.on: bool | None = None

    @classmethod
    def from_config(cls, cfg, model: nn.Module) -> FakeQuantSwitch | None:
        block = cfg.qat
        if block is None or block.fake_quant_after_n_steps is None:
            return None
        return cls(model, block.fake_quant_after_n_steps)

    def step_begins(self, step: int) -> None:
        """`step`: optimizer steps done before the one that begins."""
        from torchao.quantization.qat.linear import enable_linear_fake_quant

        on = step >= self.after_steps
        if on != self.on:
            self.model.apply(partial(enable_linear_fake_quant, enabled=on))
            if self.on is not None or on:
                log.info("qat: fake quantization %s from step %d", "on" if on else "off", step + 1)
            self.on = on
