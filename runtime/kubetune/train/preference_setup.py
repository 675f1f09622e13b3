"""The reference policy of a preference run, decided once at setup (kubetune.train.loop.setup).

* ORPO and SimPO have none.
* `precompute_ref_log_probs: true`: the reference's log-probs of every train and eval row are
  computed once, before training, by the model as loaded (the base with the adapter disabled for
  LoRA; the untrained weights for a full fine-tune), into the prepared-data cache beside the
  prepared rows (`<prepared>/ref-logps-<hash>/`, built by rank 0 under the cache's lock, reused by
  later runs of the same data and model), and read as a `ref_logps` column: no training step runs
  the reference, and a full fine-tune keeps no second copy of the model.
* otherwise LoRA: the model with its adapter disabled, run on the same rows in each step;
* otherwise (a full fine-tune): a frozen copy of the model as loaded.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch

from kubetune.data import cache
from kubetune.train.preference import PreferenceLoss

log = logging.getLogger(__name__)
REF_COLUMN = "ref_logps"
# The config keys that decide the reference's weights and numerics (the data has its own key).
REFERENCE_KEYS = (
    "base_model",
    "revision_of_model",
    "base_model_config",
    "lora_model_dir",
    "load_in_4bit",
    "load_in_8bit",
    "bf16",
    "fp16",
    "tf32",
)


def preference_module(cfg, objective, model, data, *, collate, backend, accelerator) -> PreferenceLoss:
    """The PreferenceLoss of the run; with precompute_ref_log_probs, adds the column to `data`."""
    if not objective.needs_reference:
        return PreferenceLoss(model, objective)
    if cfg.precompute_ref_log_probs:
        module = PreferenceLoss(model, objective)
        key = reference_key(cfg, accelerator)
        path, built = cache.build_or_wait(
            Path(data.path),
            key,
            lambda out: _write_reference(module, data, out, collate, backend, accelerator.device, cfg),
            rank=accelerator.process_index,
        )
        log.info("%s the reference log-probs in %s", "computed" if built else "reused", path)
        data.train = data.train.add_column(REF_COLUMN, np.load(path / "train.npy").tolist())
        if data.eval is not None:
            data.eval = data.eval.add_column(REF_COLUMN, np.load(path / "eval.npy").tolist())
        return PreferenceLoss(model, objective)  # the steps read the column: no reference kept
    if cfg.adapter:
        return PreferenceLoss(model, objective)  # the base with the adapter disabled
    log.info("rl: %s with a full fine-tune: the reference is a frozen copy of the model", cfg.rl)
    module = PreferenceLoss(model, objective, reference_model=copy.deepcopy(model))
    if objective.ref_sync is not None:
        # A synced reference is training state: checkpoints keep it, so a resumed run continues from it.
        accelerator.register_for_checkpointing(module.frozen_reference)
    return module


def reference_key(cfg, accelerator) -> str:
    parts: dict[str, str | bool] = {name: str(getattr(cfg, name, None)) for name in REFERENCE_KEYS}
    parts["adapter"] = bool(cfg.adapter)
    parts["device"] = accelerator.device.type  # kernels differ between CPU and GPU
    return "ref-logps-" + cache.digest(parts)[:24]


@torch.no_grad()
def reference_logps(
    module: PreferenceLoss, rows, collate, backend, device, batch_size: int, *, adapter: bool
) -> np.ndarray:
    """[rows, 2] float32: the reference's summed log-probs of each row's two segments, in row order."""
    was_training = module.training
    module.eval()
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            inputs = backend.model_inputs(on_device)
            args = (on_device["input_ids"], on_device["targets"], inputs["position_ids"], inputs)
            # Before training the model itself is the reference of a full fine-tune.
            logps = module.reference_logps(*args) if adapter else module._logps(*args)[0]
            out.append(logps.float().cpu().numpy())
    finally:
        module.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def _write_reference(module, data, out: Path, collate, backend, device, cfg) -> None:
    batch_size = cfg.eval_batch_size or cfg.micro_batch_size
    for name, rows in (("train", data.train), ("eval", data.eval)):
        if rows is not None:
            logps = reference_logps(
                module, rows, collate, backend, device, batch_size, adapter=bool(cfg.adapter)
            )
            np.save(out / f"{name}.npy", logps)
