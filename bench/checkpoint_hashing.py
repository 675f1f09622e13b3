#!/usr/bin/env python3
"""What the sha256 manifest and the fsyncs cost a checkpoint of the tiny model, one process on CPU.

    .venv/bin/python bench/checkpoint_hashing.py [--repeats 5] [--record]

For a LoRA run (only the adapter and lm_head are checkpointed) and a full fine-tune (all weights and
AdamW's moments), each repeat times: accelerate's save_state alone into a fresh directory; then
kubetune's checkpoint.save (save_state + trainer state + manifest with sha256 + fsync of every file and
directory + rename); hashing the written checkpoint alone (the rest of the difference is the fsyncs);
then the hash check on resume (checkpoint.problem). Medians are reported with the checkpoint's size,
and sha256's rate on one thread over 256 MB in the page cache, to extrapolate to real checkpoints. With --record, appends one JSON line to bench/results/checkpoint_hashing.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "checkpoint_hashing.jsonl"


def measure(model_dir: Path, work: Path, *, lora: bool, repeats: int) -> dict:
    import torch
    from accelerate import Accelerator
    from kubetune.train import checkpoint
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if lora:
        lora_config = LoraConfig(
            r=16, lora_alpha=32, target_modules="all-linear", modules_to_save=["lm_head"]
        )
        model = get_peft_model(model, lora_config)
    accelerator = Accelerator(cpu=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(trainable, lr=1e-3))
    model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss.backward()
    optimizer.step()  # AdamW's moments exist, as in a real checkpoint
    if lora:
        checkpoint.register_adapter_hooks(accelerator, model)
    plain, full, verify = [], [], []
    for i in range(repeats):
        target = work / f"plain-{i}"
        started = time.perf_counter()
        accelerator.save_state(str(target))
        plain.append(time.perf_counter() - started)
        started = time.perf_counter()
        path = checkpoint.save(
            accelerator, checkpoint.TrainerState(step=i + 1), work / "out", total_limit=None
        )
        full.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert checkpoint.problem(path) is None
        verify.append(time.perf_counter() - started)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    names = [str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()]
    hashing = []
    for _ in range(repeats):
        started = time.perf_counter()
        checkpoint._digests(path, names, fsync=False)
        hashing.append(time.perf_counter() - started)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "checkpoint": "lora" if lora else "full",
        "bytes": size,
        "save_state_s": statistics.median(plain),
        "kubetune_save_s": statistics.median(full),
        "overhead_s": statistics.median(full) - statistics.median(plain),
        "hash_only_s": statistics.median(hashing),  # the rest of the overhead is the fsyncs
        "verify_s": statistics.median(verify),
    }


def sha256_rate(megabytes: int = 256) -> float:
    """MB/s of sha256 over a file in the page cache, one thread (to extrapolate to real checkpoints)."""
    import hashlib

    with tempfile.NamedTemporaryFile() as handle:
        handle.write(os.urandom(megabytes << 20))
        handle.flush()
        handle.seek(0)
        started = time.perf_counter()
        hashlib.file_digest(handle, "sha256")
        return megabytes / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    from kubetune.tiny import make_fixture

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_fixture(Path(tmp) / "tiny", examples=8, seed=0)
        rows = [
            measure(Path(paths["model"]), Path(tmp) / kind, lora=kind == "lora", repeats=args.repeats)
            for kind in ("lora", "full")
        ]
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "bench/checkpoint_hashing.py"
        + (f" --repeats {args.repeats}" if args.repeats != 5 else ""),
        "commit": commit.stdout.strip(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load": os.getloadavg()[0],
        "results": rows,
        "sha256_mb_per_s_one_thread": round(sha256_rate()),
    }
    print(json.dumps(record, indent=1))
    if args.record:
        with open(RESULTS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
