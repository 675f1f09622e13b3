"""The engine on CUDA (run on a lent H200: `pytest -m gpu tests/gpu`): attention kernels with packing,
bf16 LoRA, QLoRA (bitsandbytes nf4), FSDP 1/2 and DeepSpeed ZeRO on NCCL, with checkpoint resume.

Multi-process tests use `torchrun --nproc-per-node min(2, GPUs)`: on a one-GPU machine they still run
the sharded wrappers, their checkpoint formats and NCCL, just without a second rank.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.unit.train.reload import assert_every_lora_tensor_trained, assert_reproduces, load_result
from tests.unit.train.support import torchrun_train
from tests.unit.train.test_attention import packed_vs_alone
from tests.unit.train.test_runs import LORA, assert_learned, logits_of, probe_ids, train_in_process

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
needs = {
    name: pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"needs {name}")
    for name in ("bitsandbytes", "deepspeed", "flash_attn")
}


@pytest.mark.parametrize(
    ("name", "implementation", "dtype", "atol"),
    [
        ("sdpa", "sdpa", torch.float32, 1e-4),
        ("flex", "flex_attention", torch.float32, 1e-4),
        pytest.param("flash_varlen", "flash_attention_2", torch.bfloat16, 3e-2, marks=needs["flash_attn"]),
    ],
)
def test_packing_boundaries_hold_on_cuda(tiny, name, implementation, dtype, atol):
    from kubetune.train.attention import AttentionBackend

    backend = AttentionBackend(name, implementation)
    packed_vs_alone(tiny["model"], backend, atol=atol, device="cuda", dtype=dtype)


def test_bf16_lora_on_one_gpu_learns_and_plain_peft_reproduces_it(make_config, tiny):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, _ = make_config(
        "lora-gpu", bf16=True, flash_attention=True, sdp_attention=False, learning_rate=0.02, **LORA
    )
    run, summary = train_in_process(cfg)
    assert summary["attention"] in ("flash_varlen", "torch_varlen", "flex")  # flash asked: never dense SDPA
    assert_learned(summary)
    ids = probe_ids(tiny).cuda()
    trained = logits_of(run.accelerator.unwrap_model(run.module).model, ids).float()
    base = AutoModelForCausalLM.from_pretrained(tiny["model"], dtype=torch.bfloat16).cuda()
    reloaded = logits_of(PeftModel.from_pretrained(base, cfg.output_dir), ids).float()
    assert (reloaded - trained).abs().max() < 0.05  # bf16 rounding, not a different model
    assert summary["peak_mem_gib"] is not None


def test_sdpa_on_cuda(make_config):
    cfg, _ = make_config("sdpa-gpu", bf16=True, sdp_attention=True, max_steps=5, **LORA)
    _, summary = train_in_process(cfg)
    assert summary["attention"] == "sdpa" and summary["steps"] == 5


@needs["bitsandbytes"]
def test_qlora_nf4_double_quant_learns(make_config, tiny):
    import bitsandbytes as bnb

    cfg, _ = make_config(
        "qlora-gpu",
        adapter="qlora",
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype="bfloat16",
        bf16=True,
        optimizer="paged_adamw_8bit",
        learning_rate=0.02,
        **LORA,
    )
    run, summary = train_in_process(cfg)
    model = run.accelerator.unwrap_model(run.module).model
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and quantized[0].weight.quant_state.nested  # double quantization
    assert quantized[0].weight.quant_state.quant_type == "nf4"
    assert_learned(summary)
    assert (Path(cfg.output_dir) / "adapter_model.safetensors").is_file()


def torchrun(path: Path, *, timeout: int = 540) -> subprocess.CompletedProcess:
    return torchrun_train(path, min(2, torch.cuda.device_count()), timeout=timeout)


def train_resume_and_reload(make_config, tiny, name: str, **keys) -> dict:
    """Run 6 steps with a checkpoint at 3; run again from that checkpoint (the outputs removed), which
    must resume at step 3 and finish; the saved result must load with transformers / peft."""
    cfg, path = make_config(name, bf16=True, max_steps=6, save_steps=3, learning_rate=0.005, **keys)
    out = Path(cfg.output_dir)
    first = torchrun(path)
    assert first.returncode == 0, first.stderr[-4000:]
    assert (out / "checkpoints" / "checkpoint-3" / "COMPLETE").is_file()
    for leftover in out.iterdir():
        if leftover.name != "checkpoints":
            leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover)
    second = torchrun(path)
    assert second.returncode == 0, second.stderr[-4000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["resumed_from_step"] == 3 and summary["steps"] == 6
    assert summary["world_size"] == min(2, torch.cuda.device_count())
    # A lost result still loads and gives finite logits: the loaders' warnings about missing weights fail
    # the test, every LoRA tensor must have left its initial value, and the reloaded model must give the
    # logits of a single-process run with the same global batch (its live model).
    if (out / "adapter_config.json").is_file():
        assert_every_lora_tensor_trained(out, expected_lora_layers=2 * 7)
    single_cfg, _ = make_config(
        f"{name}-single",
        bf16=True,
        max_steps=6,
        learning_rate=0.005,
        gradient_accumulation_steps=min(2, torch.cuda.device_count()),
        **{key: value for key, value in keys.items() if key not in ("fsdp", "fsdp_config", "deepspeed")},
    )
    run, _ = train_in_process(single_cfg)
    ids = probe_ids(tiny).cuda()
    trained = logits_of(run.accelerator.unwrap_model(run.module).model, ids).float()
    model = load_result(tiny["model"], out, dtype=torch.bfloat16, device="cuda")
    assert_reproduces(model, ids, trained, atol=0.05)  # bf16 rounding of 2 ranks vs 1 process
    return summary


FULL = {"adapter": None, "lora_r": None, "lora_alpha": None, "lora_target_modules": None}


@pytest.mark.parametrize("version", [1, 2])
def test_fsdp_full_fine_tune_checkpoints_and_resumes(make_config, tiny, version):
    fsdp = {
        "fsdp": ["full_shard", "auto_wrap"],
        "fsdp_config": {
            "fsdp_version": version,
            "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        },
    }
    train_resume_and_reload(make_config, tiny, f"fsdp{version}", **FULL, **fsdp)


def test_fsdp_lora(make_config, tiny):
    fsdp = {
        "fsdp": ["full_shard", "auto_wrap"],
        "fsdp_config": {"fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer"},
    }
    train_resume_and_reload(make_config, tiny, "fsdp-lora", **LORA, **fsdp)


@needs["deepspeed"]
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_zero_checkpoints_and_resumes(make_config, tiny, tmp_path, stage):
    config = tmp_path / f"zero{stage}.json"
    config.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": stage},
                "bf16": {"enabled": "auto"},
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
            }
        )
    )
    keys = FULL if stage == 3 else LORA
    train_resume_and_reload(make_config, tiny, f"zero{stage}", deepspeed=str(config), **keys)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_on_nccl_matches_one_process(make_config):
    steps = {"max_steps": 8, "learning_rate": 0.01, "bf16": False, **LORA}
    single_cfg, _ = make_config("single", micro_batch_size=2, gradient_accumulation_steps=2, **steps)
    _, single = train_in_process(single_cfg)
    ddp_cfg, ddp_path = make_config("ddp", micro_batch_size=2, gradient_accumulation_steps=1, **steps)
    result = torchrun(ddp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    ddp = json.loads((Path(ddp_cfg.output_dir) / "training_summary.json").read_text())
    assert [e["loss"] for e in ddp["history"]] == pytest.approx(
        [e["loss"] for e in single["history"]], rel=2e-3
    )
