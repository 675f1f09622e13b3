"""`llama4_linearized_experts`: Llama 4's routed experts as one nn.Linear per expert and projection.

transformers' Llama4TextExperts holds every expert in two fused 3D parameters (`gate_up_proj`
[experts, hidden, 2 x intermediate], `down_proj` [experts, intermediate, hidden]). bitsandbytes quantizes
nn.Linear layers only and LoRA targets modules, so neither reaches those experts. Axolotl's linearized
Llama 4 checkpoints (e.g. axolotl-quants/Llama-4-Scout-17B-16E-Linearized-bnb-nf4-bf16) store them as
`experts.gate_projs.{i}.weight`, `experts.up_projs.{i}.weight` and `experts.down_projs.{i}.weight`:
`LinearizedExperts` is a module of that layout computing what Llama4TextExperts computes, and
`linearized_llama4_experts()` has transformers build it in place of Llama4TextExperts while a model loads
(so the checkpoint's per-expert weights load into it, and a 4-bit load quantizes them).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)


class LinearizedExperts(nn.Module):
    """Llama4TextExperts' computation over per-expert nn.Linear layers (Llama4TextMoe's interface: the
    input is [experts x tokens, hidden], grouped by expert, each group already scaled by its router score)."""

    def __init__(self, config) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        self.num_experts = config.num_local_experts
        self.hidden_size = config.hidden_size
        self.expert_dim = config.intermediate_size

        def linears(inputs: int, outputs: int) -> nn.ModuleList:
            return nn.ModuleList(nn.Linear(inputs, outputs, bias=False) for _ in range(self.num_experts))

        self.gate_projs = linears(self.hidden_size, self.expert_dim)
        self.up_projs = linears(self.hidden_size, self.expert_dim)
        self.down_projs = linears(self.expert_dim, self.hidden_size)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        grouped = hidden_states.view(self.num_experts, -1, self.hidden_size)
        outputs = [
            self.down_projs[i](self.up_projs[i](tokens) * self.act_fn(self.gate_projs[i](tokens)))
            for i, tokens in enumerate(grouped)
        ]
        return torch.stack(outputs).view(-1, self.hidden_size)


@contextlib.contextmanager
def linearized_llama4_experts() -> Iterator[list[nn.Module]]:
    """While open, Llama 4 MoE layers are built with LinearizedExperts as their `experts`; yields the list
    of those built. (Llama4TextMoe's own init runs first; the module it built is replaced before any weight
    is loaded. transformers' weight init keeps matching only its own Llama4TextExperts.)"""
    from transformers.models.llama4.modeling_llama4 import Llama4TextMoe

    built: list[nn.Module] = []
    original = Llama4TextMoe.__init__

    def init(self, config) -> None:
        original(self, config)
        self.experts = LinearizedExperts(config)
        built.append(self.experts)

    Llama4TextMoe.__init__ = init  # type: ignore[method-assign]
    try:
        yield built
    finally:
        Llama4TextMoe.__init__ = original  # type: ignore[method-assign]
