"""Cross-field rules of preference training (`rl:`): datasets of the right kind, keys of the right rl."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .datasets import KTO_DATASET_TYPES, PAIR_DATASET_TYPES, PREFERENCE_DATASET_TYPES
from .preference import DEFAULT_REF_MIXUP_ALPHA, DEFAULT_REF_SYNC_STEPS, WITH_REFERENCE
from .problems import ConfigProblem
from .rules import rule
from .schema import TrainConfig

# Keys that only one family of rl types reads: key -> the rl values that read it.
KEYS_OF = {
    "rl_beta": ("dpo", "ipo", "orpo", "kto", "simpo"),
    "dpo_beta": ("dpo", "ipo", "orpo", "kto", "simpo"),
    "dpo_loss_type": ("dpo", "ipo"),
    "dpo_use_weighting": ("dpo", "ipo"),
    "dpo_label_smoothing": ("dpo",),
    "dpo_loss_weights": ("dpo",),
    "orpo_alpha": ("orpo",),
    "simpo_gamma": ("simpo",),
    "cpo_alpha": ("simpo",),
    "kto_desirable_weight": ("kto",),
    "kto_undesirable_weight": ("kto",),
    "precompute_ref_log_probs": WITH_REFERENCE,
}


def _dataset_types(cfg: TrainConfig) -> Iterator[ConfigProblem]:
    if cfg.rl == "kto":
        wanted, kind = KTO_DATASET_TYPES, "single completions with a boolean label (KTO)"
    else:
        wanted, kind = PAIR_DATASET_TYPES, "preference pairs"
    for list_key in ("datasets", "test_datasets"):
        for index, entry in enumerate(getattr(cfg, list_key) or []):
            if cfg.rl and entry.type not in wanted:
                yield ConfigProblem(
                    f"{list_key}[{index}].type",
                    f"rl: {cfg.rl} trains on {kind}, but this entry's type is {entry.type}",
                    f"use one of {', '.join(wanted)}, or remove rl for supervised fine-tuning",
                )
            elif not cfg.rl and entry.type in PREFERENCE_DATASET_TYPES:
                yield ConfigProblem(
                    f"{list_key}[{index}].type",
                    f"{entry.type} is a preference type, which only preference training reads",
                    "set rl (dpo, orpo, simpo, kto, ...), or use chat_template for supervised fine-tuning",
                )


def _trl_block(cfg: TrainConfig) -> Iterator[ConfigProblem]:
    """The `trl` block: read only by a preference run; one home for beta; the reference sync's limits."""
    trl = cfg.trl
    if trl is None:
        return
    # Off, or Axolotl's defaults of the sync's tuning keys: what a config dumped by Axolotl holds.
    inert = {"beta": (), "sync_ref_model": (False,), "ref_model_mixup_alpha": (DEFAULT_REF_MIXUP_ALPHA,)}
    inert["ref_model_sync_steps"] = (DEFAULT_REF_SYNC_STEPS,)
    set_keys = sorted(key for key in trl.model_fields_set if getattr(trl, key) not in inert[key])
    if not cfg.rl:
        for key in set_keys:
            yield ConfigProblem(
                f"trl.{key}",
                f"trl.{key} is a preference-training setting, but rl is not set",
                f"remove trl.{key}, or set rl (dpo, ipo, orpo, kto, simpo)",
            )
        return
    if trl.beta is not None:
        for other in ("rl_beta", "dpo_beta", "orpo_alpha"):
            if getattr(cfg, other) is not None:
                yield ConfigProblem(
                    "trl.beta",
                    f"trl.beta ({trl.beta}) and {other} ({getattr(cfg, other)}) both set trl's beta",
                    f"keep only one of trl.beta and {other}",
                )
    for key in ("ref_model_mixup_alpha", "ref_model_sync_steps"):
        if key in set_keys and not trl.sync_ref_model:
            yield ConfigProblem(
                f"trl.{key}",
                f"trl.{key} tunes the reference-model sync, which is off (trl.sync_ref_model is not true)",
                f"set trl.sync_ref_model: true, or remove trl.{key}",
            )
    if not trl.sync_ref_model:
        return
    if cfg.rl not in WITH_REFERENCE:
        yield ConfigProblem(
            "trl.sync_ref_model",
            f"rl: {cfg.rl} has no reference model to sync",
            f"remove trl.sync_ref_model, or use rl: {' / '.join(WITH_REFERENCE)}",
        )
    elif cfg.adapter:
        yield ConfigProblem(
            "trl.sync_ref_model",
            f"with adapter: {cfg.adapter} the reference is the base model with the adapter disabled, "
            "which a sync would overwrite (trl refuses it with PEFT too)",
            "remove trl.sync_ref_model, or train without an adapter (a full fine-tune keeps a reference copy)",
        )
    elif cfg.precompute_ref_log_probs:
        yield ConfigProblem(
            "trl.sync_ref_model",
            "precompute_ref_log_probs fixes the reference log-probs before training; a synced reference "
            "changes during it",
            "remove one of trl.sync_ref_model and precompute_ref_log_probs",
        )


def _dpo_losses(cfg: TrainConfig) -> Iterator[ConfigProblem]:
    """dpo_loss_type (one trl loss type or Axolotl's list), its weights and the label smoothing."""
    given = cfg.dpo_loss_type
    types = given if isinstance(given, list) else [given or ("ipo" if cfg.rl == "ipo" else "sigmoid")]
    if cfg.rl == "ipo" and types != ["ipo"]:
        yield ConfigProblem(
            "dpo_loss_type",
            f"rl: ipo is trl's ipo loss, but dpo_loss_type is {given}",
            "remove dpo_loss_type, or use rl: dpo with it",
        )
    if cfg.rl != "dpo":
        return
    if len(set(types)) < len(types):
        yield ConfigProblem("dpo_loss_type", f"a loss type is listed twice in {given}", "list each once")
    weights = cfg.dpo_loss_weights
    if weights is not None and len(weights) != len(types):
        yield ConfigProblem(
            "dpo_loss_weights",
            f"{len(weights)} weights for {len(types)} loss types (dpo_loss_type: {given or 'sigmoid'})",
            "give one weight per loss type of dpo_loss_type, in its order",
        )
    if cfg.dpo_use_weighting and "sft" in types:
        yield ConfigProblem(
            "dpo_use_weighting",
            "trl's WPO weighting fails on its sft loss term (DPOTrainer raises on it)",
            "remove dpo_use_weighting, or sft from dpo_loss_type",
        )
    smoothing = cfg.dpo_label_smoothing or 0.0
    if smoothing and not {"robust", "exo_pair"} & set(types):
        yield ConfigProblem(
            "dpo_label_smoothing",
            f"trl's {' / '.join(types)} loss does not read dpo_label_smoothing (robust and exo_pair do)",
            "set dpo_loss_type: robust (or exo_pair), or remove dpo_label_smoothing",
        )
    if "exo_pair" in types and not smoothing:
        yield ConfigProblem(
            "dpo_label_smoothing",
            "dpo_loss_type: exo_pair needs a label smoothing above 0 (trl refuses 0: its loss takes log(0))",
            "set dpo_label_smoothing, e.g. 0.001 (the EXO paper's)",
        )


@rule
def preference(cfg: TrainConfig, _: Path | None) -> Iterator[ConfigProblem]:
    yield from _dataset_types(cfg)
    yield from _trl_block(cfg)
    for key, readers in KEYS_OF.items():
        value = getattr(cfg, key)
        # A switch left off (`dpo_use_weighting: false`, as Axolotl configs write it) reads as unset.
        if key in cfg.model_fields_set and value not in (None, False) and cfg.rl not in readers:
            now = f"rl is {cfg.rl}" if cfg.rl else "rl is not set"
            yield ConfigProblem(
                key,
                f"{key} applies to rl: {' / '.join(readers)}, but {now}",
                f"remove {key}, or set rl: {readers[0]}",
            )
    if not cfg.rl:
        return
    set_keys = [key for key in ("rl_beta", "dpo_beta", "orpo_alpha") if getattr(cfg, key) is not None]
    if len(set_keys) > 1:
        yield ConfigProblem(
            set_keys[1], f"{' and '.join(set_keys)} all set trl's beta", f"keep only {set_keys[0]}"
        )
    yield from _dpo_losses(cfg)
    if cfg.rl == "kto" and cfg.micro_batch_size < 2:
        yield ConfigProblem(
            "micro_batch_size",
            "rl: kto estimates its KL term from the other rows of a micro-batch (trl refuses a batch of 1: "
            "the term would equal the row's own reward)",
            "set micro_batch_size: 2 or more",
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
