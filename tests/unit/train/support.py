"""Shared by the engine tests: seed-config paths, the CPU-sized overlay, small helpers."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.paths import SEED_DIR

SEED = SEED_DIR / "llama3-lora.yml"
QLORA_FSDP_OVERLAY = SEED_DIR / "mistral-qlora-fsdp.overlay.yml"

# CPU-sized: one ~85-token alpaca example per row, 4 rows per step.
CPU_OVERLAY = {
    "sequence_len": 128,
    "pad_to_sequence_len": False,
    "micro_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "num_epochs": None,
    "max_steps": 30,
    "logging_steps": 1,
    "lr_scheduler": "cosine",
    "optimizer": "adamw_torch",
    "seed": 7,
}


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root (what 'nothing was changed' compares)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KUBETUNE_PROGRESS_FILE", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def torchrun_train(
    path: Path, nproc: int, *, timeout: int, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N -m kubetune train PATH`, output captured."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
        "-m", "kubetune", "train", str(path),
    ]  # fmt: skip
    return subprocess.run(
        command, env=subprocess_env() | (env or {}), capture_output=True, text=True, timeout=timeout
    )


def build_config(
    seed_mapping: dict, tiny: dict, directory: Path, *, overlay_file: Path | None = None, **keys
):
    """(TrainConfig, YAML path): the seed config with local paths, the CPU overlay, a seed overlay, `keys`.

    A key set to None is removed (back to the schema default).
    """
    from kubetune.config import load_config

    mapping = dict(seed_mapping)
    mapping["base_model"] = tiny["model"]
    mapping["datasets"] = [{**seed_mapping["datasets"][0], "path": tiny["train"]}]
    mapping |= {"output_dir": str(directory / "out"), "dataset_prepared_path": tiny["prepared"]}
    mapping |= CPU_OVERLAY
    if overlay_file is not None:  # a seed overlay replaces top-level keys (the model stays the tiny one)
        overlay = yaml.safe_load(overlay_file.read_text())
        mapping |= {key: value for key, value in overlay.items() if key not in ("base_model", "model_type")}
    mapping |= keys
    mapping = {key: value for key, value in mapping.items() if value is not None}
    path = directory / "config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return load_config(path), path
