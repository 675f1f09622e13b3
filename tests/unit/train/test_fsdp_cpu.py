"""FSDP1 and FSDP2 for real on CPU processes (gloo), not the DDP fallback: train, checkpoint, resume, and
a saved result that is the trained one.

accelerate runs FSDP only on accelerators; KUBETUNE_CPU_FSDP=1 makes the engine shard on CPU processes
(distributed.py), so the wrapping, the gathered saves and the sharded checkpoints run here as on GPUs.
Each run is compared with a single-process run of the same global batch (4 rows: 2 ranks x 2 rows vs
1 process x 2 micro-batches of 2 rows), whose live model gives the trained logits.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from .reload import (
    assert_adapter_matters,
    assert_every_lora_tensor_trained,
    assert_reproduces,
    load_result,
)
from .support import QLORA_FSDP_OVERLAY, build_config, torchrun_train
from .test_runs import LORA, logits_of, probe_ids, train_in_process

pytestmark = pytest.mark.slow

CPU_FSDP = {"KUBETUNE_CPU_FSDP": "1"}
CPU_NF4 = "KUBETUNE_CPU_NF4"
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


def train_resume_and_reload(
    make_config,
    tiny,
    name: str,
    expected,
    *,
    env=CPU_FSDP,
    overlay_file=None,
    quantization_config=None,
    atol=1e-4,
    expect_in_log: str | None = None,
    **keys,
):
    """Run 6 steps on 2 CPU processes under FSDP with a checkpoint at 3; run again from that checkpoint
    (the outputs removed). Both runs follow the single-process loss curve, and the saved result
    reproduces its trained logits."""
    expected_summary, expected_logits = expected
    version = keys["fsdp_config"].get("fsdp_version", 1)
    cfg, path = make_config(name, overlay_file=overlay_file, gradient_accumulation_steps=1, **STEPS | keys)
    out = Path(cfg.output_dir)
    first = torchrun_train(path, 2, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-4000:]
    assert f"FSDP{version} on CPU processes (gloo)" in first.stderr  # sharded for real, not DDP
    assert expect_in_log is None or expect_in_log in first.stderr, first.stderr[-4000:]
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
    second = torchrun_train(path, 2, timeout=600, env=env)
    assert second.returncode == 0, second.stderr[-4000:]
    resumed = json.loads((out / "training_summary.json").read_text())
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == 6
    # Weights, optimizer moments, schedule, data position and RNG all came back: the resumed steps
    # repeat the uninterrupted run's losses.
    after = {step: loss for step, loss in losses(resumed).items() if step > 3}
    assert after == pytest.approx({step: first_losses[step] for step in after}, rel=1e-5)

    if cfg.adapter:
        assert_every_lora_tensor_trained(out, expected_lora_layers=LORA_LAYERS)
    # plain peft / transformers; a lost weight fails here
    model = load_result(tiny["model"], out, quantization_config=quantization_config)
    assert_reproduces(model, probe_ids(tiny), expected_logits, atol=atol)
    if cfg.adapter:
        assert_adapter_matters(model, probe_ids(tiny), expected_logits, atol=atol)
    return model


@pytest.mark.parametrize(("version", "state_dict_type"), [(1, "FULL_STATE_DICT"), (2, "SHARDED_STATE_DICT")])
def test_fsdp_lora_trains_checkpoints_resumes_and_saves_the_trained_adapter(
    make_config, tiny, lora_reference, version, state_dict_type
):
    train_resume_and_reload(
        make_config, tiny, f"lora-fsdp{version}", lora_reference, **LORA, **fsdp(version, state_dict_type)
    )


def test_fsdp1_lora_without_original_parameters_wraps_the_adapter_apart_and_matches_one_process(
    make_config, tiny, lora_reference
):
    """fsdp_use_orig_params: false (Axolotl's QLoRA + FSDP examples set it): FSDP1 flattens each unit into
    one tensor, trained or frozen as a whole, so the LoRA layers become units of their own (peft's wrap
    policy); the flat parameters checkpoint, resume and export by their original names. On the H200 this
    config crashed with "Must flatten tensors with uniform requires_grad" (bench/results/gpu_pytest_s4_call4.log)."""
    keys = fsdp(1, "FULL_STATE_DICT")
    keys["fsdp_config"]["fsdp_use_orig_params"] = False
    train_resume_and_reload(
        make_config,
        tiny,
        "lora-fsdp1-flat",
        lora_reference,
        expect_in_log="the adapter's trainable layers are FSDP units of their own",
        **LORA,
        **keys,
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


# The seed's QLoRA + FSDP overlay merged on llama3-lora.yml (as issue 13 ran it), changed only where a CPU
# and this comparison need it: the tiny Llama and its layer class, float32 compute, AdamW from torch
# (bitsandbytes' 8-bit optimizers need CUDA), no LoRA dropout (two ranks draw other dropout masks than one
# process), a learning rate that moves the adapter in 6 steps.
def qlora_overlay(version: int | None) -> dict:
    fsdp_config = {
        "fsdp_offload_params": False,
        "fsdp_state_dict_type": "FULL_STATE_DICT",
        "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
    }
    if version is not None:
        fsdp_config["fsdp_version"] = version
    return {
        "fsdp_config": fsdp_config,
        "bnb_4bit_compute_dtype": "float32",
        "optimizer": "adamw_torch",
        "lora_dropout": 0.0,
        "learning_rate": 0.01,
        "warmup_steps": 1,
        "flash_attention": False,
        "sdp_attention": True,
        "eval_steps": None,
        "saves_per_epoch": None,
    }


@pytest.fixture(scope="module")
def qlora_reference(seed_mapping, tiny, tmp_path_factory):
    pytest.importorskip("bitsandbytes")
    os.environ[CPU_NF4] = "1"
    try:
        directory = tmp_path_factory.mktemp("qlora-ref")
        cfg, _ = build_config(
            seed_mapping,
            tiny,
            directory,
            overlay_file=QLORA_FSDP_OVERLAY,
            gradient_accumulation_steps=2,
            **STEPS | qlora_overlay(None),
        )
        run, summary = train_in_process(cfg)
        return summary, logits_of(run.accelerator.unwrap_model(run.module).model, probe_ids(tiny))
    finally:
        del os.environ[CPU_NF4]


# None: fsdp_version unset, as in the seed (FSDP1); fsdp_use_orig_params false as Axolotl's QLoRA + FSDP
# examples set it (flat parameters; the adapter's layers wrapped apart)
@pytest.mark.parametrize(("version", "use_orig_params"), [(None, None), (2, None), (None, False)])
def test_seed_qlora_fsdp_overlay_trains_checkpoints_resumes_and_saves_the_trained_adapter(
    make_config, tiny, qlora_reference, monkeypatch, version, use_orig_params
):
    """The 4-bit base under FSDP with FULL_STATE_DICT: its first checkpoint crashed (issue 13)."""
    monkeypatch.setenv(CPU_NF4, "1")  # the reload below quantizes the base on the CPU too
    name = f"qlora-fsdp{version or 1}" + ("-flat" if use_orig_params is False else "")
    keys = qlora_overlay(version)
    if use_orig_params is not None:
        keys["fsdp_config"]["fsdp_use_orig_params"] = use_orig_params
    cfg, _ = make_config(name, overlay_file=QLORA_FSDP_OVERLAY, gradient_accumulation_steps=1, **STEPS | keys)
    assert (
        cfg.adapter == "qlora"
        and cfg.load_in_4bit
        and cfg.fsdp_config.fsdp_state_dict_type == "FULL_STATE_DICT"
    )
    model = train_resume_and_reload(
        make_config,
        tiny,
        name,
        qlora_reference,
        env=CPU_FSDP | {CPU_NF4: "1"},
        overlay_file=QLORA_FSDP_OVERLAY,
        quantization_config=nf4_as_trained(),
        # 2.2e-4 measured: bitsandbytes' CPU 4-bit matmuls and the two ranks' float32 gradient sums
        # round differently from one process's, over 6 steps; a lost adapter is off by far more
        # (assert_adapter_matters).
        atol=1e-3,
        **keys,
    )
    # plain peft put the adapter onto the un-sharded 4-bit base, and that model gave the trained logits
    import bitsandbytes as bnb

    assert any(isinstance(module, bnb.nn.Linear4bit) for module in model.modules())


def nf4_as_trained():
    """The base quantized as kubetune quantized it for training (nf4, double quantization, float32
    compute; FSDP packs the 4-bit weights in the float32 storage of the other parameters)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
        bnb_4bit_quant_storage=torch.float32,
    )


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_fsdp2_cpu_ram_efficient_loading_follows_the_single_process_run(
    make_config, tiny, lora_reference, full_reference, adapter
):
    """fsdp_cpu_ram_efficient_loading: rank 1 builds the model without the weights and receives rank 0's
    when FSDP2 shards it; a rank that kept its zeros (or other values) would leave the loss curve."""
    keys = LORA if adapter == "lora" else FULL
    expected = lora_reference if adapter == "lora" else full_reference
    overlay = fsdp(2, "SHARDED_STATE_DICT")
    overlay["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] = True
    train_resume_and_reload(
        make_config,
        tiny,
        f"{adapter}-ram-efficient",
        expected,
        expect_in_log="ranks that read the weights: 0\n",  # rank 1 built its model from zeros
        **keys,
        **overlay,
    )


def test_fsdp2_with_a_bitsandbytes_optimizer_name_trains_checkpoints_resumes_and_saves(
    seed_mapping, make_config, tiny, tmp_path
):
    """adamw_bnb_8bit under FSDP2 (the seed's optimizer with fsdp_version 2): served by torchao's 8-bit AdamW,
    whose states FSDP2 shards and accelerate checkpoints; the run follows one process using torchao's
    8-bit AdamW by its own name (adamw_torch_8bit)."""
    pytest.importorskip("torchao.optim")
    expected = reference(seed_mapping, tiny, tmp_path / "ref", optimizer="adamw_torch_8bit", **LORA)
    train_resume_and_reload(
        make_config,
        tiny,
        "lora-fsdp2-bnb-name",
        expected,
        expect_in_log="optimizer adamw_bnb_8bit under FSDP2: served by torchao.optim.AdamW8bit",
        optimizer="adamw_bnb_8bit",
        **LORA,
        **fsdp(2, "SHARDED_STATE_DICT"),
    )
