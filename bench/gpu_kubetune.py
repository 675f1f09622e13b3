"""kubetune's real training path for bench/gpu_throughput.py: the engine's setup and loop, unchanged.

The parent writes the random model (safetensors + a locally trained tokenizer) and the synthetic
examples as `pretokenized` JSON lines, then runs each case in a child process (so that peak memory
is that run's alone):

    python bench/gpu_kubetune.py SPEC.json      # prints one line: KUBETUNE_RESULT {...}

The child loads the config through kubetune.config, builds the run with kubetune.train.loop.setup
(data preparation, model load, attention backend, adapter, compile, optimizer: all the engine's
code) and trains with kubetune.train.loop.train_loop. It only adds a progress reporter that notes the
time and the non-pad tokens seen at each logged step.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch


def write_model_dir(model, path: Path) -> None:
    """The in-memory random model as a model directory the engine loads, with a tokenizer."""
    from kubetune.tiny import alpaca_rows, train_tokenizer

    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, max_shard_size="5GB")
    texts = [f"{r['instruction']} {r['input']} {r['output']}" for r in alpaca_rows(256)]
    train_tokenizer(texts, vocab_size=512).save_pretrained(path)


def write_examples(examples, path: Path) -> Path:
    with path.open("w") as fh:
        for e in examples:
            fh.write(json.dumps({"input_ids": e.ids.tolist(), "labels": e.labels.tolist()}) + "\n")
    return path


def base_config(
    model_dir: Path,
    data: Path,
    work: Path,
    name: str,
    *,
    steps: int,
    micro_batch: int,
    lr: float,
    seq_len: int,
) -> dict:
    """The seed config's keys (llama3-lora.yml) with local paths and the case's adapter/levers."""
    return {
        "base_model": str(model_dir),
        "datasets": [{"path": str(data), "type": "pretokenized"}],
        "dataset_prepared_path": str(work / "prepared"),
        "output_dir": str(work / f"out-{name}"),
        "sequence_len": seq_len,
        "sample_packing": True,
        "pad_to_sequence_len": True,
        "adapter": "lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "lora_target_linear": True,
        "micro_batch_size": micro_batch,
        "gradient_accumulation_steps": 1,
        "max_steps": steps,
        "learning_rate": lr,
        "lr_scheduler": "constant",
        "bf16": True,
        "logging_steps": 1,
        "save_steps": 1_000_000,
        "seed": 0,
    }


def heldout_loss(run, examples: list[dict]) -> float:
    """Token-mean loss on held-out examples, one example per batch, through the engine's own module."""
    device = run.accelerator.device
    total, count = 0.0, 0
    run.module.eval()
    with torch.no_grad():
        for row in examples:
            batch = run.collate([row])
            on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            inputs = {"input_ids": on_device["input_ids"], "targets": on_device["targets"]}
            inputs.update(run.backend.model_inputs(on_device))
            total += float(run.module(**inputs))
            count += batch["n_trained"]
    run.module.train()
    return total / count


def child(spec_path: str) -> int:
    from kubetune.config import load_config
    from kubetune.train import loop
    from kubetune.train.progress import Reporters

    spec = json.loads(Path(spec_path).read_text())
    cfg = load_config(spec["config"])
    stop = loop.StopFlag()
    started = time.perf_counter()
    run = loop.setup(cfg, stop)
    setup_s = time.perf_counter() - started
    marks: list[tuple[int, float, int, float]] = []

    class Marks:
        def report(self, progress, force=False):  # called after the loop's loss .item(): the GPU is idle
            if progress.event == "train":
                marks.append((progress.step, time.perf_counter(), run.state.input_tokens, progress.loss))

        def close(self):
            pass

    run.reporters = Reporters([Marks()])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    weights_gib = torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    loop.train_loop(run, stop)
    warmup = spec["warmup"]
    first, last = marks[warmup - 1], marks[-1]
    result = {
        "timed_tokens": last[2] - first[2],
        "timed_seconds": last[1] - first[1],
        "steps": len(marks),
        "warmup": warmup,
        "losses": [m[3] for m in marks],
        "trained_tokens": run.state.trained_tokens,
        "final_loss": marks[-1][3],
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else 0.0,
        "after_setup_gib": weights_gib,
        "setup_s": setup_s,
        "attention": run.backend.name,
        "loss_fn": getattr(run.module, "loss_fn", None).__name__
        if hasattr(getattr(run.module, "loss_fn", None), "__name__")
        else None,
        "optimizer": type(
            run.optimizer.optimizer if hasattr(run.optimizer, "optimizer") else run.optimizer
        ).__name__,
        "packing_efficiency": run.data.stats.get("packing_efficiency"),
    }
    if spec.get("heldout"):
        rows = [json.loads(line) for line in Path(spec["heldout"]).read_text().splitlines()]
        result["heldout_loss"] = heldout_loss(run, rows)
    print("KUBETUNE_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(child(sys.argv[1]))
