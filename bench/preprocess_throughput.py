#!/usr/bin/env python3
"""Preprocessing throughput: kubetune's batched pipeline against a naive per-row baseline, same run.

    .venv/bin/python bench/preprocess_throughput.py [--examples 40000] [--baseline-examples 10000] [--record]

Both paths turn the same alpaca rows into the same packed training rows (checked): tokenize,
mask (labels -100 outside the response), drop over-long examples, pack into sequence_len rows
and build the arrow-backed dataset. Loading the file is not timed; the tokenizer is trained
locally (no hub) on English prose from Python's own documentation, which the rows are made of.

  naive:    the tokenizer called per row (prompt, then response), Python lists for ids/labels/
            positions, the rows built by list concatenation, Dataset.from_dict.
  kubetune: kubetune.data (Alpaca segments tokenized in batches by the Rust tokenizer, the fixed
            prompt opening's tokens reused where provably exact, identical texts encoded once per
            batch, numpy masking and gathering, best-fit-decreasing packing, arrow arrays from numpy).
With --record, appends one JSON line to bench/results/preprocess_throughput.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "preprocess_throughput.jsonl"


def english_sentences() -> list[str]:
    """Real English sentences, offline: the text of Python's `help()` topics."""
    import pydoc_data.topics

    text = " ".join(" ".join(pydoc_data.topics.topics.values()).split())
    sentences = re.split(r"(?<=[.!?])\s+", text)
    return [s for s in sentences if 3 <= len(s.split()) <= 60]


def alpaca_rows(count: int, sentences: list[str], seed: int = 0) -> list[dict[str, str]]:
    """Rows the size of tatsu-lab/alpaca's: its card gives 52,002 rows and 47.7 MB over the
    instruction, input, output and text (= the whole prompt) columns, i.e. about 350 characters
    of instruction + input + output per row. Here: a short one-sentence instruction, an input on
    40% of rows, and a response of whole sentences up to a lognormal length (mean 240 characters)."""
    rng = np.random.default_rng(seed)
    short = [s for s in sentences if len(s) <= 110]
    has_input = rng.random(count) < 0.4
    response_chars = rng.lognormal(np.log(270) - 0.245, 0.7, count)
    rows = []
    for k in range(count):
        response, length = [], 0
        while True:  # whole sentences, the first always, then while they fit
            sentence = sentences[rng.integers(len(sentences))]
            if response and length + len(sentence) > response_chars[k]:
                break
            response.append(sentence)
            length += len(sentence) + 1
        rows.append(
            {
                "instruction": short[rng.integers(len(short))],
                "input": sentences[rng.integers(len(sentences))] if has_input[k] else "",
                "output": " ".join(response),
            }
        )
    return rows


def prompt_and_response(row: dict[str, str]) -> tuple[str, str]:
    from kubetune.data.formats.instruct import ALPACA_NO_INPUT, ALPACA_WITH_INPUT

    if row["input"]:
        return ALPACA_WITH_INPUT.format(instruction=row["instruction"], input=row["input"]), row["output"]
    return ALPACA_NO_INPUT.format(instruction=row["instruction"]), row["output"]


def naive(rows, tokenizer, sequence_len: int):
    """The straightforward way: one tokenizer call per piece per row, Python lists throughout."""
    import datasets
    from kubetune.data import pack_lengths

    examples = []
    for row in rows:
        prompt, _ = prompt_and_response(row)
        prompt_ids = tokenizer(prompt)["input_ids"]
        response_ids = tokenizer(row["output"], add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        input_ids = prompt_ids + response_ids
        labels = [-100] * len(prompt_ids) + response_ids
        labels[0] = -100
        if len(input_ids) <= sequence_len:
            examples.append((input_ids, labels))
    bins = pack_lengths(np.array([len(ids) for ids, _ in examples]), sequence_len)
    packed = {"input_ids": [], "labels": [], "position_ids": [], "seq_lens": []}
    for members in bins:
        input_ids, labels, positions, seq_lens = [], [], [], []
        for index in members:
            ids, example_labels = examples[index]
            input_ids += ids
            labels += example_labels
            positions += list(range(len(ids)))
            seq_lens.append(len(ids))
        for name, value in zip(packed, (input_ids, labels, positions, seq_lens), strict=True):
            packed[name].append(value)
    return datasets.Dataset.from_dict(packed), examples


def fast(dataset, tokenizer, sequence_len: int, num_proc: int = 1):
    from kubetune.data.formats.instruct import Alpaca
    from kubetune.data.pipeline import drop_unusable, to_rows
    from kubetune.data.tokenizing import tokenize_dataset

    examples = tokenize_dataset(dataset, Alpaca(tokenizer, {}), "datasets[0]", num_proc=num_proc)
    examples, _, _ = drop_unusable(examples, sequence_len)
    rows, stats = to_rows(examples, sequence_len, packed=True, seed=0)
    return rows, stats, examples


def tokenizer_only(texts, tokenizer):
    """The batched Rust tokenizer over every whole prompt and response string: the floor of a pipeline
    that encodes each row's text in full (kubetune now encodes the fixed prompt opening once and
    identical texts once per batch, so it can beat this; docs/data.md, Speed)."""
    from kubetune.data.formats.base import encode_texts

    return encode_texts(tokenizer, texts)


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the tokenizing workers), all threads."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measured(fn, *args):
    """(wall seconds, CPU seconds, result). On a shared machine the wall time depends on the
    neighbours' load; the CPU time much less."""
    cpu = cpu_seconds()
    wall, result = timed(fn, *args)
    return wall, cpu_seconds() - cpu, result


def versions() -> dict[str, str]:
    import datasets
    import pyarrow
    import tokenizers
    import transformers

    return {
        "python": platform.python_version(),
        "tokenizers": tokenizers.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
    }


def machine() -> dict[str, object]:
    model = ""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor()
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=40_000, help="rows for the kubetune path")
    parser.add_argument("--baseline-examples", type=int, default=10_000, help="rows for the naive path")
    parser.add_argument("--sequence-len", type=int, default=2048)
    parser.add_argument("--vocab-size", type=int, default=16_000)
    parser.add_argument(
        "--num-proc", type=int, default=None, help="dataset_num_proc (default: the pipeline's)"
    )
    parser.add_argument(
        "--record", action="store_true", help=f"append the result to {RESULTS.relative_to(REPO)}"
    )
    args = parser.parse_args(argv)

    import datasets
    from kubetune.tiny import train_tokenizer

    datasets.disable_progress_bars()
    sentences = english_sentences()
    rows = alpaca_rows(args.examples, sentences)
    tokenizer = train_tokenizer(sentences, vocab_size=args.vocab_size)
    dataset = datasets.Dataset.from_list(rows)

    # Same inputs, same outputs: the baseline's examples are kubetune's (order aside).
    baseline_rows = rows[: args.baseline_examples]
    _, (_, naive_examples) = timed(naive, baseline_rows[:2000], tokenizer, args.sequence_len)
    _, (_, _, fast_examples) = timed(fast, dataset.select(range(2000)), tokenizer, args.sequence_len)
    fast_list = [
        (fast_examples.input_ids[s:e].tolist(), fast_examples.labels[s:e].tolist())
        for s, e in zip(fast_examples.offsets[:-1], fast_examples.offsets[1:], strict=True)
    ]
    if sorted(fast_list) != sorted(naive_examples):
        print("kubetune and the baseline disagree on the tokens", file=sys.stderr)
        return 1

    naive_s, naive_cpu, _ = measured(naive, baseline_rows, tokenizer, args.sequence_len)
    from kubetune.data.pipeline import num_proc

    processes = num_proc(args.num_proc)  # the pipeline's own default when unset
    one_s, one_cpu, _ = measured(fast, dataset, tokenizer, args.sequence_len, 1)
    fast_s, fast_cpu, (_, stats, _) = measured(fast, dataset, tokenizer, args.sequence_len, processes)
    texts = [segment for row in rows for segment in prompt_and_response(row)]
    ceiling_s, ceiling_cpu, _ = measured(tokenizer_only, texts, tokenizer)
    naive_rate = len(baseline_rows) / naive_s
    fast_rate = args.examples / fast_s
    result = {
        "benchmark": "preprocess_throughput",
        "command": "python bench/preprocess_throughput.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _git_commit(),
        "machine": machine(),
        "versions": versions(),
        "tokenizer": {"kind": "byte-level BPE trained locally", "vocab_size": len(tokenizer)},
        "sequence_len": args.sequence_len,
        "examples": args.examples,
        "baseline_examples": len(baseline_rows),
        "mean_tokens_per_example": stats["mean_example_len"],
        "packing_efficiency": stats["packing_efficiency"],
        "kubetune_examples_per_s": round(fast_rate),
        "kubetune_tokens_per_s": round(stats["tokens"] / fast_s),
        "num_proc": processes,
        "kubetune_one_process_examples_per_s": round(args.examples / one_s),
        "naive_examples_per_s": round(naive_rate),
        "speedup": round(fast_rate / naive_rate, 2),
        "tokenizer_only_examples_per_s": round(args.examples / ceiling_s),
        "examples_per_cpu_s": {
            "kubetune": round(args.examples / fast_cpu),
            "kubetune_one_process": round(args.examples / one_cpu),
            "naive": round(len(baseline_rows) / naive_cpu),
            "tokenizer_only": round(args.examples / ceiling_cpu),
        },
        "load_average_1m": os.getloadavg()[0],
        "target_examples_per_s": 20_000,
        "meets_target": fast_rate >= 20_000,
    }
    print(
        f"kubetune: {fast_rate:,.0f} examples/s ({args.examples} examples in {fast_s:.2f}s, {processes} processes, "
        f"{result['kubetune_tokens_per_s']:,} tokens/s, mean {stats['mean_example_len']:.0f} tokens/example)\n"
        f"naive:    {naive_rate:,.0f} examples/s ({len(baseline_rows)} examples in {naive_s:.2f}s)\n"
        f"kubetune, one process: {args.examples / one_s:,.0f} examples/s\n"
        f"tokenizer alone (batched, same prompt and response strings): {args.examples / ceiling_s:,.0f} examples/s\n"
        f"per CPU-second: {result['examples_per_cpu_s']}\n"
        f"speedup:  {result['speedup']}x   packing efficiency {stats['packing_efficiency']:.2%}   "
        f"on {result['machine']['cores']} cores   target 20,000/s: {'met' if result['meets_target'] else 'MISSED'}"
    )
    if args.record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
