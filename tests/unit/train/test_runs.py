"""Whole runs on the tiny model: learning, saved results, DDP, kill/SIGTERM and resume, merge.

The configs are the seed llama3-lora.yml with local paths and a CPU-sized overlay (conftest).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kubetune.cli import main as cli

from .reload import load_adapter, load_full_model
from .support import build_config, subprocess_env, torchrun_train

pytestmark = pytest.mark.slow

# LoRA on a random-init model only lowers the loss when the output head can move too (its random
# rows cap the logits' range otherwise): lm_head is trained in full and saved with the adapter.
LORA = {"lora_target_linear": True, "lora_modules_to_save": ["lm_head"], "lora_r": 16, "lora_alpha": 32}


def train_in_process(cfg):
    """setup → train → save with the engine's own functions, keeping the run for inspection."""
    from kubetune.train import loop

    stop = loop.StopFlag()
    run = loop.setup(cfg, stop)
    summary = loop.finish(run, loop.train_loop(run, stop), wall_time=0.0)
    run.reporters.close()
    return run, summary


def probe_ids(tiny) -> torch.Tensor:
    rows = [json.loads(line) for line in Path(tiny["train"]).read_text().splitlines()[:2]]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    ids = [tokenizer(f"{r['instruction']} {r['input']} {r['output']}")["input_ids"] for r in rows]
    length = min(len(ids[0]), len(ids[1]))
    return torch.tensor([ids[0][:length], ids[1][:length]])


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def assert_learned(summary: dict, drop: float = 0.3) -> None:
    losses = [entry["loss"] for entry in summary["history"]]
    assert len(losses) == summary["steps"] >= 30
    first, last = losses[0], sum(losses[-5:]) / 5
    assert last <= (1 - drop) * first, f"loss {first:.3f} -> {last:.3f}: less than a {drop:.0%} drop"


@pytest.fixture(scope="module")
def lora_run(tiny, seed_mapping, tmp_path_factory):
    cfg, _ = build_config(seed_mapping, tiny, tmp_path_factory.mktemp("lora"), learning_rate=0.02, **LORA)
    run, summary = train_in_process(cfg)
    trained = run.accelerator.unwrap_model(run.module).model
    return cfg, summary, logits_of(trained, probe_ids(tiny))


def test_lora_learns_and_plain_peft_reproduces_the_training_logits(lora_run, tiny):

    cfg, summary, training_logits = lora_run
    assert_learned(summary)
    out = Path(cfg.output_dir)
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "training_summary.json",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "KUBETUNE_COMPLETE").read_text())["steps"] == 30
    assert summary["config_hash"] == cfg.config_hash() and summary["trained_tokens"] > 0
    saved = json.loads((out / "training_summary.json").read_text())
    assert saved["steps"] == 30 and saved["final_train_loss"] == summary["final_train_loss"]

    model = load_adapter(tiny["model"], out)  # a peft "missing adapter keys" warning fails here
    torch.testing.assert_close(logits_of(model, probe_ids(tiny)), training_logits, atol=1e-5, rtol=0)


def test_merge_gives_the_logits_of_base_plus_adapter(lora_run, tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, _, _ = lora_run
    config_path = tmp_path / "config.yml"
    config_path.write_text(json.dumps(cfg.to_mapping()))  # JSON is YAML
    target = tmp_path / "merged"
    assert cli(["merge", str(config_path), "--output", str(target)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(target)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny["model"]), cfg.output_dir)
    ids = probe_ids(tiny)
    torch.testing.assert_close(logits_of(merged, ids), logits_of(adapter, ids), atol=1e-4, rtol=1e-4)
    assert (target / "tokenizer.json").is_file()


def test_generate_samples_from_base_plus_adapter_with_the_training_prompt(lora_run, tiny, tmp_path, capsys):
    from kubetune.data.formats.instruct import ALPACA_NO_INPUT
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, _, _ = lora_run
    config_path = tmp_path / "config.yml"
    config_path.write_text(json.dumps(cfg.to_mapping()))
    assert cli(["generate", str(config_path), "--prompt", "Spell the digit.", "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out

    tokenizer = AutoTokenizer.from_pretrained(cfg.output_dir)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny["model"]), cfg.output_dir
    ).eval()
    prompt = tokenizer(ALPACA_NO_INPUT.format(instruction="Spell the digit."), return_tensors="pt")[
        "input_ids"
    ]
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    new_tokens = out[0, prompt.shape[1] :]
    assert len(new_tokens) >= 1
    assert printed == tokenizer.decode(new_tokens, skip_special_tokens=True) + "\n"


def test_full_fine_tune_learns_and_saves_a_model_transformers_loads(make_config, tiny):

    no_adapter = dict.fromkeys(("adapter", "lora_r", "lora_alpha", "lora_target_modules"))
    cfg, _ = make_config("full", learning_rate=0.005, val_set_size=0.05, eval_steps=10, **no_adapter)
    run, summary = train_in_process(cfg)
    assert_learned(summary)
    assert summary["final_eval_loss"] < 0.8 * 6.2 and summary["best_eval_loss"] <= summary["final_eval_loss"]
    assert summary["final_eval_perplexity"] == pytest.approx(math.exp(summary["final_eval_loss"]))
    ids = probe_ids(tiny)
    training_logits = logits_of(run.accelerator.unwrap_model(run.module).model, ids)
    out = Path(cfg.output_dir)
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    reloaded = load_full_model(out)  # a transformers "newly initialized" warning fails here
    torch.testing.assert_close(logits_of(reloaded, ids), training_logits, atol=1e-5, rtol=0)


def layout(out: Path) -> set[str]:
    """Relative paths of the outputs; per-rank RNG files are the only expected difference."""
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "random_states_" not in p.name}


def test_two_process_ddp_matches_the_single_process_run_with_the_same_global_batch(make_config):
    steps = {"max_steps": 8, "save_steps": 4, "learning_rate": 0.01, **LORA}
    single_cfg, _ = make_config("single", micro_batch_size=2, gradient_accumulation_steps=2, **steps)
    _, single = train_in_process(single_cfg)
    ddp_cfg, ddp_path = make_config("ddp", micro_batch_size=2, gradient_accumulation_steps=1, **steps)
    result = torchrun_train(ddp_path, 2, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = json.loads((Path(ddp_cfg.output_dir) / "training_summary.json").read_text())
    assert ddp["world_size"] == 2 and ddp["steps"] == single["steps"] == 8
    assert ddp["trained_tokens"] == single["trained_tokens"]
    single_losses = [entry["loss"] for entry in single["history"]]
    ddp_losses = [entry["loss"] for entry in ddp["history"]]
    assert ddp_losses == pytest.approx(single_losses, rel=1e-5), (single_losses, ddp_losses)  # 2e-7 measured
    assert layout(Path(ddp_cfg.output_dir)) == layout(Path(single_cfg.output_dir))
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["step"] for line in lines if line["event"] == "train"] == list(range(1, 9))  # rank 0 only


def start(path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kubetune", "train", str(path)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(process: subprocess.Popen, predicate) -> dict:
    for line in process.stdout:
        if line.startswith("{") and predicate(event := json.loads(line)):
            return event
    process.wait()
    raise AssertionError(f"the run ended (rc {process.returncode}) first:\n{process.stderr.read()[-3000:]}")


def test_killed_run_resumes_from_its_last_checkpoint_and_skips_a_truncated_one(make_config, caplog):
    from kubetune.train.checkpoint import find_resumable

    cfg, path = make_config("kill", max_steps=16, save_steps=4, **LORA, learning_rate=0.01)
    out = Path(cfg.output_dir)
    process = start(path)
    wait_for(process, lambda event: event["event"] == "checkpoint")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL and not (out / "KUBETUNE_COMPLETE").exists()
    resumable = find_resumable(out)
    resume_step = int(resumable.name.split("-")[1])
    assert 4 <= resume_step < 16

    # A newer checkpoint whose optimizer state was cut short (e.g. a copy interrupted by the kill).
    broken = out / "checkpoints" / "checkpoint-15"
    subprocess.run(["cp", "-r", str(resumable), str(broken)], check=True)
    with open(broken / "optimizer.bin", "r+b") as handle:
        handle.truncate(100)

    with caplog.at_level("WARNING"):
        assert cli(["train", str(path)]) == 0
    assert "skipping checkpoint" in caplog.text and "optimizer.bin is truncated" in caplog.text
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["resumed_from_step"] == resume_step
    assert summary["steps"] == summary["total_steps"] == 16
    logged = [entry["step"] for entry in summary["history"]]
    assert logged[0] == 1 and logged[-1] == 16 and sorted(set(logged)) == list(range(1, 17))
    assert (out / "KUBETUNE_COMPLETE").is_file()
    assert cli(["train", str(path)]) == 0  # a restarted worker finds the marker and does nothing

    # Model, optimizer, schedule and data position all came back: after the resume the run follows
    # the loss curve of the same run never interrupted (a fresh optimizer or schedule would not).
    uninterrupted_cfg, _ = make_config(
        "uninterrupted", max_steps=16, save_steps=4, **LORA, learning_rate=0.01
    )
    _, uninterrupted = train_in_process(uninterrupted_cfg)
    expected = {entry["step"]: entry["loss"] for entry in uninterrupted["history"]}
    resumed = {entry["step"]: entry["loss"] for entry in summary["history"] if entry["step"] > resume_step}
    assert resumed == pytest.approx({step: expected[step] for step in resumed}, rel=1e-3)


def test_dataloader_workers_feed_the_same_batches(make_config):
    histories = []
    for workers in (0, 2):
        cfg, _ = make_config(f"workers{workers}", max_steps=4, dataloader_num_workers=workers, **LORA)
        histories.append([entry["loss"] for entry in train_in_process(cfg)[1]["history"]])
    assert histories[0] == pytest.approx(histories[1], rel=1e-5)


def test_added_tokens_are_trained_saved_and_merged(make_config, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    keys = {**LORA, "lora_modules_to_save": ["embed_tokens", "lm_head"], "tokens": ["<tool>", "<call>"]}
    cfg, path = make_config("tokens", max_steps=3, **keys)
    assert cli(["train", str(path)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(cfg.output_dir)
    assert tokenizer.convert_tokens_to_ids("<call>") == len(tokenizer) - 1
    assert cli(["merge", str(path), "--output", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.get_input_embeddings().num_embeddings == len(tokenizer)
    base = AutoModelForCausalLM.from_pretrained(cfg.base_model)
    base.resize_token_embeddings(len(tokenizer))
    adapter = PeftModel.from_pretrained(base, cfg.output_dir)
    ids = torch.tensor([[1, 5, len(tokenizer) - 2, len(tokenizer) - 1]])
    torch.testing.assert_close(logits_of(merged, ids), logits_of(adapter, ids), atol=1e-4, rtol=1e-4)


def test_sigterm_writes_a_checkpoint_and_exits_143_then_the_run_resumes(make_config):
    # No scheduled checkpoint; rows padded to sequence_len as the seed config has it.
    cfg, path = make_config("sigterm", max_steps=30, pad_to_sequence_len=True, **LORA, learning_rate=0.01)
    out = Path(cfg.output_dir)
    process = start(path)
    wait_for(process, lambda event: event["event"] == "train" and event["step"] >= 3)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert events[-2]["event"] == "checkpoint" and events[-1]["event"] == "preempted"
    step = events[-1]["step"]
    checkpoint = out / "checkpoints" / f"checkpoint-{step}"
    assert (checkpoint / "COMPLETE").is_file() and not (out / "KUBETUNE_COMPLETE").exists()
    assert "Traceback" not in stderr

    assert cli(["train", str(path)]) == 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["resumed_from_step"] == step and summary["steps"] == 30


def test_a_flipped_byte_in_the_newest_checkpoint_resumes_from_the_previous_one_and_staging_is_removed(
    make_config, caplog
):
    cfg, path = make_config("bitflip", max_steps=10, save_steps=4, **LORA, learning_rate=0.01)
    out = Path(cfg.output_dir)
    train_in_process(cfg)
    newest = out / "checkpoints" / "checkpoint-8"
    assert (out / "checkpoints" / "checkpoint-4" / "COMPLETE").is_file() and (newest / "COMPLETE").is_file()
    manifest = json.loads((newest / "COMPLETE").read_text())["files"]
    assert len(manifest["model.safetensors"]["sha256"]) == 64

    # As if the run had been killed after its step-8 checkpoint, whose weights then lost one bit on disk.
    (out / "KUBETUNE_COMPLETE").unlink()
    weights = newest / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.seek(weights.stat().st_size - 7)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x01]))
    # And a later checkpoint write that the kill interrupted, before its rename.
    staging = out / "checkpoints" / ".tmp-checkpoint-9"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half")

    with caplog.at_level("WARNING"):
        assert cli(["train", str(path)]) == 0
    assert (
        "skipping checkpoint" in caplog.text
        and "checkpoint-8 (step 8): model.safetensors is corrupt" in caplog.text
    )
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 10
    assert not staging.exists() and "removing the interrupted checkpoint write" in caplog.text


def test_sigterm_under_kubetune_launch_reaches_both_workers_which_save_and_the_run_resumes(make_config):
    """As in a pod: SIGTERM goes to the launcher (torchrun) only; it forwards it to its workers, which
    agree on a step, write its checkpoint and exit 143 within KUBETUNE_WORKER_STOP_TIMEOUT."""
    cfg, path = make_config("launch", max_steps=30, pad_to_sequence_len=True, **LORA, learning_rate=0.01)
    out = Path(cfg.output_dir)
    command = [sys.executable, "-m", "kubetune", "launch", "--standalone", "--nproc-per-node", "2"]
    process = subprocess.Popen(
        [*command, "-m", "kubetune", "train", str(path)],
        env=subprocess_env() | {"KUBETUNE_WORKER_STOP_TIMEOUT": "120"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(process, lambda event: event["event"] == "train" and event["step"] >= 3)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=180)
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events[-2:]] == ["checkpoint", "preempted"], stderr[-3000:]
    step = events[-1]["step"]
    assert (out / "checkpoints" / f"checkpoint-{step}" / "COMPLETE").is_file()
    assert "forcefully exiting via" not in stderr  # no worker was SIGKILLed

    result = torchrun_train(path, 2, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["resumed_from_step"] == step and summary["steps"] == 30


def test_group_by_length_run_trains_in_length_grouped_batches(make_config):
    """An unpacked run with group_by_length goes through the loop; its batches pad less than the default order's."""
    padding = {}
    for grouped in (False, True):
        cfg, _ = make_config(
            f"grouped-{grouped}",
            sample_packing=False,
            pad_to_sequence_len=False,
            group_by_length=grouped,
            max_steps=6,
            learning_rate=0.02,
            **LORA,
        )
        run, summary = train_in_process(cfg)
        assert summary["steps"] == 6
        padding[grouped] = sum(
            batch["input_ids"].numel() - batch["n_tokens"]
            for step in _first_steps(run, cfg, 6)
            for batch in step
        )
    assert padding[True] < padding[False], padding


def _first_steps(run, cfg, count: int) -> list:
    from kubetune.train.batches import train_windows

    windows = train_windows(
        run.data.train,
        run.plan,
        run.collate,
        cfg,
        epoch=0,
        step_in_epoch=0,
        rank=0,
        world_size=1,
        pin_memory=False,
    )
    return [next(windows) for _ in range(count)]
