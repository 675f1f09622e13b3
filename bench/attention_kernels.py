"""Attention kernels for packed rows on one GPU: torch's varlen FlashAttention-2 against its cuDNN path.

    python bench/attention_kernels.py --out bench/results/attention_kernels.jsonl

torch 2.11's `torch.nn.attention.varlen.varlen_attn` holds two implementations, FlashAttention-2
(used) and cuDNN (present but switched off by a private predicate). On the Llama-3-8B shape (32 query
heads, 8 key/value heads, head_dim 128, two 2048-token rows) this times forward + backward of each, on
one sequence per row (dense) and on packed alpaca-like documents, and checks both against a float32
reference with a block-diagonal causal mask (a boundary leak is an O(1) error, bf16 rounding ~1e-2).
SDPA's cuDNN backend on the dense rows is timed alongside: the same kernel family, no packing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HEADS, KV_HEADS, DIM, ROWS, WIDTH = 32, 8, 128, 2, 2048


def segments(kind: str, seed: int) -> list[int]:
    """Document lengths filling ROWS rows of WIDTH tokens (each row's documents end at its edge)."""
    if kind == "dense":
        return [WIDTH] * ROWS
    generator = torch.Generator().manual_seed(seed)
    lengths = []
    for _ in range(ROWS):
        left = WIDTH
        while left > 0:
            n = int(torch.empty(1).log_normal_(5.4, 0.7, generator=generator).clamp(16, 2048))
            lengths.append(min(n, left))
            left -= lengths[-1]
    return lengths


def cu_seqlens(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")


def use_cudnn(on: bool) -> None:
    import torch.nn.attention.varlen as varlen

    varlen._should_use_cudnn = (lambda index: True) if on else (lambda index: False)


def varlen_fwd_bwd(q, k, v, cu, grad):
    from torch.nn.attention.varlen import varlen_attn

    out = varlen_attn(q, k, v, cu, cu, WIDTH, WIDTH, window_size=(-1, 0))
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    return out, dq, dk, dv


def reference(q, k, v, lengths, grad):
    """float32 SDPA with a block-diagonal causal mask over the flat stream, GQA by repetition."""
    total = q.shape[0]
    doc = torch.repeat_interleave(
        torch.arange(len(lengths), device="cuda"), torch.tensor(lengths, device="cuda")
    )
    pos = torch.arange(total, device="cuda")
    mask = (doc[:, None] == doc[None, :]) & (pos[:, None] >= pos[None, :])
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    rep = HEADS // KV_HEADS
    out = F.scaled_dot_product_attention(
        q32.transpose(0, 1)[None],
        k32.repeat_interleave(rep, dim=1).transpose(0, 1)[None],
        v32.repeat_interleave(rep, dim=1).transpose(0, 1)[None],
        attn_mask=mask,
    )[0].transpose(0, 1)
    dq, dk, dv = torch.autograd.grad(out, (q32, k32, v32), grad.float())
    return out, dq, dk, dv


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def timed(fn, iters: int) -> float:
    """Median milliseconds of fn() over iters runs (CUDA events, after 3 warm-up runs)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def attention_flops(lengths: list[int]) -> float:
    """Causal forward + backward FLOPs: 4·L²·D·H/2 forward per document, backward 2.5× forward."""
    return sum(3.5 * 4 * n * n * DIM * HEADS / 2 for n in lengths)


def measure(kind: str, common: dict, iters: int) -> list[dict]:
    """Rows for one document layout: each varlen kernel, and on dense rows SDPA's flash and cuDNN."""
    lengths = segments(kind, seed=0)
    total = sum(lengths)
    cu = cu_seqlens(lengths)
    torch.manual_seed(0)
    q = torch.randn(total, HEADS, DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(total, KV_HEADS, DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(total, KV_HEADS, DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(total, HEADS, DIM, device="cuda", dtype=torch.bfloat16)
    truth = reference(q, k, v, lengths, grad)
    flops = attention_flops(lengths)

    def record(case: str, kernel: str, step, to_flat) -> dict:
        row = {**common, "case": case, "kernel": kernel, "documents": len(lengths)}
        try:
            got = to_flat(step())
            names = ("out", "dq", "dk", "dv")
            row["rel_err"] = {n: rel(g, t) for n, g, t in zip(names, got, truth, strict=True)}
            ms = timed(step, iters)
            row.update(fwd_bwd_ms=ms, tflops=flops / ms / 1e9)
        except (RuntimeError, NotImplementedError) as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
        print(json.dumps(row), flush=True)
        return row

    rows = []
    for kernel in ("flash", "cudnn"):
        use_cudnn(kernel == "cudnn")
        rows.append(record(f"varlen-{kind}", kernel, lambda: varlen_fwd_bwd(q, k, v, cu, grad), list))
    use_cudnn(False)
    if kind != "dense":
        return rows
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qb, kb, vb = (t.detach().view(ROWS, WIDTH, -1, DIM).transpose(1, 2).requires_grad_() for t in (q, k, v))
    gb = grad.view(ROWS, WIDTH, HEADS, DIM).transpose(1, 2)

    def flat(result):
        return [t.transpose(1, 2).reshape(total, -1, DIM) for t in result]

    for name, backend in (
        ("sdpa-flash", SDPBackend.FLASH_ATTENTION),
        ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
    ):

        def step(backend=backend):
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, enable_gqa=True)
            return out, *torch.autograd.grad(out, (qb, kb, vb), gb)

        rows.append(record("sdpa-dense", name, step, flat))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/attention_kernels.jsonl"))
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    common = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", *sys.argv]),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "gpu": torch.cuda.get_device_name(),
    }
    rows = []
    for kind in ("dense", "packed"):
        rows += measure(kind, common, args.iters)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
