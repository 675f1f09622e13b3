"""Acceptance: `kubetune train` with rl: dpo / orpo / simpo / kto on the tiny Llama learns a preference
set it can learn (chosen = the right answer of the tiny tasks, rejected = a wrong one)."""

from __future__ import annotations

import json

import pytest
import torch
from kubetune.cli import main as cli
from kubetune.tiny import preference_rows, write_jsonl

from .test_runs import LORA, start, wait_for

pytestmark = pytest.mark.slow

STEPS = 60


def _objective(loss_type: str, beta: float):
    from kubetune.config.preference import PreferenceObjective

    return PreferenceObjective(rl="dpo", loss_type=loss_type, beta=beta)


def _held_out_accuracy(base_dir: str, adapter_dir, pairs_path, objective=None) -> float:
    """Share of held-out pairs whose chosen answer gets the higher DPO reward, adapter loaded by plain peft."""
    from kubetune.data import PackedCollator, block_causal_mask
    from kubetune.data.formats.preference import ChatmlIntel
    from kubetune.data.pairs import pair_rows
    from kubetune.train.batches import Collate
    from kubetune.train.preference import PreferenceLoss
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    rows = [json.loads(line) for line in pairs_path.read_text().splitlines()]
    data, _ = pair_rows(ChatmlIntel(tokenizer, {}).tokenize_rows(rows))
    batch = Collate(PackedCollator(tokenizer.pad_token_id), per_pair=True)(
        [data[i] for i in range(len(data))]
    )
    module = PreferenceLoss(model, objective or _objective("sigmoid", 0.1)).eval()
    with torch.no_grad():
        module(
            batch["input_ids"],
            batch["targets"],
            position_ids=batch["position_ids"],
            attention_mask=block_causal_mask(batch["position_ids"]),
        )
    return module.take_metrics()["rewards/accuracies"]


def _dpo_config(make_config, tmp_path, name: str, steps: int, **keys):
    train_pairs = write_jsonl(preference_rows(240, seed=0), tmp_path / "pairs.jsonl")
    defaults = {
        "datasets": [{"path": str(train_pairs), "type": "chatml.intel"}],
        "rl": "dpo",
        "rl_beta": 0.1,
        "sample_packing": False,
        "max_steps": steps,
        "learning_rate": 0.01,
        "lr_scheduler": "constant",
        "micro_batch_size": 8,
        **LORA,
    }
    return make_config(name, **(defaults | keys))


def test_dpo_lora_learns_the_right_answers_and_the_adapter_loads_in_plain_peft(
    make_config, tiny, tmp_path, capsys
):
    held_out = write_jsonl(preference_rows(60, seed=99), tmp_path / "held_out.jsonl")
    cfg, path = _dpo_config(make_config, tmp_path, "dpo", STEPS, val_set_size=0.2, eval_steps=30)
    assert cli(["train", str(path), "--log-format", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    train = [line for line in lines if line.get("event") == "train"]
    assert len(train) == STEPS
    margins = [line["rewards/margins"] for line in train]
    accuracies = [line["rewards/accuracies"] for line in train]
    assert abs(margins[0]) < 1e-3  # a fresh adapter is the reference: no margin yet
    assert sum(margins[-5:]) / 5 > 0.5, margins  # mean reward margin rose from 0
    assert sum(accuracies[-5:]) / 5 > 0.9, accuracies
    assert train[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # ln 2: policy == reference at step 1
    assert train[-1]["loss"] < 0.4

    evals = [line for line in lines if line.get("event") == "eval"]
    assert [line["step"] for line in evals] == [30, 60]
    assert "eval_perplexity" not in evals[-1]  # a pair loss has none
    assert evals[-1]["eval_rewards/accuracies"] > 0.9 and evals[-1]["eval_rewards/margins"] > 0.5
    # Both evals sit far below ln 2 (the pair loss before training). Between steps 30 and 60 the held-out
    # loss has plateaued, and on some CPUs it drifts up by a few thousandths (0.16421 -> 0.16567 on an AMD
    # EPYC CI machine), so only a bounded drift is asserted, not an order.
    assert all(line["eval_loss"] < 0.5 * 0.6931 for line in evals), evals
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] + 0.05, evals

    accuracy = _held_out_accuracy(tiny["model"], cfg.output_dir, held_out)
    _record("kto", steps=KTO_STEPS, margins_first=margins[0], margins_last5=_mean(margins[-5:]),
            loss=[train[0]["loss"], train[-1]["loss"]], held_out_pair_accuracy=accuracy)  # fmt: skip
    assert accuracy > 0.9, accuracy


def test_a_preempted_dpo_run_checkpoints_and_resumes(make_config, tmp_path):
    import signal
    from pathlib import Path

    cfg, path = _dpo_config(make_config, tmp_path, "dpo-sigterm", 12)
    process = start(path)
    wait_for(
        process, lambda event: event["event"] == "train" and event["step"] >= 3 and "rewards/margins" in event
    )
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert events[-2]["event"] == "checkpoint" and events[-1]["event"] == "preempted"
    step = events[-1]["step"]
    assert (Path(cfg.output_dir) / "checkpoints" / f"checkpoint-{step}" / "COMPLETE").is_file()

    assert cli(["train", str(path)]) == 0
    summary = json.loads((Path(cfg.output_dir) / "training_summary.json").read_text())
    assert summary["resumed_from_step"] == step and summary["steps"] == 12


def test_two_process_ddp_runs_dpo(make_config, tmp_path):
    from pathlib import Path

    from .support import torchrun_train

    cfg, path = _dpo_config(make_config, tmp_path, "dpo-ddp", 6, micro_batch_size=4)
    result = torchrun_train(path, 2, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    train = [line for line in lines if line.get("event") == "train"]
    assert len(train) == 6 and train[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert all("rewards/margins" in line for line in train)
    assert (Path(cfg.output_dir) / "adapter_model.safetensors").is_file()


def _train_lines(capsys) -> list[dict]:
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "train"]


def _mean(values) -> float:
    return sum(values) / len(values)


def _record(name: str, **figures) -> None:
    """The measured figures of an acceptance run, on the real stderr (docs/training.md quotes them)."""
    import sys

    sys.__stderr__.write(f"\nACCEPTANCE {name} {json.dumps(figures)}\n")


# Steps of each acceptance run (micro_batch_size 8, lr 0.01 constant, LoRA r 16 on every linear).
REFERENCE_FREE_STEPS = {"orpo": 60, "simpo": 60}


@pytest.mark.parametrize("rl", ["orpo", "simpo"])
def test_reference_free_losses_learn_the_right_answers_and_the_adapter_loads_in_plain_peft(
    make_config, tiny, tmp_path, capsys, rl
):
    """ORPO / SimPO: rewards are beta x the mean token log-prob, so accuracy is the share of pairs whose
    chosen answer is likelier per token; the held-out pairs are scored with the adapter loaded by peft."""
    from kubetune.config.preference import PreferenceObjective

    steps = REFERENCE_FREE_STEPS[rl]
    held_out = write_jsonl(preference_rows(60, seed=99), tmp_path / "held_out.jsonl")
    # SimPO at the paper's scale (beta 2, gamma / beta = 0.5), with trl's default NLL weight
    keys = {"rl_beta": 2.0, "simpo_gamma": 1.0, "cpo_alpha": 1.0} if rl == "simpo" else {"rl_beta": 0.1}
    cfg, path = _dpo_config(make_config, tmp_path, rl, steps, rl=rl, **keys)
    assert cli(["train", str(path), "--log-format", "json"]) == 0
    train = _train_lines(capsys)
    assert len(train) == steps
    margins = [line["rewards/margins"] for line in train]
    accuracies = [line["rewards/accuracies"] for line in train]
    assert _mean(margins[-5:]) > _mean(margins[:5]) + 0.01, margins  # the margin rose
    assert _mean(accuracies[-5:]) > 0.9, accuracies
    assert train[-1]["loss"] < train[0]["loss"]
    assert all("nll_loss" in line for line in train)  # ORPO's NLL term; SimPO's with cpo_alpha > 0

    beta = keys.pop("rl_beta")
    objective = PreferenceObjective(rl=rl, loss_type=rl, beta=beta, **keys)
    accuracy = _held_out_accuracy(tiny["model"], cfg.output_dir, held_out, objective)
    _record(rl, steps=steps, margins_first5=_mean(margins[:5]), margins_last5=_mean(margins[-5:]),
            accuracy_last5=_mean(accuracies[-5:]), loss=[train[0]["loss"], train[-1]["loss"]],
            held_out_accuracy=accuracy)  # fmt: skip
    assert accuracy > 0.9, accuracy


KTO_STEPS = 60


def test_kto_learns_from_unpaired_labelled_rows(make_config, tiny, tmp_path, capsys):
    """KTO on single completions labelled desirable / undesirable: the desirable rows' reward rises
    above the undesirable ones'; on held-out PAIRS of the same tasks the adapter (loaded by plain peft)
    gives the right answer the higher implicit reward beta x (policy - base) log-prob."""
    from kubetune.tiny import kto_rows

    held_out = write_jsonl(preference_rows(60, seed=99), tmp_path / "held_out.jsonl")
    rows = write_jsonl(kto_rows(120, seed=0), tmp_path / "kto.jsonl")
    cfg, path = _dpo_config(
        make_config,
        tmp_path,
        "kto",
        KTO_STEPS,
        rl="kto",
        datasets=[{"path": str(rows), "type": "chatml.intel"}],
    )
    assert cli(["train", str(path), "--log-format", "json"]) == 0
    train = _train_lines(capsys)
    assert len(train) == KTO_STEPS
    margins = [line["rewards/margins"] for line in train if "rewards/margins" in line]
    assert abs(margins[0]) < 1e-3  # a fresh adapter is the reference
    assert _mean(margins[-5:]) > 0.5, margins
    assert train[0]["loss"] == pytest.approx(0.5, abs=1e-3)  # 1 - sigmoid(0) with KL 0 at step 1
    assert all("kl" in line for line in train)
    accuracy = _held_out_accuracy(tiny["model"], cfg.output_dir, held_out)
    _record("kto", steps=KTO_STEPS, margins_first=margins[0], margins_last5=_mean(margins[-5:]),
            loss=[train[0]["loss"], train[-1]["loss"]], held_out_pair_accuracy=accuracy)  # fmt: skip
    assert accuracy > 0.9, accuracy


@pytest.mark.parametrize("precompute", [False, True])
def test_a_full_fine_tune_dpo_runs_with_a_frozen_copy_or_precomputed_reference(
    make_config, tmp_path, capsys, precompute
):
    """No adapter: the reference is a frozen copy of the loaded model, or its log-probs computed once
    into the prepared-data cache; either way step 1 compares the policy with itself (loss ln 2)."""
    from pathlib import Path

    keys = {key: None for key in (*LORA, "lora_target_modules")} | {"adapter": None, "learning_rate": 0.001}
    cfg, path = _dpo_config(
        make_config, tmp_path, f"dpo-full-{precompute}", 8, precompute_ref_log_probs=precompute, **keys
    )
    assert cli(["train", str(path), "--log-format", "json"]) == 0
    train = _train_lines(capsys)
    assert len(train) == 8 and train[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert abs(train[0]["rewards/margins"]) < 1e-3 and train[-1]["rewards/margins"] > 0.0
    if precompute:  # computed into the prepared-data cache, beside the prepared rows
        assert list(Path(cfg.dataset_prepared_path).glob("*/ref-logps-*/train.npy"))
    assert list(Path(cfg.output_dir).glob("*.safetensors"))  # the full model, no adapter


def test_a_full_fine_tune_dpo_with_trl_reference_sync_restarts_from_the_policy(make_config, tmp_path, capsys):
    """trl: {beta, sync_ref_model, ref_model_mixup_alpha: 1, ref_model_sync_steps: 2}: after steps 2 and 4
    the reference IS the policy, so steps 3 and 5 compare the policy with itself (loss ln 2, margin 0);
    without the sync they do not. beta comes from the trl block (the rewards scale with it)."""
    keys = {key: None for key in (*LORA, "lora_target_modules")} | {"adapter": None, "learning_rate": 0.001}
    trl = {"beta": 0.2, "sync_ref_model": True, "ref_model_mixup_alpha": 1.0, "ref_model_sync_steps": 2}
    lines = {}
    for name, block in (("synced", trl), ("fixed", {"beta": 0.2})):
        _, path = _dpo_config(make_config, tmp_path, f"dpo-{name}", 5, rl_beta=None, trl=block, **keys)
        assert cli(["train", str(path), "--log-format", "json"]) == 0
        lines[name] = _train_lines(capsys)
    synced, fixed = lines["synced"], lines["fixed"]
    assert len(synced) == len(fixed) == 5
    for step in (0, 1):  # steps 1 and 2: the same run until the first sync
        assert synced[step]["loss"] == pytest.approx(fixed[step]["loss"], rel=1e-5)
    for step in (2, 4):  # steps 3 and 5 follow a sync
        assert synced[step]["loss"] == pytest.approx(0.6931, abs=1e-4)
        assert abs(synced[step]["rewards/margins"]) < 1e-5
        assert abs(fixed[step]["loss"] - 0.6931) > 1e-3 and abs(fixed[step]["rewards/margins"]) > 1e-4


def test_a_resumed_run_continues_from_the_synced_reference(make_config, tmp_path, capsys):
    """The synced reference is checkpoint state: a run resumed from step 3 (after the sync at step 2)
    logs steps 4 and 5 as the uninterrupted run does; a resume that rebuilt the reference from the
    loaded model would not (its step 4 compares with the base)."""
    from pathlib import Path

    keys = {key: None for key in (*LORA, "lora_target_modules")} | {"adapter": None, "learning_rate": 0.001}
    trl = {"sync_ref_model": True, "ref_model_mixup_alpha": 0.5, "ref_model_sync_steps": 2}
    common = {"rl_beta": 0.5, "trl": trl, "save_steps": 3, **keys}
    cfg, path = _dpo_config(make_config, tmp_path, "dpo-sync-whole", 5, **common)
    assert cli(["train", str(path), "--log-format", "json"]) == 0
    whole = _train_lines(capsys)
    saved = Path(cfg.output_dir) / "checkpoints" / "checkpoint-3"
    assert (saved / "COMPLETE").is_file()
    _, path = _dpo_config(
        make_config, tmp_path, "dpo-sync-resumed", 5, resume_from_checkpoint=str(saved), **common
    )
    assert cli(["train", str(path), "--log-format", "json"]) == 0
    resumed = _train_lines(capsys)
    assert [line["step"] for line in resumed] == [4, 5]
    for ours, theirs in zip(resumed, whole[3:], strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert ours["rewards/margins"] == pytest.approx(theirs["rewards/margins"], rel=1e-4, abs=1e-6)


def test_two_process_kto_matches_one_process_with_the_same_global_batch(make_config, tmp_path, capsys):
    """rl: kto under torchrun (2 CPU processes, 4 rows each) logs the losses and KL of one process with
    8 rows a step (the same rows: the step's slice of the permutation does not depend on the split),
    as the KL estimate is all-reduced; evaluation (padding rows on a rank) runs the same collectives."""
    from kubetune.tiny import kto_rows

    from .support import torchrun_train

    rows = write_jsonl(kto_rows(60, seed=0), tmp_path / "kto.jsonl")
    keys = {"rl": "kto", "datasets": [{"path": str(rows), "type": "chatml.intel"}]}
    keys |= {"val_set_size": 0.15, "eval_steps": 2, "learning_rate": 0.02}
    _, one_path = _dpo_config(make_config, tmp_path, "kto-one", 4, micro_batch_size=8, **keys)
    assert cli(["train", str(one_path), "--log-format", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    _, two_path = _dpo_config(make_config, tmp_path, "kto-two", 4, micro_batch_size=4, **keys)
    result = torchrun_train(two_path, 2, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    two = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    for event in ("train", "eval"):
        ones = [line for line in lines if line.get("event") == event]
        twos = [line for line in two if line.get("event") == event]
        assert len(ones) == len(twos) == (4 if event == "train" else 2)
        for a, b in zip(ones, twos, strict=True):
            name = "loss" if event == "train" else "eval_loss"
            assert b[name] == pytest.approx(a[name], rel=2e-4), (event, a, b)
    kl = [line["kl"] for line in two if line.get("event") == "train"]
    assert kl == pytest.approx(
        [line["kl"] for line in lines if line.get("event") == "train"], rel=1e-3, abs=1e-6
    )
    assert max(kl) > 0  # the KL term is not zero all along: the comparison covers it
