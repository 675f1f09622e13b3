"""Cross-field rules of preference training (`rl:`): what the first slice runs, the rest refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .datasets import PREFERENCE_DATASET_TYPES
from .problems import ConfigProblem
from .rules import rule
from .schema import TrainConfig


@rule
def preference(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    types = ", ".join(PREFERENCE_DATASET_TYPES)
    for list_key in ("datasets", "test_datasets"):
        for index, entry in enumerate(getattr(cfg, list_key) or []):
            pair_type = entry.type in PREFERENCE_DATASET_TYPES
            if cfg.rl and not pair_type:
                yield ConfigProblem(
                    f"{list_key}[{index}].type",
                    f"rl: {cfg.rl} trains on preference pairs, but this entry's type is {entry.type}",
                    f"use a preference type ({types}), or remove rl for supervised fine-tuning",
                )
            elif pair_type and not cfg.rl:
                yield ConfigProblem(
                    f"{list_key}[{index}].type",
                    f"{entry.type} is a preference (pairs) type, which only preference training reads",
                    "set `rl: dpo` (or ipo), or use chat_template for supervised fine-tuning",
                )
    if not cfg.rl:
        for key in ("rl_beta", "dpo_beta", "dpo_loss_type"):
            if key in cfg.model_fields_set:
                yield ConfigProblem(
                    key, f"{key} applies to preference training, but rl is not set", "set rl: dpo"
                )
        return
    if cfg.adapter not in ("lora", "qlora"):
        yield ConfigProblem(
            "rl",
            f"rl: {cfg.rl} needs a reference policy; kubetune's is the base model with the LoRA adapter "
            "disabled, and a full fine-tune has no frozen reference copy yet",
            "set `adapter: lora` (or qlora)",
        )
    if "rl_beta" in cfg.model_fields_set and "dpo_beta" in cfg.model_fields_set:
        yield ConfigProblem("dpo_beta", "rl_beta and dpo_beta both set beta", "keep only rl_beta")
    if cfg.rl == "ipo" and cfg.dpo_loss_type not in (None, "ipo"):
        yield ConfigProblem(
            "dpo_loss_type",
            f"rl: ipo is trl's ipo loss, but dpo_loss_type is {cfg.dpo_loss_type}",
            "remove dpo_loss_type, or use rl: dpo with it",
        )
    not_yet = [
        ("sample_packing", cfg.sample_packing, "each pair is already one packed row of its two answers"),
        ("min_sample_len", cfg.min_sample_len, "pairs are dropped only when too long or untrained"),
        ("fsdp", bool(cfg.fsdp), "preference training runs on one GPU or DDP in this version"),
        ("deepspeed", cfg.deepspeed, "preference training runs on one GPU or DDP in this version"),
        ("train_on_inputs", cfg.train_on_inputs, "a pair scores its answers only"),
    ]
    for key, value, why in not_yet:
        if value:
            yield ConfigProblem(key, f"{key} is not supported with rl: {why}", f"remove {key}")
