"""`kubetune merge`: fold the trained adapter into the base weights → a standalone model directory."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from kubetune.train.errors import UserError
from kubetune.train.results import load_base_with_adapter, load_tokenizer, require_result

log = logging.getLogger(__name__)


def merge(cfg, output: str | os.PathLike | None = None) -> Path:
    """Write <output_dir>/merged (or `output`): the merged model in safetensors, and the tokenizer."""
    output_dir, kind = require_result(cfg)
    if kind != "adapter":
        raise UserError(
            f"{output_dir} holds a fully fine-tuned model, which has no adapter to merge.",
            "Use the model in output_dir directly; `kubetune merge` is for LoRA/QLoRA runs.",
            key="adapter",
        )
    target = Path(output).expanduser().resolve() if output else output_dir / "merged"
    tokenizer = load_tokenizer(output_dir, cfg)
    # On CPU, in the base checkpoint's own dtype: the merged model is stored as the base model was.
    model = load_base_with_adapter(cfg, output_dir, tokenizer, dtype="auto", device=torch.device("cpu"))
    merged = model.merge_and_unload()
    merged.config.use_cache = True
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-"))
    try:
        merged.save_pretrained(staging, max_shard_size="5GB")
        tokenizer.save_pretrained(staging)
        staging.chmod(0o755)
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("merged model written to %s", target)
    return target


def replace_dir(new: Path, old: Path) -> None:
    """Swap `new` in at `old`'s path: renames only, so `old` is whole until the moment it is replaced."""
    if not old.exists():
        os.replace(new, old)
        return
    trash = old.with_name(f".{old.name}.old")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(old, trash)
    os.replace(new, old)
    shutil.rmtree(trash, ignore_errors=True)
