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
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from gpu_common import Recorder, attended_length, result_fields


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


def kubetune_row(result: dict, shape: dict, examples, kind: str, variant: str, full: bool = False) -> dict:
    attended = attended_length(examples, kind, shape)
    row = result_fields(result["timed_tokens"], result["timed_seconds"], shape, attended, full=full)
    # The child's own peak (this process holds nothing on the GPU by then).
    row["peak_mem_gib"], row["peak_reserved_gib"] = result["peak_mem_gib"], result["peak_reserved_gib"]
    extra = {
        k: v
        for k, v in result.items()
        if k not in ("timed_tokens", "timed_seconds", "peak_mem_gib", "peak_reserved_gib")
    }
    return {**row, **extra}


def parity_report(rec: Recorder) -> None:
    """Held-out loss and late training loss of the two parity runs, side by side."""
    rows = {r["system"]: r for r in rec.rows if r["case"] == "lora-all-alpaca-parity" and "heldout_loss" in r}
    if len(rows) != 2:
        return
    base, ours = rows["hf_baseline"], rows["kubetune"]

    def late(r):  # mean loss over the last quarter of the steps
        losses = r["losses"]
        tail = losses[-max(1, len(losses) // 4) :]
        return sum(tail) / len(tail)

    rec.add(
        system="parity",
        case="lora-all-alpaca-parity",
        variant="kubetune vs hf_baseline, same examples, one pass",
        heldout_loss_hf=base["heldout_loss"],
        heldout_loss_kubetune=ours["heldout_loss"],
        heldout_rel_diff=abs(ours["heldout_loss"] - base["heldout_loss"]) / base["heldout_loss"],
        late_train_loss_hf=late(base),
        late_train_loss_kubetune=late(ours),
        trained_tokens_hf=base.get("trained_tokens"),
        trained_tokens_kubetune=ours.get("trained_tokens"),
        first_loss_hf=base["losses"][0],
        first_loss_kubetune=ours["losses"][0],
    )


# QLoRA as the issue measures it: nf4 with double quantisation, checkpointing for the 12 GiB budget.
QLORA = {
    "adapter": "qlora",
    "load_in_4bit": True,
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "bfloat16",
    "gradient_checkpointing": True,
}


def kubetune_cases() -> list[tuple[str, str, str, dict]]:
    """(case, data, variant, config overrides): the seed config plus what the case asks for.

    `_spec` in the overrides goes to the child, not the config: `fused_lora: False` measures peft's own
    layers, `profile: True` writes a kernel table when --profile-dir is given.
    """
    compiled = {"torch_compile": True}
    return [
        ("lora-all-dense", "dense", "torch_compile", {**compiled, "_spec": {"profile": True}}),
        ("lora-all-alpaca", "alpaca", "torch_compile", compiled),
        ("lora-all-gc-dense", "dense", "torch_compile,gc", {**compiled, "gradient_checkpointing": True}),
        ("qlora-dense", "dense", "nf4,double-quant,gc,torch_compile", {**QLORA, **compiled}),
        ("qlora-dense", "dense", "nf4,double-quant,gc", QLORA),
        ("lora-all-dense", "dense", "defaults (no compile)", {}),
        ("lora-all-alpaca", "alpaca", "defaults (no compile)", {}),
    ]


def extra_kubetune_cases() -> list[tuple[str, str, str, dict]]:
    """Each lever's own gain, measured against the case above in the same run."""
    compiled = {"torch_compile": True}
    return [
        ("lora-all-dense", "dense", "defaults,peft lora layers", {"_spec": {"fused_lora": False}}),
        ("lora-all-dense-mb4", "dense", "torch_compile,micro_batch 4", {**compiled, "micro_batch_size": 4}),
    ]


def issue9_cases() -> list[tuple[str, str, dict, dict]]:
    """Issue 9's code paths at world size 1 (the two-GPU kind is not lent): (case, variant, overrides, shape).

    The full fine-tune runs on the 8B width with 16 of its 32 layers: accelerate keeps FSDP2's trainable
    weights in float32 (16 bytes a parameter with AdamW), which for all 32 layers is more than one H200
    holds unsharded; two GPUs halve it.
    """
    fsdp = {
        "fsdp": ["full_shard", "auto_wrap"],
        "fsdp_config": {
            "fsdp_version": 2,
            "fsdp_offload_params": False,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
        },
    }
    full = {"adapter": None, "learning_rate": 1e-5, "gradient_checkpointing": True, **fsdp}
    # The seed's Mistral-style QLoRA + FSDP overlay, on the Llama shape (so LlamaDecoderLayer is wrapped).
    qlora_fsdp = {
        "load_in_4bit": True,
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_use_double_quant": True,
        "flash_attention": True,
        "sdp_attention": False,
        **fsdp,
        "adapter": "qlora",
        "lora_r": 64,
        "lora_alpha": 128,
        "lora_dropout": 0.05,
        "lora_target_linear": True,
        "optimizer": "adamw_bnb_8bit",
        "lr_scheduler": "cosine",
        "warmup_steps": 100,
        "gradient_checkpointing": True,
    }
    qlora_fsdp["fsdp_config"] = {**fsdp["fsdp_config"], "fsdp_state_dict_type": "FULL_STATE_DICT"}
    return [
        (
            "full-fsdp2-1gpu",
            "fsdp2 full fine-tune, gc, world size 1, 16 of 32 layers",
            full,
            {"num_hidden_layers": 16},
        ),
        ("qlora-fsdp-1gpu", "seed qlora+fsdp overlay (fsdp2), world size 1", qlora_fsdp, {}),
    ]


def run_child(spec: dict, work: Path, name: str, log: Path, timeout: float) -> dict:
    """One kubetune run in its own process (bench/gpu_kubetune.py); its result line, parsed."""
    spec_path = work / f"spec-{name}.json"
    spec_path.write_text(json.dumps(spec))
    child = Path(__file__).resolve().parent / "gpu_kubetune.py"
    command = [sys.executable, str(child), str(spec_path)]
    if spec.get("torchrun"):  # FSDP / DeepSpeed need a process group, even of one process
        nproc = str(spec.get("nproc", 1))
        command[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", nproc]
    env = {**os.environ, **spec.get("env", {})}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    with log.open("a") as fh:
        fh.write(f"===== {name} rc={proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-12000:]}\n")
    for line in proc.stdout.splitlines():
        if line.startswith("KUBETUNE_RESULT "):
            return json.loads(line.removeprefix("KUBETUNE_RESULT "))
    tail = [x for x in proc.stderr.strip().splitlines() if x.strip()][-3:]
    raise RuntimeError(f"kubetune child rc={proc.returncode}: {' | '.join(tail)}")


class StepProfiler:
    """torch.profiler over the two steps before the timed ones; writes the kernel table and GPU busy time.

    Where the engine loses time shows as GPU idle (busy < wall: the host is behind) or as kernels the
    plain path does not run.
    """

    def __init__(self, path: str | None, warmup: int):
        self.path = Path(path) if path else None
        self.start_after, self.stop_after = warmup - 3, warmup - 1
        self.prof = None
        self.started = 0.0

    def at_step(self, step: int) -> None:
        if self.path is None or not torch.cuda.is_available() or self.start_after < 1:
            return
        if step == self.start_after:
            from torch.profiler import ProfilerActivity, profile

            self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.prof.start()
            self.started = time.perf_counter()
        elif step == self.stop_after and self.prof is not None:
            torch.cuda.synchronize()
            wall = time.perf_counter() - self.started
            self.prof.stop()
            averages = self.prof.key_averages()
            busy = sum(e.self_device_time_total for e in averages) / 1e6
            table = averages.table(sort_by="self_device_time_total", row_limit=45, max_name_column_width=70)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(
                f"2 steps: wall {wall:.3f} s, GPU kernels {busy:.3f} s ({busy / wall:.1%} busy)\n{table}\n"
            )
            self.prof = None


def child(spec_path: str) -> int:
    from kubetune.config import load_config
    from kubetune.train import loop
    from kubetune.train.progress import Reporters

    spec = json.loads(Path(spec_path).read_text())
    cfg = load_config(spec["config"])
    if spec.get("fused_lora") is False:  # the lever's own measurement: peft's layers instead
        from kubetune.train import lora_fused

        lora_fused.fuse_lora_layers = lambda model: 0
    stop = loop.StopFlag()
    started = time.perf_counter()
    run = loop.setup(cfg, stop)
    setup_s = time.perf_counter() - started
    marks: list[tuple[int, float, int, float]] = []
    profiler = StepProfiler(spec.get("profile"), spec["warmup"])

    class Marks:
        # Called once the step's loss has reached the host: the GPU has finished that step.
        def report(self, progress, force=False):
            if progress.event == "train":
                profiler.at_step(progress.step)  # before the mark: its export is outside the timed steps
                marks.append((progress.step, time.perf_counter(), progress.input_tokens, progress.loss))

        def close(self):
            pass

    run.reporters = Reporters([Marks()])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    weights_gib = torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    loop.train_loop(run, stop)
    if not run.accelerator.is_main_process:  # rank 0 reports (its counts are summed over all ranks)
        return 0
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
