"""save_only_model: checkpoints without optimizer and scheduler state, and what a resume from one does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_runs import train_in_process

pytestmark = pytest.mark.slow

FULL = dict.fromkeys(("adapter", "lora_r", "lora_alpha", "lora_target_modules"))
STEPS = {"max_steps": 8, "save_steps": 4, "learning_rate": 0.005, "warmup_steps": 2, **FULL}


def history(summary: dict, after: int = 0) -> dict[int, dict]:
    return {entry["step"]: entry for entry in summary["history"] if entry["step"] > after}


@pytest.fixture(scope="module")
def runs(tiny, seed_mapping, tmp_path_factory):
    """(full-state run, model-only run): the same 8 steps, checkpointed at 4."""
    from .support import build_config

    full_cfg, _ = build_config(seed_mapping, tiny, tmp_path_factory.mktemp("full-state"), **STEPS)
    _, full = train_in_process(full_cfg)
    only_cfg, _ = build_config(
        seed_mapping, tiny, tmp_path_factory.mktemp("model-only"), save_only_model=True, **STEPS
    )
    _, only = train_in_process(only_cfg)
    return (full_cfg, full), (only_cfg, only)


def test_checkpoints_hold_the_model_without_optimizer_and_scheduler_state(runs):
    from kubetune.train.checkpoint import is_model_only, problem

    (full_cfg, full), (only_cfg, only) = runs
    assert [e["loss"] for e in only["history"]] == [e["loss"] for e in full["history"]]  # training unchanged
    with_state = Path(full_cfg.output_dir) / "checkpoints" / "checkpoint-4"
    model_only = Path(only_cfg.output_dir) / "checkpoints" / "checkpoint-4"
    names = {p.name for p in model_only.iterdir()}
    assert {"optimizer.bin", "custom_checkpoint_0.pkl"} <= {p.name for p in with_state.iterdir()}
    assert {"optimizer.bin", "custom_checkpoint_0.pkl"}.isdisjoint(names)
    assert {"model.safetensors", "trainer_state.json", "COMPLETE"} <= names
    assert is_model_only(model_only) and not is_model_only(with_state)
    assert problem(model_only) is None  # a whole checkpoint: found and used on restart
    assert sum(p.stat().st_size for p in model_only.iterdir()) < 0.5 * sum(
        p.stat().st_size for p in with_state.iterdir()
    )


def test_a_resume_restores_weights_step_data_and_schedule_with_a_fresh_optimizer(runs, make_config, caplog):
    (_, uninterrupted), (only_cfg, _) = runs
    checkpoint = Path(only_cfg.output_dir) / "checkpoints" / "checkpoint-4"
    cfg, _ = make_config("resumed", save_only_model=True, resume_from_checkpoint=str(checkpoint), **STEPS)
    with caplog.at_level("WARNING"):
        _, resumed = train_in_process(cfg)
    assert (
        "without optimizer state (save_only_model): resuming at step 4 with a fresh optimizer" in caplog.text
    )
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 8
    after, expected = history(resumed, 4), history(uninterrupted, 4)
    assert [entry["lr"] for entry in after.values()] == pytest.approx([e["lr"] for e in expected.values()])
    # Step 5's loss is computed on the checkpoint's weights and the uninterrupted run's batch: the same.
    assert after[5]["loss"] == pytest.approx(expected[5]["loss"], rel=1e-5)
    # Step 5's update came from an optimizer without Adam's moments: step 6 is another loss.
    assert after[6]["loss"] != pytest.approx(expected[6]["loss"], rel=1e-4)
    assert json.loads((Path(cfg.output_dir) / "training_summary.json").read_text())["steps"] == 8


@pytest.mark.parametrize("version", [1, 2])
def test_under_fsdp_the_sharded_checkpoint_has_no_optimizer_and_resumes(make_config, version):
    """As Axolotl's 3b-qat-fsdp2 example runs it: FSDP writes the model's shards and no optimizer ones."""
    import shutil

    from .support import torchrun_train
    from .test_fsdp_cpu import CPU_FSDP, fsdp, losses

    keys = {"max_steps": 6, "save_steps": 3, "learning_rate": 0.01, "micro_batch_size": 2, **FULL}
    cfg, path = make_config(
        f"fsdp{version}", save_only_model=True, **keys, **fsdp(version, "SHARDED_STATE_DICT")
    )
    out = Path(cfg.output_dir)
    first = torchrun_train(path, 2, timeout=600, env=CPU_FSDP)
    assert first.returncode == 0, first.stderr[-4000:]
    checkpoint = out / "checkpoints" / "checkpoint-3"
    names = {p.name for p in checkpoint.iterdir()}
    assert any(name.startswith("pytorch_model_fsdp") for name in names), names
    assert not any("optimizer" in name for name in names) and "custom_checkpoint_0.pkl" not in names, names
    uninterrupted = losses(json.loads((out / "training_summary.json").read_text()))

    for leftover in out.iterdir():
        if leftover.name != "checkpoints":
            leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover)
    second = torchrun_train(path, 2, timeout=600, env=CPU_FSDP)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "fresh optimizer" in second.stderr
    resumed = json.loads((out / "training_summary.json").read_text())
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == 6
    assert losses(resumed)[4] == pytest.approx(uninterrupted[4], rel=1e-5)  # weights and data came back
