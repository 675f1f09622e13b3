"""Shared pieces of the GPU benchmark (bench/gpu_throughput.py): the model shapes and their FLOPs, the
synthetic data and its batching, the cases, and the JSON-lines recorder."""

from __future__ import annotations

import gc
import json
import math
import platform
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import gpu_levers as lv
import numpy as np
import torch

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


@dataclass(frozen=True)
class Case:
    name: str  # the case name, e.g. lora-all-dense
    data: str  # dense | alpaca
    layout: str  # padded | packed
    micro_batch: int
    targets: tuple = tuple(ALL_LINEAR)
    levers: lv.Levers = lv.Levers()


def batches_for(case: Case, examples: list[Example], shape: dict) -> list[dict]:
    mb = case.micro_batch
    if case.layout == "packed":
        rows = pack_rows(examples, shape["seq_len"])
        return [packed_batch(rows[i : i + mb], shape["seq_len"]) for i in range(0, len(rows) - mb + 1, mb)]
    return [pad_batch(examples[i : i + mb]) for i in range(0, len(examples) - mb + 1, mb)]


def attended_length(examples: list[Example], kind: str, shape: dict) -> float:
    return float(shape["seq_len"]) if kind == "dense" else float(np.mean([len(e.ids) for e in examples]))


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
        row = {**self.common, **row, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.rows.append(row)
        with self.path.open("a") as fh:  # appended line by line so a killed run keeps what it measured
            fh.write(json.dumps(row) + "\n")
        print(f"[{time.monotonic() - START:6.0f}s] {self.line(row)}", flush=True)
        return row

    def line(self, row: dict) -> str:
        """How a row is printed as it is recorded (a suite with other fields overrides it)."""
        return summary_line(row)

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


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())
