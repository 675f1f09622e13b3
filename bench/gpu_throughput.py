"""Training throughput on one GPU: kubetune's training path side by side with HF Trainer + PEFT.

Builds the Llama-3-8B shape locally with random bf16 weights (no download), makes synthetic data
(dense 2048-token rows and an alpaca-like lognormal length mix with prompt tokens masked), and
measures non-pad tokens/s, MFU, peak memory and the loss for each case, one JSON object per line:

    python bench/gpu_throughput.py --suite baseline,levers --out bench/results/gpu_throughput.jsonl
    python bench/gpu_throughput.py --shape tiny --suite all --out /tmp/smoke.jsonl      # CPU smoke test

Suites: `baseline` (HF Trainer + PEFT, the issue's anchor cases), `levers` (one speed lever at a time
on a plain step, bench/gpu_levers.py), `kubetune` (the engine's real path) and `parity` (the same
examples in the same order through both; loss at equal trained tokens). MFU counts
4·N + 6·S·H·L FLOPs per token for LoRA (6·N + 12·S·H·L for full fine-tuning), N without the input
embedding, S the attended length (2048 dense, the mean example length when documents are packed
or padded), against 989 TFLOP/s.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_levers as lv  # noqa: E402

PEAK_TFLOPS = 989.0
SHAPES = {
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        seq_len=2048,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        rope_theta=10000.0,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        seq_len=128,
    ),
}
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
PAD_ID = 0
KT_EXAMPLES = {"dense": 64, "alpaca": 600}  # enough rows for the kubetune runs' steps
BOS_ID = 1
START = time.monotonic()


# ---------------------------------------------------------------- shape, FLOPs, versions


def flops_per_token(shape: dict, attended: float, full: bool = False) -> float:
    h, layers, inter, vocab = (
        shape[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
    )
    kv = shape["num_key_value_heads"] * h // shape["num_attention_heads"]
    n = layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + h * vocab  # lm_head counted, input embedding not
    return (6 * n + 12 * attended * h * layers) if full else (4 * n + 6 * attended * h * layers)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "bitsandbytes",
        "liger-kernel",
        "deepspeed",
        "triton",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    out["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return out


def build_model(shape: dict, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **{k: v for k, v in shape.items() if k != "seq_len"},
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.config.use_cache = False
    return model


# ---------------------------------------------------------------- data


@dataclass
class Example:
    ids: np.ndarray
    labels: np.ndarray


def make_examples(count: int, shape: dict, kind: str, seed: int) -> list[Example]:
    """Learnable synthetic token streams: a small alphabet with a fixed successor most of the time.

    dense: rows of exactly seq_len tokens, every token trained. alpaca: lognormal lengths (mean about
    300 tokens at seq_len 2048, scaled for smaller shapes) with the prompt part (20-60%) masked.
    """
    rng = np.random.default_rng(seed)
    seq_len = shape["seq_len"]
    alphabet = np.arange(16, 16 + min(1024, shape["vocab_size"] - 16))
    successor = np.random.default_rng(1234).permutation(alphabet)
    mean = 300 * seq_len / 2048
    sigma = 0.8
    examples = []
    for _ in range(count):
        if kind == "dense":
            length = seq_len
        else:
            length = int(np.clip(round(rng.lognormal(math.log(mean) - sigma**2 / 2, sigma)), 16, seq_len))
        ids = np.empty(length, dtype=np.int64)
        ids[0] = BOS_ID
        noise = rng.choice(alphabet, size=length)
        follow = rng.random(length) < 0.6
        prev = noise[0]
        for t in range(1, length):
            prev = successor[prev - 16] if follow[t] else noise[t]
            ids[t] = prev
        labels = ids.copy()
        if kind != "dense":
            labels[: max(1, int(length * rng.uniform(0.2, 0.6)))] = -100
        examples.append(Example(ids, labels))
    return examples


def pad_batch(examples: list[Example]) -> dict:
    """Padded to the longest in the batch, as HF's DataCollatorForSeq2Seq does."""
    width = max(len(e.ids) for e in examples)
    ids = np.full((len(examples), width), PAD_ID, dtype=np.int64)
    labels = np.full_like(ids, -100)
    mask = np.zeros_like(ids)
    for row, e in enumerate(examples):
        ids[row, : len(e.ids)] = e.ids
        labels[row, : len(e.ids)] = e.labels
        mask[row, : len(e.ids)] = 1
    return {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "attention_mask": torch.from_numpy(mask),
    }


def pack_rows(examples: list[Example], seq_len: int) -> list[list[Example]]:
    """Greedy packing in data order (no sorting, so both systems see the same example order)."""
    rows, row, used = [], [], 0
    for e in examples:
        if used + len(e.ids) > seq_len and row:
            rows.append(row)
            row, used = [], 0
        row.append(e)
        used += len(e.ids)
    if row:
        rows.append(row)
    return rows


def packed_batch(rows: list[list[Example]], seq_len: int) -> dict:
    """Packed rows padded to seq_len; the pad tail is its own segment. cu_seqlens spans the flat batch."""
    ids = np.full((len(rows), seq_len), PAD_ID, dtype=np.int64)
    labels = np.full_like(ids, -100)
    positions = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    bounds = [0]
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            n = len(e.ids)
            ids[r, at : at + n] = e.ids
            labels[r, at : at + n] = e.labels
            positions[r, at : at + n] = np.arange(n)
            mask[r, at : at + n] = 1
            at += n
            bounds.append(r * seq_len + at)
        if at < seq_len:
            positions[r, at:] = np.arange(seq_len - at)
            bounds.append((r + 1) * seq_len)
    lengths = np.diff(bounds)
    return {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "position_ids": torch.from_numpy(positions),
        "attention_mask": torch.from_numpy(mask),
        "cu_seqlens": torch.tensor(bounds, dtype=torch.int32),
        "max_seqlen": int(lengths.max()),
    }


def batches_for(case: Case, examples: list[Example], shape: dict) -> list[dict]:
    mb = case.micro_batch
    if case.layout == "packed":
        rows = pack_rows(examples, shape["seq_len"])
        return [packed_batch(rows[i : i + mb], shape["seq_len"]) for i in range(0, len(rows) - mb + 1, mb)]
    return [pad_batch(examples[i : i + mb]) for i in range(0, len(examples) - mb + 1, mb)]


def attended_length(examples: list[Example], kind: str, shape: dict) -> float:
    return float(shape["seq_len"]) if kind == "dense" else float(np.mean([len(e.ids) for e in examples]))


# ---------------------------------------------------------------- cases and records


@dataclass(frozen=True)
class Case:
    name: str  # the issue's case name, e.g. lora-all-dense
    data: str  # dense | alpaca
    layout: str  # padded | packed
    micro_batch: int
    targets: tuple = tuple(ALL_LINEAR)
    levers: lv.Levers = lv.Levers()


def lora_config(targets):
    from peft import LoraConfig

    return LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=list(targets), task_type="CAUSAL_LM"
    )


class Recorder:
    def __init__(self, path: Path, shape_name: str, argv: list[str]):
        self.path = path
        self.rows: list[dict] = []
        self.common = {
            "shape": shape_name,
            "gpus": 1,
            "versions": versions(),
            "command": "python " + " ".join(shlex.quote(a) for a in argv),
        }
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, **row) -> dict:
        row = {**row, **self.common, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.rows.append(row)
        with self.path.open("a") as fh:  # appended line by line so a killed run keeps what it measured
            fh.write(json.dumps(row) + "\n")
        print(f"[{time.monotonic() - START:6.0f}s] {summary_line(row)}", flush=True)
        return row

    def table(self) -> str:
        lines = [f"{'system':12} {'case':24} {'variant':58} {'tok/s':>8} {'MFU':>6} {'GiB':>6} {'loss':>7}"]
        for r in self.rows:
            lines.append(summary_line(r))
        return "\n".join(lines)


def summary_line(r: dict) -> str:
    if r["system"] in ("check", "parity") and not r.get("error"):
        keys = ("err", "loss", "diff", "tokens")
        return f"{r['system']} {json.dumps({k: v for k, v in r.items() if any(x in k for x in keys)})}"
    if r.get("error") or r.get("skipped"):
        return f"{r['system']:12} {r['case']:24} {r.get('variant', ''):58} {'-- ' + (r.get('error') or r.get('skipped'))[:90]}"
    loss = r.get("final_loss")
    return (
        f"{r['system']:12} {r['case']:24} {r.get('variant', ''):58} {r['tokens_per_s']:8.0f} "
        f"{r['mfu']:6.3f} {r['peak_mem_gib']:6.1f} {loss if loss is None else round(loss, 3)!s:>7}"
    )


def reset_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> tuple[float, float]:
    if not torch.cuda.is_available():
        return 0.0, 0.0
    return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def result_fields(tokens: int, seconds: float, shape: dict, attended: float, full: bool = False) -> dict:
    tps = tokens / seconds
    alloc, reserved = peak_gib()
    return {
        "tokens_per_s": tps,
        "mfu": tps * flops_per_token(shape, attended, full) / (PEAK_TFLOPS * 1e12),
        "peak_mem_gib": alloc,
        "peak_reserved_gib": reserved,
        "timed_tokens": tokens,
        "timed_seconds": seconds,
        "attended_len": attended,
    }


# ---------------------------------------------------------------- HF Trainer + PEFT baseline


def run_hf_baseline(
    model, case: Case, examples, shape, args, gc_on: bool, lr: float, steps: int, warmup: int, heldout=None
) -> dict:
    from peft import get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    counts: list[int] = []
    losses: list[float] = []

    def collate(rows):
        batch = pad_batch(rows)
        counts.append(int(batch["attention_mask"].sum()))
        return batch

    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):
            if state.global_step in (warmup, steps):
                sync()
                marks[str(state.global_step)] = time.perf_counter()

        def on_log(self, targs, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    peft_model = get_peft_model(model, lora_config(case.targets))
    reset_memory()
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=case.micro_batch,
            max_steps=steps,
            learning_rate=lr,
            lr_scheduler_type="constant",
            bf16=torch.cuda.is_available(),
            use_cpu=not torch.cuda.is_available(),
            gradient_checkpointing=gc_on,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            remove_unused_columns=False,
            train_sampling_strategy="sequential",
            dataloader_drop_last=True,
            seed=0,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=peft_model, args=targs, train_dataset=examples, data_collator=collate, callbacks=[Timer()]
        )
        trainer.train()
    # The dataloader may collate one batch ahead: batch k is still counts[k].
    tokens = sum(counts[warmup:steps])
    row = result_fields(
        tokens, marks[str(steps)] - marks[str(warmup)], shape, attended_length(examples, case.data, shape)
    )
    row.update(final_loss=losses[-1] if losses else None, losses=losses, steps=steps, warmup=warmup)
    row["trained_tokens"] = sum(
        int((e.labels[1:] != -100).sum()) for e in examples[: steps * case.micro_batch]
    )
    if heldout is not None:
        row["heldout_loss"] = hf_heldout_loss(peft_model, heldout)
    if gc_on:
        peft_model.get_base_model().gradient_checkpointing_disable()
    peft_model.unload()
    del trainer, peft_model
    reset_memory()
    return row


@torch.no_grad()
def hf_heldout_loss(model, examples: list[Example]) -> float:
    """Token-mean loss of held-out examples through plain transformers (one example per forward)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    total, count = 0.0, 0
    model.eval()
    for e in examples:
        ids = torch.from_numpy(e.ids)[None].to(device)
        labels = torch.from_numpy(e.labels)[None].to(device)
        n = int((labels[:, 1:] != -100).sum())
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            total += float(model(input_ids=ids, labels=labels).loss) * n
        count += n
    model.train()
    return total / count


# ---------------------------------------------------------------- the lever step (a plain loop)


def run_levers(model, case: Case, examples, shape, lr: float, steps: int, warmup: int) -> dict:
    """A plain training step (no Trainer) with the case's levers; model is a peft model."""
    levers = case.levers
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lv.set_attention(model, levers.attn)
    lv.set_checkpointing(model, levers.gc_every, levers.reentrant)
    if levers.compile_layers:
        lv.compile_layers(model, True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, fused=levers.fused_adamw and device == "cuda")
    base = model.get_base_model()
    batches = batches_for(case, examples, shape)
    if len(batches) < steps:
        raise RuntimeError(f"{len(batches)} batches for {steps} steps: make more examples")
    reset_memory()
    losses, t0, tokens = [], None, 0
    for step in range(steps):
        if step == warmup:
            sync()
            t0 = time.perf_counter()
        b = batches[step]
        ids = b["input_ids"].to(device, non_blocking=True)
        labels = b["labels"].to(device, non_blocking=True)
        kwargs = {}
        if case.layout == "packed":
            kwargs["position_ids"] = b["position_ids"].to(device, non_blocking=True)
            if levers.attn == "varlen":
                cu = b["cu_seqlens"].to(device, non_blocking=True)
                # max_seqlen fixed at seq_len so compiled layers see one constant (it only sizes the grid).
                kwargs.update(
                    cu_seq_lens_q=cu,
                    cu_seq_lens_k=cu,
                    max_length_q=shape["seq_len"],
                    max_length_k=shape["seq_len"],
                )
        else:
            kwargs["attention_mask"] = b["attention_mask"].to(device, non_blocking=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            if levers.loss == "hf":
                loss = base(input_ids=ids, labels=labels, **kwargs).loss
            else:
                hidden = base.model(input_ids=ids, **kwargs).last_hidden_state
                shifted = lv.hf_shift(labels)
                n = (shifted != -100).sum()
                loss = lv.token_sum_loss(levers.loss, hidden, base.lm_head.weight, shifted) / n
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            tokens += int(b["attention_mask"].sum())
        losses.append(loss.detach())
    sync()
    seconds = time.perf_counter() - t0
    row = result_fields(tokens, seconds, shape, attended_length(examples, case.data, shape))
    losses = [float(x) for x in losses]
    row.update(final_loss=losses[-1], losses=losses, steps=steps, warmup=warmup)
    if levers.compile_layers:
        lv.compile_layers(model, False)
    lv.set_checkpointing(model, 0, False)
    lv.set_attention(model, "sdpa")
    del opt, params
    reset_memory()
    return row


# ---------------------------------------------------------------- correctness of the fast paths


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


@torch.no_grad()
def check_paths(model, examples, shape) -> dict:
    """Logits of varlen and flex attention and the fused/chunked losses against SDPA + plain CE."""
    device = "cuda"
    b = packed_batch(pack_rows(examples, shape["seq_len"])[:2], shape["seq_len"])
    ids, pos = b["input_ids"].to(device), b["position_ids"].to(device)
    cu = b["cu_seqlens"].to(device)
    mask = b["attention_mask"].bool().to(device)
    out = {}
    with torch.autocast(device, dtype=torch.bfloat16):
        lv.set_attention(model, "sdpa")
        ref_hidden = model.model(input_ids=ids, position_ids=pos).last_hidden_state
        for attn in ("flex", "varlen"):
            lv.set_attention(model, attn)
            extra = {}
            if attn == "varlen":
                extra = dict(
                    cu_seq_lens_q=cu,
                    cu_seq_lens_k=cu,
                    max_length_q=shape["seq_len"],
                    max_length_k=shape["seq_len"],
                )
            hidden = model.model(input_ids=ids, position_ids=pos, **extra).last_hidden_state
            out[f"hidden_rel_err_{attn}_vs_sdpa"] = rel_err(hidden[mask], ref_hidden[mask])
        lv.set_attention(model, "sdpa")
        # One document alone, unpacked, must see the same hidden states as inside the pack.
        first = pack_rows(examples, shape["seq_len"])[0]
        solo = model.model(input_ids=torch.from_numpy(first[1].ids)[None].to(device)).last_hidden_state
        at = len(first[0].ids)
        out["hidden_rel_err_packed_vs_alone"] = rel_err(ref_hidden[0, at : at + len(first[1].ids)], solo[0])
    labels = lv.hf_shift(b["labels"].to(device))
    with torch.enable_grad():
        h = ref_hidden.detach().requires_grad_(True)
        losses = {}
        for kind in ("hf", "chunked", "liger"):
            h.grad = None
            loss = lv.token_sum_loss(kind, h, model.lm_head.weight, labels)
            loss.backward()
            losses[kind] = (float(loss), h.grad.clone())
    for kind in ("chunked", "liger"):
        out[f"loss_rel_err_{kind}_vs_plain"] = abs(losses[kind][0] - losses["hf"][0]) / abs(losses["hf"][0])
        out[f"grad_rel_err_{kind}_vs_plain"] = rel_err(losses[kind][1], losses["hf"][1])
    return out


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


# ---------------------------------------------------------------- suites


def baseline_cases(args) -> list[tuple[Case, bool]]:
    cases = [
        (Case("lora-all-dense", "dense", "padded", 2), False),
        (Case("lora-all-gc-dense", "dense", "padded", 2), True),
        (Case("lora-all-alpaca", "alpaca", "padded", 8), False),
    ]
    if args.qkvo:
        cases += [(Case("lora-qkvo-dense", "dense", "padded", 2, tuple(QKVO)), False)]
    return cases


def lever_cases() -> list[Case]:
    L = lv.Levers
    dense = [
        L(),
        L(fused_adamw=True),
        L(loss="liger"),
        L(loss="chunked"),
        L(liger_kernels=True),
        L(compile_layers=True),
        L(loss="liger", fused_adamw=True, liger_kernels=True),
        L(loss="liger", fused_adamw=True, compile_layers=True),
    ]
    packed = [
        L(attn="sdpa", loss="liger", fused_adamw=True),
        L(attn="flex", loss="liger", fused_adamw=True),
        L(attn="varlen", loss="liger", fused_adamw=True),
        L(attn="varlen", loss="liger", fused_adamw=True, liger_kernels=True),
        L(attn="varlen", loss="liger", fused_adamw=True, compile_layers=True),
    ]
    gc_cases = [
        L(loss="liger", fused_adamw=True, gc_every=1, reentrant=True),
        L(loss="liger", fused_adamw=True, gc_every=1),
        L(loss="liger", fused_adamw=True, gc_every=1, liger_kernels=True),
        L(loss="liger", fused_adamw=True, gc_every=2, liger_kernels=True),
    ]
    out = [Case("lora-all-dense", "dense", "padded", 2, levers=x) for x in dense]
    out += [Case("lora-all-alpaca", "alpaca", "packed", 2, levers=x) for x in packed]
    out += [Case("lora-all-alpaca", "alpaca", "padded", 8, levers=L(loss="liger", fused_adamw=True))]
    out += [Case("lora-all-gc-dense", "dense", "padded", 2, levers=x) for x in gc_cases]
    out += [
        Case(
            "lora-all-dense-mb4",
            "dense",
            "padded",
            4,
            levers=L(loss="liger", fused_adamw=True, liger_kernels=True),
        )
    ]
    return out


def qlora_cases() -> list[Case]:
    L = lv.Levers
    return [
        Case(
            "qlora-dense",
            "dense",
            "padded",
            2,
            levers=L(loss="liger", fused_adamw=True, nf4=True, gc_every=1),
        ),
        Case(
            "qlora-dense",
            "dense",
            "padded",
            2,
            levers=L(loss="liger", fused_adamw=True, nf4=True, gc_every=1, liger_kernels=True),
        ),
        Case(
            "qlora-dense",
            "dense",
            "padded",
            2,
            levers=L(loss="liger", fused_adamw=True, nf4=True, gc_every=2, liger_kernels=True),
        ),
        Case(
            "qlora-dense",
            "dense",
            "padded",
            2,
            levers=L(loss="liger", fused_adamw=True, nf4=True, liger_kernels=True),
        ),
    ]


def kubetune_cases() -> list[tuple[str, str, str, dict]]:
    """(case, data, variant, config overrides): the seed config plus what the case asks for."""
    qlora = {
        "adapter": "qlora",
        "load_in_4bit": True,
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "bfloat16",
        "gradient_checkpointing": True,
    }
    return [
        ("lora-all-dense", "dense", "torch_compile", {"torch_compile": True}),
        ("lora-all-alpaca", "alpaca", "torch_compile", {"torch_compile": True}),
        (
            "lora-all-gc-dense",
            "dense",
            "torch_compile,gc",
            {"torch_compile": True, "gradient_checkpointing": True},
        ),
        ("qlora-dense", "dense", "nf4,double-quant,gc", qlora),
        ("lora-all-dense", "dense", "defaults (no compile)", {}),
        ("qlora-dense", "dense", "nf4,double-quant,gc,torch_compile", {**qlora, "torch_compile": True}),
        ("lora-all-alpaca", "alpaca", "defaults (no compile)", {}),
    ]


def extra_kubetune_cases() -> list[tuple[str, str, str, dict]]:
    """Where does the engine lose to the plain loop? Background data loading (the loop syncs every step)."""
    qlora = {
        "adapter": "qlora",
        "load_in_4bit": True,
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "bfloat16",
        "gradient_checkpointing": True,
    }
    workers = {"dataloader_num_workers": 1}
    return [
        ("lora-all-dense", "dense", "torch_compile,1 loader worker", {"torch_compile": True, **workers}),
        ("qlora-dense", "dense", "nf4,double-quant,gc,1 loader worker", {**qlora, **workers}),
        (
            "lora-all-alpaca-mb4",
            "alpaca",
            "torch_compile,micro_batch 4",
            {"torch_compile": True, "micro_batch_size": 4},
        ),
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
    import subprocess

    spec_path = work / f"spec-{name}.json"
    spec_path.write_text(json.dumps(spec))
    child = Path(__file__).resolve().parent / "gpu_kubetune.py"
    command = [sys.executable, str(child), str(spec_path)]
    if spec.get("torchrun"):  # FSDP / DeepSpeed need a process group, even of one process
        command[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    with log.open("a") as fh:
        fh.write(f"===== {name} rc={proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-12000:]}\n")
    for line in proc.stdout.splitlines():
        if line.startswith("KUBETUNE_RESULT "):
            return json.loads(line.removeprefix("KUBETUNE_RESULT "))
    tail = [x for x in proc.stderr.strip().splitlines() if x.strip()][-3:]
    raise RuntimeError(f"kubetune child rc={proc.returncode}: {' | '.join(tail)}")


def guarded(rec: Recorder, deadline: float, system: str, case: Case, variant: str, fn) -> dict | None:
    if time.monotonic() - START > deadline:
        return rec.add(system=system, case=case.name, variant=variant, skipped="time budget spent")
    try:
        row = fn()
    except Exception as exc:  # noqa: BLE001 - one failing lever must not lose the rest of the run
        traceback.print_exc()
        reset_memory()
        return rec.add(
            system=system, case=case.name, variant=variant, error=f"{type(exc).__name__}: {exc}"[:400]
        )
    return rec.add(
        system=system,
        case=case.name,
        variant=variant,
        micro_batch=case.micro_batch,
        layout=case.layout,
        **row,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument(
        "--suite",
        default="baseline,levers",
        help="comma list: baseline, levers, qlora, kubetune, parity, all",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_throughput.jsonl"))
    parser.add_argument(
        "--steps", type=int, default=10, help="optimizer steps per measurement (warmup included)"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument(
        "--deadline", type=float, default=1e9, help="seconds after which remaining cases are skipped"
    )
    parser.add_argument("--qkvo", action="store_true", help="also the q,k,v,o baseline case")
    parser.add_argument("--only", default="", help="substring filter on lever labels")
    parser.add_argument(
        "--work", default="/tmp/kubetune-bench", help="model directory and data for kubetune runs"
    )
    parser.add_argument("--parity-examples", type=int, default=420)
    parser.add_argument("--parity-lr", type=float, default=1e-3)
    parser.add_argument("--child-timeout", type=float, default=240)
    parser.add_argument("--kt-only", default="", help="'case:variant' names to run, separated by |")
    args = parser.parse_args(argv)
    suites = (
        {"baseline", "levers", "qlora", "kubetune", "parity"}
        if args.suite == "all"
        else set(args.suite.split(","))
    )
    shape = SHAPES[args.shape]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch._dynamo.config.cache_size_limit = 64
    rec = Recorder(args.out, args.shape, [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    print(json.dumps(rec.common["versions"]), flush=True)

    need = args.steps * 16
    data = {
        "dense": make_examples(need * 2, shape, "dense", seed=1),
        "alpaca": make_examples(need * 8 * 2, shape, "alpaca", seed=2),
    }
    t = time.monotonic()
    model = build_model(shape, device)
    print(f"model built in {time.monotonic() - t:.1f}s", flush=True)

    if "baseline" in suites:
        for case, gc_on in baseline_cases(args):
            variant = f"trainer,sdpa,{'gc' if gc_on else 'no-gc'},{'qkvo' if case.targets == tuple(QKVO) else 'all-linear'}"
            guarded(
                rec,
                args.deadline,
                "hf_baseline",
                case,
                variant,
                lambda case=case, gc_on=gc_on: run_hf_baseline(
                    model, case, data[case.data], shape, args, gc_on, args.lr, args.steps, args.warmup
                ),
            )

    parity_train = make_examples(args.parity_examples, shape, "alpaca", seed=3)
    parity_heldout = make_examples(48, shape, "alpaca", seed=4)
    if "parity" in suites:
        case = Case("lora-all-alpaca-parity", "alpaca", "padded", 7)
        guarded(
            rec,
            args.deadline,
            "hf_baseline",
            case,
            "parity: trainer, mb 7 padded, one pass",
            lambda: run_hf_baseline(
                model,
                case,
                parity_train,
                shape,
                args,
                False,
                args.parity_lr,
                len(parity_train) // 7,
                args.warmup,
                heldout=parity_heldout,
            ),
        )

    def lever_run(case: Case):
        from peft import get_peft_model

        why = lv.missing(case.levers)
        if why:
            return rec.add(
                system="lever", case=case.name, variant=case.levers.label(), skipped="; ".join(why)
            )
        liger_patched = case.levers.liger_kernels
        original_rope = None
        if liger_patched:
            from transformers.models.llama import modeling_llama

            original_rope = modeling_llama.apply_rotary_pos_emb
        peft_model = get_peft_model(model, lora_config(case.targets))
        try:
            if liger_patched:
                lv.apply_liger_kernels(peft_model)
            return guarded(
                rec,
                args.deadline,
                "lever",
                case,
                case.levers.label(),
                lambda: run_levers(
                    peft_model, case, data[case.data], shape, args.lr, args.steps, args.warmup
                ),
            )
        finally:
            if liger_patched:
                lv.remove_liger_kernels(peft_model, original_rope)
            peft_model.unload()

    if "levers" in suites and device == "cuda":
        try:
            rec.add(
                system="check",
                case="lora-all-alpaca",
                variant="fast paths vs sdpa/plain CE",
                **check_paths(model, data["alpaca"], shape),
            )
        except Exception as exc:  # noqa: BLE001 - the measurements go on; the error is recorded
            traceback.print_exc()
            rec.add(
                system="check",
                case="lora-all-alpaca",
                variant="fast paths",
                error=f"{type(exc).__name__}: {exc}"[:400],
            )
    if "levers" in suites:
        for case in lever_cases():
            if args.only and args.only not in case.levers.label():
                continue
            lever_run(case)

    work = Path(args.work)
    kt_data: dict[str, Path] = {}
    if {"kubetune", "parity", "issue9"} & suites:
        import gpu_kubetune as kt

        work.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        kt.write_model_dir(model, work / "model")
        for kind in ("dense", "alpaca"):
            kt_data[kind] = kt.write_examples(data[kind][: KT_EXAMPLES[kind]], work / f"{kind}.jsonl")
        if "parity" in suites:
            kt_data["parity"] = kt.write_examples(parity_train, work / "parity.jsonl")
            kt.write_examples(parity_heldout, work / "heldout.jsonl")
        if "issue9" in suites:
            for _, _, _, shape_change in issue9_cases():
                if shape_change:
                    # Same weights, fewer layers: the first N decoder layers of the model in memory.
                    layers = model.model.layers
                    model.model.layers = layers[: shape_change["num_hidden_layers"]]
                    model.config.num_hidden_layers = len(model.model.layers)
                    suffix = "-".join(map(str, shape_change.values()))
                    kt.write_model_dir(model, work / f"model-{suffix}")
                    model.model.layers, model.config.num_hidden_layers = layers, len(layers)
        print(f"model directory and data written in {time.monotonic() - t:.1f}s", flush=True)

    if "qlora" in suites:
        cases = qlora_cases()
        why = lv.missing(cases[0].levers)
        if why:
            for case in cases:
                rec.add(system="lever", case=case.name, variant=case.levers.label(), skipped="; ".join(why))
        else:
            lv.quantize_nf4(model)
            reset_memory()
            print(f"nf4 model: {torch.cuda.memory_allocated() / 2**30:.1f} GiB", flush=True)
            for case in cases:
                lever_run(case)

    model = None  # the kubetune children load their own copy from disk
    reset_memory()
    log = args.out.parent / "kubetune_children.log"
    if {"kubetune", "parity", "issue9"} & suites:
        import gpu_kubetune as kt

    parity_done: list[bool] = []

    def run_parity_child():
        parity_done.append(True)
        case = Case("lora-all-alpaca-parity", "alpaca", "packed", 1)
        config = kt.base_config(
            work / "model",
            kt_data["parity"],
            work,
            "parity",
            steps=1,
            micro_batch=1,
            lr=args.parity_lr,
            seq_len=shape["seq_len"],
        )
        config.update({"torch_compile": device == "cuda", "max_steps": None, "num_epochs": 1})
        spec = {"config": config, "warmup": args.warmup, "heldout": str(work / "heldout.jsonl")}
        guarded(
            rec,
            args.deadline,
            "kubetune",
            case,
            "parity: torch_compile, mb 1 packed row, one epoch",
            lambda: kubetune_row(
                run_child(spec, work, "parity", log, timeout=args.child_timeout),
                shape,
                parity_train,
                "alpaca",
                "parity",
            ),
        )
        parity_report(rec)

    if "kubetune" in suites:
        for index, (name, kind, variant, overrides) in enumerate(kubetune_cases() + extra_kubetune_cases()):
            if args.kt_only and f"{name}:{variant}" not in args.kt_only.split("|"):
                continue
            if index == 4 and "parity" in suites:
                run_parity_child()
            case = Case(name, kind, "packed", overrides.get("micro_batch_size", 2))
            config = kt.base_config(
                work / "model",
                kt_data[kind],
                work,
                f"{name}-{len(rec.rows)}",
                steps=args.steps,
                micro_batch=2,
                lr=args.lr,
                seq_len=shape["seq_len"],
            )
            config.update(overrides)
            if device == "cpu":  # the CPU smoke test checks the wiring, not the compiler
                config["torch_compile"] = False
            spec = {"config": config, "warmup": args.warmup}
            guarded(
                rec,
                args.deadline,
                "kubetune",
                case,
                variant,
                lambda spec=spec, name=name, kind=kind, variant=variant: kubetune_row(
                    run_child(spec, work, f"{name}-{len(rec.rows)}", log, timeout=args.child_timeout),
                    shape,
                    data[kind],
                    kind,
                    variant,
                ),
            )

    if "parity" in suites and not parity_done:
        run_parity_child()

    if "issue9" in suites:
        for name, variant, overrides, shape_change in issue9_cases():
            case = Case(name, "dense", "packed", 2)
            suffix = "-".join(map(str, shape_change.values()))
            model_dir = work / (f"model-{suffix}" if shape_change else "model")
            config = kt.base_config(
                model_dir,
                kt_data["dense"],
                work,
                name,
                steps=args.steps,
                micro_batch=2,
                lr=args.lr,
                seq_len=shape["seq_len"],
            )
            config.update(overrides)
            if config["adapter"] is None:
                for key in ("adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_linear"):
                    config.pop(key)
            spec = {"config": config, "warmup": args.warmup, "torchrun": True}
            guarded(
                rec,
                args.deadline,
                "kubetune",
                case,
                variant,
                lambda spec=spec, name=name, change=shape_change, full=overrides.get("adapter") is None: (
                    kubetune_row(
                        run_child(spec, work, name, log, timeout=args.child_timeout),
                        {**shape, **change},
                        data["dense"],
                        "dense",
                        name,
                        full=full,
                    )
                ),
            )

    print("\n" + rec.table(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
