"""FSDP1 and FSDP2 for real on CPU processes (gloo), not the DDP fallback: train, checkpoint, resume, and
a saved result that is the trained one.

accelerate runs FSDP only on accelerators; KUBETUNE_CPU_FSDP=1 makes the engine shard on CPU processes
(distributed.py), so the wrapping, the gathered saves and the sharded checkpoints run here as on GPUs.
Each run is compared with a single-process run of the same global batch (4 rows: 2 ranks x 2 rows vs
1 process x 2 micro-batches of 2 rows), whose live model gives the trained logits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .reload import assert_every_lora_tensor_trained, assert_reproduces, load_result
from .support import build_config, torchrun_train
from .test_runs import LORA, logits_of, probe_ids, train_in_process

pytestmark = pytest.mark.slow

CPU_FSDP = {"KUBETUNE_CPU_FSDP": "1"}
STEPS = {"max_steps": 6, "save_steps": 3, "learning_rate": 0.01, "micro_batch_size": 2}
FULL = dict.fromkeys(("adapter", "lora_r", "lora_alpha", "lora_target_modules"))
LORA_LAYERS = 2 * 7  # the tiny Llama: 2 decoder layers x 7 linear layers


def fsdp(version: int, state_dict_type: str) -> dict:
    return {
        "fsdp": ["full_shard", "auto_wrap"],
        "fsdp_config": {
            "fsdp_version": version,
            "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
            "fsdp_state_dict_type": state_dict_type,
        },
    }


def reference(seed_mapping, tiny, directory: Path, **keys):
    """(summary, trained logits) of one process with the same global batch."""
    cfg, _ = build_config(seed_mapping, tiny, directory, gradient_accumulation_steps=2, **STEPS, **keys)
    run, summary = train_in_process(cfg)
    return summary, logits_of(run.accelerator.unwrap_model(run.module).model, probe_ids(tiny))


@pytest.fixture(scope="module")
def lora_reference(seed_mapping, tiny, tmp_path_factory):
    return reference(seed_mapping, tiny, tmp_path_factory.mktemp("lora-ref"), **LORA)


@pytest.fixture(scope="module")
def full_reference(seed_mapping, tiny, tmp_path_factory):
    return reference(seed_mapping, tiny, tmp_path_factory.mktemp("full-ref"), **FULL)


def losses(summary: dict) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in summary["history"]}


def train_resume_and_reload(make_config, tiny, name: str, expected, **keys) -> dict:
    """Run 6 steps on 2 CPU processes under FSDP with a checkpoint at 3; run again from that checkpoint
    (the outputs removed). Both runs follow the single-process loss curve, and the saved result
    reproduces its trained logits."""
    expected_summary, expected_logits = expected
    version = keys["fsdp_config"]["fsdp_version"]
    cfg, path = make_config(name, gradient_accumulation_steps=1, **STEPS, **keys)
    out = Path(cfg.output_dir)
    first = torchrun_train(path, 2, timeout=600, env=CPU_FSDP)
    assert first.returncode == 0, first.stderr[-4000:]
    assert f"FSDP{version} on CPU processes (gloo)" in first.stderr  # sharded for real, not DDP
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["world_size"] == 2
    assert losses(summary) == pytest.approx(losses(expected_summary), rel=1e-4)
    checkpoint = out / "checkpoints" / "checkpoint-3"
    assert (checkpoint / "COMPLETE").is_file()
    if cfg.adapter:  # the trainable weights only, not the frozen base
        assert (checkpoint / "adapter_weights.safetensors").is_file()
        assert not list(checkpoint.glob("pytorch_model_fsdp*"))
    first_losses = losses(summary)

    for leftover in out.iterdir():
        if leftover.name != "checkpoints":
            leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover)
    second = torchrun_train(path, 2, timeout=600, env=CPU_FSDP)
    assert second.returncode == 0, second.stderr[-4000:]
    resumed = json.loads((out / "training_summary.json").read_text())
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == 6
    # Weights, optimizer moments, schedule, data position and RNG all came back: the resumed steps
    # repeat the uninterrupted run's losses.
    after = {step: loss for step, loss in losses(resumed).items() if step > 3}
    assert after == pytest.approx({step: first_losses[step] for step in after}, rel=1e-5)

    if cfg.adapter:
        assert_every_lora_tensor_trained(out, expected_lora_layers=LORA_LAYERS)
    model = load_result(tiny["model"], out)  # plain peft / transformers; a lost weight fails here
    assert_reproduces(model, probe_ids(tiny), expected_logits, atol=1e-4)
    return resumed


@pytest.mark.parametrize(("version", "state_dict_type"), [(1, "FULL_STATE_DICT"), (2, "SHARDED_STATE_DICT")])
def test_fsdp_lora_trains_checkpoints_resumes_and_saves_the_trained_adapter(
    make_config, tiny, lora_reference, version, state_dict_type
):
    train_resume_and_reload(
        make_config, tiny, f"lora-fsdp{version}", lora_reference, **LORA, **fsdp(version, state_dict_type)
    )


@pytest.mark.parametrize("version", [1, 2])
def test_fsdp_full_fine_tune_trains_checkpoints_resumes_and_saves_the_trained_model(
    make_config, tiny, full_reference, version
):
    train_resume_and_reload(
        make_config,
        tiny,
        f"full-fsdp{version}",
        full_reference,
        **FULL,
        **fsdp(version, "SHARDED_STATE_DICT"),
    )
