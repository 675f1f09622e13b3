"""LISA (layerwise importance sampled AdamW, arXiv 2403.17919), Axolotl's `lisa_*` keys.

A full fine-tune in which only `lisa_n_layers` decoder layers, drawn at random, train at a time; every
`lisa_step_interval` optimizer steps another draw replaces them. The layers outside the draw are frozen
(requires_grad off, so they get no gradient and the optimizer skips them); everything outside the layer
list (embeddings, final norm, output head) trains throughout, as in Axolotl. The draw for steps
[k x interval, (k+1) x interval) comes from (seed, k), so a resumed run trains the layers the
uninterrupted one would have.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
from torch import nn

from kubetune.train.errors import UserError

log = logging.getLogger("kubetune.train")


class Lisa:
    def __init__(self, layers: nn.ModuleList, n_layers: int, interval: int, seed: int) -> None:
        self.layers, self.n_layers, self.interval, self.seed = layers, n_layers, interval, seed
        self.block: int | None = None
        self.active: list[int] = []

    @classmethod
    def from_config(cls, cfg, model: nn.Module, *, processes: int) -> Lisa:
        """For a config with lisa_n_layers set; `model` is the transformers model (its layers list)."""
        if processes > 1:
            raise UserError(
                f"LISA switches which layers train every few steps, and this run has {processes} processes: "
                "DDP fixes the trained parameters when it wraps the model.",
                "Run LISA on one GPU, or remove lisa_n_layers.",
                key="lisa_n_layers",
            )
        attribute = cfg.lisa_layers_attribute or "model.layers"
        try:
            layers = functools.reduce(getattr, attribute.split("."), model)
        except AttributeError:
            layers = None
        if not isinstance(layers, nn.ModuleList):
            raise UserError(
                f"lisa_layers_attribute {attribute!r} names no list of layers of {type(model).__name__}.",
                "Set it to the dotted path of the decoder layers (model.layers for most models).",
                key="lisa_layers_attribute",
            )
        if cfg.lisa_n_layers > len(layers):
            raise UserError(
                f"lisa_n_layers is {cfg.lisa_n_layers} and the model has {len(layers)} layers.",
                f"Set lisa_n_layers to at most {len(layers)}.",
                key="lisa_n_layers",
            )
        log.info(
            "LISA: %d of %d layers train, redrawn every %d steps",
            cfg.lisa_n_layers,
            len(layers),
            cfg.lisa_step_interval,
        )
        return cls(layers, cfg.lisa_n_layers, cfg.lisa_step_interval, cfg.seed)

    def step_begins(self, step: int) -> None:
        """Before optimizer step `step` (counted from 0): draw the layers of its block when it is new."""
        block = step // self.interval
        if block == self.block:
            return
        self.block = block
        rng = np.random.default_rng((self.seed, block))
        self.active = sorted(int(i) for i in rng.choice(len(self.layers), self.n_layers, replace=False))
        for index, layer in enumerate(self.layers):
            for param in layer.parameters():
                param.requires_grad_(index in self.active)
        log.info("LISA: layers %s train from step %d", self.active, step)
