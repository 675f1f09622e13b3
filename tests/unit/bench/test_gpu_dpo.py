"""bench/gpu_dpo.py (issue 20.6): both systems get the same pairs, tokenized to the same ids, counted the
same way; `--tiny` runs trl's DPOTrainer and kubetune's rl: dpo end to end on CPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))
import gpu_dpo  # noqa: E402


@pytest.fixture(scope="module")
def pairs_and_tokenizer():
    from kubetune.tiny import train_tokenizer

    vocab = gpu_dpo.words(40)
    rows = gpu_dpo.pairs(6, 1 / 16, seed=1, vocab=vocab)
    tokenizer = train_tokenizer([" ".join(vocab)] * 8 + [json.dumps(r) for r in rows], vocab_size=512)
    tokenizer.eos_token = "<|im_end|>"
    return rows, tokenizer


def trl_tokenized(rows, tokenizer, tmp_path):
    """trl's own preparation of the rows (DPOTrainer._prepare_dataset: eos, tokenization, prompt split)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, max_length=None, report_to=[])
    trainer = SimpleNamespace(_tokenizer=tokenizer)
    dataset = Dataset.from_list(gpu_dpo.trl_rows(rows))
    return list(DPOTrainer._prepare_dataset(trainer, dataset, tokenizer, args, "train"))


def kubetune_tokenized(rows, tokenizer):
    """kubetune's chatml.intel type: per row, (ids, labels) of prompt + chosen, then prompt + rejected."""
    from kubetune.data.formats.preference import ChatmlIntel

    examples = ChatmlIntel(tokenizer, {}).tokenize_rows(rows)
    offsets = examples.offsets
    return [
        (
            examples.input_ids[offsets[k] : offsets[k + 1]].tolist(),
            examples.labels[offsets[k] : offsets[k + 1]].tolist(),
        )
        for k in range(len(offsets) - 1)
    ]


def test_both_systems_train_the_same_token_ids(pairs_and_tokenizer, tmp_path):
    rows, tokenizer = pairs_and_tokenizer
    ours = kubetune_tokenized(rows, tokenizer)
    theirs = trl_tokenized(rows, tokenizer, tmp_path)
    for k, trl_row in enumerate(theirs):
        for side, (ids, labels) in zip(("chosen", "rejected"), ours[2 * k : 2 * k + 2], strict=True):
            prompt = [i for i, label in zip(ids, labels, strict=True) if label == -100]
            completion = [i for i, label in zip(ids, labels, strict=True) if label != -100]
            assert prompt == trl_row["prompt_ids"], (k, side)
            assert completion == trl_row[f"{side}_ids"], (k, side)
            assert completion[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_pair_tokens_count_prompt_chosen_and_rejected_once_in_both_layouts(pairs_and_tokenizer, tmp_path):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    rows, tokenizer = pairs_and_tokenizer
    theirs = trl_tokenized(rows, tokenizer, tmp_path)
    expected = sum(len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in theirs)
    forward = expected + sum(len(r["prompt_ids"]) for r in theirs)

    trl_count = gpu_dpo.PairTokens(
        DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id), "completion_mask"
    )
    trl_count([{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in theirs])
    assert trl_count.counts == [(expected, forward)]

    # kubetune's layout: one row per pair, chosen then rejected packed, padded to the longest row.
    ours = kubetune_tokenized(rows, tokenizer)
    packed = [
        (ours[2 * k][0] + ours[2 * k + 1][0], ours[2 * k][1] + ours[2 * k + 1][1]) for k in range(len(rows))
    ]
    width = max(len(ids) for ids, _ in packed) + 3
    batch = {
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in packed]),
        "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in packed]),
    }
    ours_count = gpu_dpo.PairTokens(lambda rows: batch, "labels")
    ours_count(rows)
    assert ours_count.counts == [(expected, forward)]


@pytest.mark.slow
def test_tiny_run_measures_trl_and_kubetune_and_their_ratio(tmp_path):
    out = tmp_path / "dpo.jsonl"
    command = [sys.executable, str(BENCH / "gpu_dpo.py"), "--tiny", "--cases", "1", "--out", str(out)]
    command += ["--work", str(tmp_path / "work"), "--steps", "3", "--warmup", "1", "--micro-batch", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["system"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"trl", "kubetune", "ratio"}, rows
    for system in ("trl", "kubetune"):
        row = rows[system]
        assert row["case"] == "dpo-lora" and row["steps"] == 3 and len(row["losses"]) == 3
        assert row["tokens_per_s"] > 0 and row["timed_tokens"] > 0
        assert row["batches_collated"] in (3, 4)  # the counts are those of the trained steps, in order
        # a fresh adapter: the policy is the reference, so the first loss is ln 2 in both
        assert row["first_loss"] == pytest.approx(math.log(2), abs=1e-3)
        assert 40 < row["tokens_per_pair"] < 200  # prompt ~12, answers 9-19 words of ~1-3 tokens
    assert rows["ratio"]["speedup"] == pytest.approx(
        rows["kubetune"]["tokens_per_s"] / rows["trl"]["tokens_per_s"]
    )
    assert "trl" in done.stdout and "kubetune" in done.stdout  # the printed table


def test_runs_that_cannot_start_within_the_budget_are_recorded_as_skipped(tmp_path):
    out = tmp_path / "dpo.jsonl"
    command = [sys.executable, str(BENCH / "gpu_dpo.py"), "--tiny", "--cases", "1", "--out", str(out)]
    command += ["--work", str(tmp_path / "work"), "--budget", "1", "--min-child-s", "60"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["system"], r["skipped"].startswith("time budget spent")) for r in rows] == [
        ("trl", True),
        ("kubetune", True),
    ]
