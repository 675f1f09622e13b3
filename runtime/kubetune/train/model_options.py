"""Axolotl's model-side options, applied by load_model and the training loop through one call each:
which weights a full fine-tune trains (`unfrozen_parameters`), the embedding size
(`resize_token_embeddings_to_32x`), and activation offloading (`activation_offloading`,
`gradient_checkpointing: offload`)."""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from torch import nn

from kubetune.config.adapter import unfrozen_parameter_regex
from kubetune.train.errors import UserError

log = logging.getLogger("kubetune.train")


def freeze_all_but(model: nn.Module, patterns: list[str], *, checkpointing: bool) -> list[str]:
    """Freeze every parameter whose name matches none of `patterns` (Axolotl's reading: see
    unfrozen_parameter_regex); returns the names left trainable. UserError when none is.

    With an adapter attached, names are the base model's (peft's `base_model.model.` prefix dropped,
    so `model.language_model.*` keeps the LoRA weights inside the language model) and only weights
    that were trainable stay so: the patterns narrow what the adapter trains, never unfreeze a base weight."""
    from peft import PeftModel

    adapter = isinstance(model, PeftModel)
    regexes = [unfrozen_parameter_regex(pattern) for pattern in patterns]
    trained = []
    for name, param in model.named_parameters():
        plain = name.removeprefix("base_model.model.") if adapter else name
        keep = any(regex.match(plain) for regex in regexes) and (param.requires_grad or not adapter)
        param.requires_grad_(keep)
        if keep:
            trained.append(plain)
    if not trained:
        sample = ", ".join(name for name, _ in list(model.named_parameters())[:4])
        raise UserError(
            "unfrozen_parameters matches none of the "
            + ("adapter's weights" if adapter else "model's parameters")
            + ", so nothing would train.",
            f"Match the parameter names from their start (e.g. {sample}); `.` is a literal period.",
            key="unfrozen_parameters",
        )
    embeddings = model.get_input_embeddings()
    if checkpointing and not adapter and embeddings is not None and not embeddings.weight.requires_grad:
        # Reentrant checkpointing passes gradients only to inputs that require them: with frozen
        # embeddings the layers' input must be made to (peft does the same for adapters).
        model.enable_input_require_grads()
    log.info(
        "unfrozen_parameters: training %d of %d parameter tensors",
        len(trained),
        len(list(model.parameters())),
    )
    return trained


def embedding_rows(cfg, tokenizer) -> int:
    """Rows the embedding matrix needs: the tokenizer's size, rounded up to a multiple of 32 with
    `resize_token_embeddings_to_32x` (tensor-core-friendly shapes); load_model grows it when smaller."""
    rows = len(tokenizer)
    return math.ceil(rows / 32) * 32 if cfg.resize_token_embeddings_to_32x else rows


def activation_offloading(cfg) -> contextlib.AbstractContextManager:
    """Around each forward and backward: the tensors autograd saves for the backward pass go to CPU
    memory (pinned on a GPU machine) and come back when the backward pass needs them. With gradient
    checkpointing those are the checkpointed layers' inputs. Off: a no-op context."""
    if not cfg.activation_offloading:
        return contextlib.nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
