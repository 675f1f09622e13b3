#!/usr/bin/env python3
"""What `fsdp_cpu_ram_efficient_loading` changes: which ranks read the weights, and each rank's peak host
memory, on 2 CPU processes under FSDP2 (KUBETUNE_CPU_FSDP=1, gloo).

    .venv/bin/python bench/ram_efficient_loading.py [--record]

Builds a 95M-parameter Llama (hidden 1024, 8 layers; 364 MB of float32 weights) with kubetune.tiny, then
runs the same 1-step LoRA config twice with torchrun, the key off (the baseline) and on, and reads the
engine's own log line ("peak host memory with the model prepared, per rank: ...; ranks that read the
weights: ..."). Prints both runs and the ratio of each rank's peak; with --record writes the table to
bench/results/ram_efficient_loading_cpu.txt.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "bench" / "results" / "ram_efficient_loading_cpu.txt"
LINE = re.compile(r"per rank: ([\d, ]+) MiB; ranks that read the weights: ([\w, ]+)")


def config(fixture: dict, out: Path, efficient: bool) -> dict:
    return {
        "base_model": fixture["model"],
        "model_type": "LlamaForCausalLM",
        "datasets": [{"path": fixture["train"], "type": "alpaca"}],
        "sequence_len": 128,
        "adapter": "lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_target_modules": ["q_proj", "v_proj"],
        "micro_batch_size": 1,
        "max_steps": 1,
        "learning_rate": 0.001,
        "save_steps": 100,
        "output_dir": str(out),
        "fsdp": ["full_shard", "auto_wrap"],
        "fsdp_config": {
            "fsdp_version": 2,
            "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": efficient,
        },
    }


def run(work: Path, fixture: dict, efficient: bool) -> tuple[list[int], str]:
    path = work / f"efficient-{efficient}.yml"
    path.write_text(yaml.safe_dump(config(fixture, work / f"out-{efficient}", efficient)))
    env = os.environ | {"KUBETUNE_CPU_FSDP": "1", "KUBETUNE_LOG_FORMAT": "plain", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*command, "-m", "kubetune", "train", str(path)], env=env, capture_output=True, text=True, timeout=900
    )
    match = LINE.search(done.stderr)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"the run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return [int(peak) for peak in match.group(1).split(",")], match.group(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    from kubetune.tiny import make_fixture

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fixture = make_fixture(
            work / "fx", examples=64, hidden_size=1024, layers=8, heads=8, kv_heads=4, intermediate_size=2816
        )
        weights = sum(f.stat().st_size for f in Path(fixture["model"]).glob("*.safetensors")) / 2**20
        rows = {efficient: run(work, fixture, efficient) for efficient in (False, True)}
    lines = [
        f"fsdp_cpu_ram_efficient_loading, FSDP2 on 2 CPU processes (gloo), LoRA, {weights:.0f} MiB of weights",
        "key    peak MiB rank 0  peak MiB rank 1  ranks that read the weights",
    ]
    for efficient, (peaks, readers) in rows.items():
        lines.append(f"{str(efficient).lower():6} {peaks[0]:>15}  {peaks[1]:>15}  {readers}")
    base, on = rows[False][0], rows[True][0]
    lines.append(f"ratio on/off: rank 0 {on[0] / base[0]:.2f}x, rank 1 {on[1] / base[1]:.2f}x")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.record:
        RESULT.write_text(f"# {' '.join(['bench/ram_efficient_loading.py', *sys.argv[1:]])}\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
