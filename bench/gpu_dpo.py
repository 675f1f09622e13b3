"""DPO with LoRA on one GPU: kubetune's `rl: dpo` side by side with trl's DPOTrainer + peft (issue 20.6).

The same random-weight model (the Llama-3-8B shape, bf16, written once as a model directory with a
locally trained ChatML tokenizer whose eos is `<|im_end|>`), the same synthetic preference pairs
(prompt ~200 tokens, chosen / rejected 150-300 tokens each), the same micro-batch, LoRA (all linear,
r 16, alpha 32, no dropout), beta 0.1, sigmoid loss, AdamW (fused), constant learning rate, gradient
clipping at 1.0; the reference is the base with the adapter disabled in both. Each run is a child
process, so its peak GPU memory is its own:

    python bench/gpu_dpo.py                      # the 8B shape on the GPU, appends bench/results/gpu_dpo.jsonl
    python bench/gpu_dpo.py --tiny --out /tmp/dpo.jsonl    # 2-layer model, a few steps, on CPU

kubetune's pairs are `chatml.intel` rows trained through kubetune.train.loop.setup + train_loop; trl
gets the same rows as a datasets.Dataset of prompt (the same ChatML text) / chosen / rejected strings.
Tokens are counted the same way for both, from the batches each system collates: per pair, prompt +
chosen + rejected non-pad tokens (the prompt once; `forward_tokens_per_s` counts it on both sides, as
the two forwards see it). The first `--warmup` optimizer steps are not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import ALL_LINEAR, SHAPES, START, Recorder, build_model, lora_config  # noqa: E402


class DpoRecorder(Recorder):
    """The harness's JSON-lines recorder, printing this benchmark's own line per row."""

    def __init__(self, *args, **kwargs):
        import importlib.metadata as md

        super().__init__(*args, **kwargs)
        for name in ("trl", "datasets"):
            try:
                self.common["versions"][name] = md.version(name)
            except md.PackageNotFoundError:  # trl's runs then record the import error; kubetune's still run
                self.common["versions"][name] = None

    def line(self, row: dict) -> str:
        return row_line(row)


BETA = 0.1
# (case, variant, gradient checkpointing in both systems, kubetune-only config overrides)
CASES = [
    ("dpo-lora", "no gc", False, {}),
    ("dpo-lora-gc", "gc (trl's default)", True, {}),
    ("dpo-lora", "torch_compile, no gc", False, {"torch_compile": True}),
]
PROMPT_TOKENS, COMPLETION_TOKENS = (200, 60, 120, 300), (150, 300)  # prompt: mean, sd, min, max


def words(count: int) -> list[str]:
    """Pseudo-words, most of them one token of the trained tokenizer (text lengths ~ token lengths)."""
    rng = np.random.default_rng(7)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return sorted({"".join(rng.choice(letters, size=rng.integers(4, 8))) for _ in range(count)})


def pairs(count: int, scale: float, seed: int, vocab: list[str]) -> list[dict]:
    """chatml.intel rows: a system line, a question of ~200 words, chosen / rejected of 150-300 words
    (times `scale`)."""
    rng = np.random.default_rng(seed)
    mean, sd, low, high = (max(4, round(x * scale)) for x in PROMPT_TOKENS)
    c_low, c_high = (max(4, round(x * scale)) for x in COMPLETION_TOKENS)

    def text(n: int) -> str:
        return " ".join(rng.choice(vocab, size=int(n)))

    rows = []
    for _ in range(count):
        prompt_len = int(np.clip(rng.normal(mean, sd), low, high))
        rows.append(
            {
                "system": "You are a helpful assistant.",
                "question": text(prompt_len),
                "chosen": text(rng.integers(c_low, c_high + 1)),
                "rejected": text(rng.integers(c_low, c_high + 1)),
            }
        )
    return rows


def trl_rows(rows: list[dict]) -> list[dict]:
    """The same pairs as trl's standard (non-conversational) preference rows: kubetune's chatml.intel
    prompt text, and each answer with its end-of-turn (the tokenizer's eos, so trl adds nothing)."""
    out = []
    for row in rows:
        prompt = f"<|im_start|>system\n{row['system']}<|im_end|>\n"
        prompt += f"<|im_start|>user\n{row['question']}<|im_end|>\n<|im_start|>assistant\n"
        out.append(
            {
                "prompt": prompt,
                "chosen": row["chosen"] + "<|im_end|>",
                "rejected": row["rejected"] + "<|im_end|>",
            }
        )
    return out


def write_model_dir(shape: dict, path: Path, device: str, vocab: list[str]) -> None:
    from kubetune.tiny import train_tokenizer

    if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        print(f"model directory {path} exists: reused", flush=True)
        return
    t = time.monotonic()
    model = build_model(shape, device)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, max_shard_size="5GB")
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    corpus = [" ".join(vocab)] * 8 + [json.dumps(r) for r in pairs(64, 0.1, seed=99, vocab=vocab)]
    tokenizer = train_tokenizer(corpus, vocab_size=min(4096, shape["vocab_size"]))
    tokenizer.eos_token = "<|im_end|>"  # a ChatML model's eos, as trl appends eos to each answer
    tokenizer.save_pretrained(path)
    print(f"model directory written in {time.monotonic() - t:.1f}s", flush=True)


def kubetune_config(spec: dict) -> dict:
    return {
        "base_model": spec["model_dir"],
        "rl": "dpo",
        "rl_beta": BETA,
        "dpo_loss_type": "sigmoid",
        "datasets": [{"path": spec["data"], "type": "chatml.intel"}],
        "dataset_prepared_path": str(Path(spec["work"]) / "prepared"),
        "output_dir": str(Path(spec["work"]) / f"out-{spec['name']}"),
        "sequence_len": spec["seq_len"],
        "sample_packing": False,
        "adapter": "lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "lora_target_linear": True,
        "micro_batch_size": spec["micro_batch"],
        "gradient_accumulation_steps": 1,
        "gradient_checkpointing": spec["gc"],
        "max_steps": spec["steps"],
        "learning_rate": spec["lr"],
        "lr_scheduler": "constant",
        "optimizer": "adamw_torch_fused",
        "max_grad_norm": 1.0,
        "bf16": spec["bf16"],
        "logging_steps": 1,
        "save_steps": 1_000_000,
        "seed": 0,
        **spec["overrides"],
    }


class PairTokens:
    """Wraps a collate function: records each batch's prompt + chosen + rejected non-pad tokens and its
    non-pad tokens of both forwards, in collation order (batch i = optimizer step i + 1)."""

    def __init__(self, collate, completion_key: str):
        self.collate, self.completion_key, self.counts = collate, completion_key, []

    def __call__(self, rows):
        batch = self.collate(rows)
        both = int(batch["attention_mask"].sum())
        completion = batch[self.completion_key]
        trained = int((completion != -100).sum() if self.completion_key == "labels" else completion.sum())
        # both sides hold the prompt: both = 2 prompt + chosen + rejected, trained = chosen + rejected
        self.counts.append(((both + trained) // 2, both))
        return batch


def timed(marks: list[tuple[float, float]], counts: list[tuple[int, int]], warmup: int) -> dict:
    """marks[i] = (time, loss) at the end of step i + 1; counts[i] = tokens of step i + 1's batch."""
    steps = len(marks)
    seconds = marks[-1][0] - marks[warmup - 1][0]
    pair_tokens = sum(c[0] for c in counts[warmup:steps])
    forward_tokens = sum(c[1] for c in counts[warmup:steps])
    cuda = torch.cuda.is_available()
    return {
        "steps": steps,
        "warmup": warmup,
        "timed_seconds": seconds,
        "timed_tokens": pair_tokens,
        "tokens_per_s": pair_tokens / seconds,
        "forward_tokens_per_s": forward_tokens / seconds,
        "tokens_per_step": pair_tokens / (steps - warmup),
        "batches_collated": len(counts),  # steps, or one more where the next batch is collated ahead
        "losses": [m[1] for m in marks],
        "first_loss": marks[0][1],
        "final_loss": marks[-1][1],
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else 0.0,
    }


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def run_kubetune(spec: dict) -> dict:
    from kubetune.config import load_config
    from kubetune.train import loop
    from kubetune.train.progress import Reporters

    stop = loop.StopFlag()
    started = time.perf_counter()
    run = loop.setup(load_config(kubetune_config(spec)), stop)
    setup_s = time.perf_counter() - started
    run.collate = counter = PairTokens(run.collate, "labels")
    marks: list[tuple[float, float]] = []

    class Marks:  # called once the step's loss has reached the host
        def report(self, progress, force=False):
            if progress.event == "train":
                marks.append((time.perf_counter(), progress.loss))

        def close(self):
            pass

    run.reporters = Reporters([Marks()])
    reset_peak()
    loop.train_loop(run, stop)
    return {**timed(marks, counter.counts, spec["warmup"]), "setup_s": setup_s, "attention": run.backend.name}


def run_trl(spec: dict) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    cuda = torch.cuda.is_available()
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        spec["model_dir"],
        dtype=torch.bfloat16 if spec["bf16"] else torch.float32,
        attn_implementation="sdpa",
        device_map={"": 0} if cuda else None,
    )
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines()]
    args = DPOConfig(
        output_dir=str(Path(spec["work"]) / f"out-{spec['name']}"),
        per_device_train_batch_size=spec["micro_batch"],
        gradient_accumulation_steps=1,
        gradient_checkpointing=spec["gc"],
        max_steps=spec["steps"],
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        optim="adamw_torch_fused",
        max_grad_norm=1.0,
        bf16=spec["bf16"],
        use_cpu=not cuda,
        beta=BETA,
        loss_type=["sigmoid"],
        max_length=None,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(trl_rows(rows)),
        processing_class=tokenizer,
        peft_config=lora_config(ALL_LINEAR),
    )
    trainer.data_collator = counter = PairTokens(trainer.data_collator, "completion_mask")
    times: list[float] = []
    losses: list[float] = []

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer.add_callback(Marks())
    setup_s = time.perf_counter() - started
    reset_peak()
    trainer.train()
    return {
        **timed(list(zip(times, losses, strict=True)), counter.counts, spec["warmup"]),
        "setup_s": setup_s,
    }


def child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result = run_trl(spec) if spec["system"] == "trl" else run_kubetune(spec)
    print("DPO_RESULT " + json.dumps(result), flush=True)
    return 0


def run_child(spec: dict, work: Path, log: Path, timeout: float) -> dict:
    spec_path = work / f"spec-{spec['name']}.json"
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, "-u", str(Path(__file__).resolve()), "--child", str(spec_path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    lines: list[str] = []
    with (
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        ) as proc,
        log.open("a") as fh,
    ):
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        fh.write(f"===== {spec['name']}\n")
        for line in proc.stdout:  # streamed: the device call's output shows progress as it comes
            fh.write(line)
            lines.append(line)
            if line.strip() and not line.startswith(("DPO_RESULT ", "Loading weights")):
                print(f"  [{spec['system']}] {line.rstrip()[:200]}", flush=True)
        rc = proc.wait()
        timer.cancel()
        if rc == -9:
            lines.append(f"killed: ran past --child-timeout ({timeout:.0f}s) or out of memory\n")
    for line in lines:
        if line.startswith("DPO_RESULT "):
            return json.loads(line.removeprefix("DPO_RESULT "))
    tail = [x.strip() for x in lines if x.strip()][-3:]
    raise RuntimeError(f"{spec['system']} child rc={rc}: {' | '.join(tail)}")


def row_line(r: dict) -> str:
    head = f"{r['system']:9} {r['case']:12} {r['variant']:32}"
    if r.get("error") or r.get("skipped"):
        return f"{head} -- {r.get('error') or r['skipped']}"
    if r["system"] == "ratio":
        memory = "n/a" if r["memory_ratio"] is None else f"{r['memory_ratio']:.2f}x"
        return f"{head} {r['speedup']:8.2f}x {memory:>9} target met: {r['target_met']}"
    return f"{head} {r['tokens_per_s']:9.0f} {r['peak_mem_gib']:9.1f} {r['first_loss']:7.3f} -> {r['final_loss']:.3f}"


def add_ratio(rec: Recorder, case: str, variant: str, cuda: bool) -> None:
    """kubetune's run of this case and variant against trl's run of the same case."""
    measured = [r for r in rec.rows if r["case"] == case and "tokens_per_s" in r]
    trl = next((r for r in measured if r["system"] == "trl"), None)
    ours = next((r for r in measured if r["system"] == "kubetune" and r["variant"] == variant), None)
    if not (trl and ours):
        return
    rec.add(
        system="ratio",
        case=case,
        variant=f"kubetune {variant} / trl {trl['variant']}",
        speedup=ours["tokens_per_s"] / trl["tokens_per_s"],
        memory_ratio=ours["peak_mem_gib"] / trl["peak_mem_gib"] if cuda else None,
        # issue 20.6: at least 1.5x trl's tokens/s at no more than trl's peak memory (GPU only)
        target_met=(
            ours["tokens_per_s"] >= 1.5 * trl["tokens_per_s"] and ours["peak_mem_gib"] <= trl["peak_mem_gib"]
        )
        if cuda
        else None,
    )


def summary(rec: Recorder) -> str:
    header = f"{'system':9} {'case':12} {'variant':32} {'tok/s':>9} {'peak GiB':>9} loss first -> last"
    return "\n".join([header, *(row_line(r) for r in rec.rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="2-layer tiny model, a few steps (CPU smoke run)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_dpo.jsonl"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/kubetune-bench-dpo"))
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (warmup included)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--micro-batch", type=int, default=4, help="pairs per optimizer step")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--cases", type=int, default=None, help="run only the first N cases")
    parser.add_argument(
        "--budget", type=float, default=510, help="seconds for the whole run: a child is killed when it ends"
    )
    parser.add_argument(
        "--min-child-s",
        type=float,
        default=60,
        help="a run is skipped when less than this is left of --budget",
    )
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)

    shape_name = "tiny" if args.tiny else "8b"
    shape = SHAPES[shape_name]
    steps = args.steps or (4 if args.tiny else 12)
    warmup = args.warmup or (2 if args.tiny else 4)
    cuda = torch.cuda.is_available()
    rec = DpoRecorder(args.out, shape_name, [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    print(json.dumps(rec.common["versions"]), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.work / f"model-{shape_name}"
    # The tiny tokenizer (512 ids) learns few words whole; lengths are 1/16 of the 8B run's.
    vocab = words(40 if args.tiny else 400)
    write_model_dir(shape, model_dir, "cuda" if cuda else "cpu", vocab)
    data = args.work / f"pairs-{shape_name}.jsonl"
    rows = pairs(args.micro_batch * steps * 2, 1 / 16 if args.tiny else 1.0, seed=1, vocab=vocab)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = args.work / "children.log"
    common = {
        "model_dir": str(model_dir),
        "data": str(data),
        "work": str(args.work),
        "seq_len": 256 if args.tiny else shape["seq_len"],
        "micro_batch": args.micro_batch,
        "steps": steps,
        "warmup": warmup,
        "lr": args.lr,
        "bf16": cuda,
    }
    for index, (case, variant, gc_on, overrides) in enumerate(CASES[: args.cases]):
        systems = ["trl", "kubetune"] if not overrides else ["kubetune"]  # overrides: kubetune's levers
        for system in systems:
            label = {"system": system, "case": case, "variant": variant}
            left = args.budget - (time.monotonic() - START)
            if left < args.min_child_s:
                rec.add(**label, skipped=f"time budget spent ({left:.0f}s of --budget left)")
                continue
            spec = {**common, "system": system, "name": f"{system}-{index}", "gc": gc_on}
            spec["overrides"] = overrides if system == "kubetune" else {}
            try:
                result = run_child(spec, args.work, log, left)
            except Exception as exc:  # noqa: BLE001 - one failing run must not lose the others
                traceback.print_exc()
                rec.add(**label, error=f"{type(exc).__name__}: {exc}"[:400])
                continue
            rec.add(
                **label,
                micro_batch=args.micro_batch,
                gradient_checkpointing=gc_on,
                tokens_per_pair=result["tokens_per_step"] / args.micro_batch,
                **result,
            )
        add_ratio(rec, case, variant, cuda)
    print(summary(rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
