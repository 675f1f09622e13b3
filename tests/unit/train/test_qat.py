"""Quantization-aware training (qat:) on the tiny model: fake quantization in the training forward, its
late start (fake_quant_after_n_steps), the saved result, and what the machine cannot run."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from kubetune.config.qat import QATBlock
from kubetune.train import qat
from kubetune.train.errors import UserError
from torch import nn

from .reload import load_full_model
from .test_runs import logits_of, probe_ids, train_in_process

FULL = dict.fromkeys(("adapter", "lora_r", "lora_alpha", "lora_target_modules"))
INT4 = {"activation_dtype": "int8", "weight_dtype": "int4", "group_size": 32}


def _cfg(**block) -> SimpleNamespace:
    return SimpleNamespace(qat=QATBlock(**block))


@pytest.fixture(scope="module")
def wide_model(tiny):
    """A tiny Llama 256 wide (the fixture's is 64, below a 256 group)."""
    from kubetune.tiny import build_tiny_llama
    from transformers import AutoTokenizer

    model = build_tiny_llama(
        AutoTokenizer.from_pretrained(tiny["model"]), hidden_size=256, intermediate_size=512
    )
    return model.eval()


def _error(model: nn.Module, ids: torch.Tensor, **block) -> float:
    """Largest logit change fake quantization makes on the same weights."""
    prepared = copy.deepcopy(model)
    assert qat.prepare(_cfg(**block), prepared) == 2 * 7 + 1  # 7 linears per layer, and the output head
    assert not any(type(module) is nn.Linear for module in prepared.modules())
    for name, weight in model.state_dict().items():  # same weights, same names: only the forward changed
        torch.testing.assert_close(prepared.state_dict()[name], weight, rtol=0, atol=0)
    return (logits_of(prepared, ids) - logits_of(model, ids)).abs().max().item()


def test_fake_quantization_changes_the_forward_as_the_scheme_says(wide_model, tiny):
    ids = probe_ids(tiny)
    group_32 = _error(wide_model, ids, **INT4)
    group_256 = _error(wide_model, ids, **(INT4 | {"group_size": 256}))
    weights_only = _error(wide_model, ids, weight_dtype="int4", group_size=32)
    mxfp4 = _error(wide_model, ids, activation_dtype="mxfp4", weight_dtype="mxfp4", group_size=32)
    # A scale per 32 weights follows them more closely than one per 256; int8 activations add error.
    assert 0 < group_32 < group_256
    assert 0 < weights_only < group_32
    assert mxfp4 > 0 and len({group_32, group_256, weights_only, mxfp4}) == 4


def test_a_group_size_that_does_not_divide_a_layer_stops_the_run(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny["model"])  # 64 wide
    with pytest.raises(
        UserError, match=r"group_size 256 does not divide the input width of 15 linear"
    ) as err:
        qat.prepare(_cfg(**(INT4 | {"group_size": 256})), model)
    assert "model.layers.0.self_attn.q_proj (64)" in str(err.value) and err.value.key == "qat.group_size"


def test_nvfp4_needs_a_blackwell_gpu():
    with pytest.raises(UserError, match="Blackwell") as err:
        qat.check_request(_cfg(activation_dtype="nvfp4", weight_dtype="nvfp4", group_size=16), cuda=False)
    assert "no CUDA GPU" in str(err.value) and err.value.key == "qat.weight_dtype"
    qat.check_request(_cfg(**INT4), cuda=False)  # the int and MX schemes run anywhere


def test_the_switch_turns_fake_quantization_on_at_its_step(wide_model, tiny):
    ids = probe_ids(tiny)
    model = copy.deepcopy(wide_model)
    qat.prepare(_cfg(**INT4), model)
    quantized = logits_of(model, ids)
    switch = qat.FakeQuantSwitch(model, after_steps=3)
    for step in range(3):
        switch.step_begins(step)
        torch.testing.assert_close(logits_of(model, ids), logits_of(wide_model, ids), rtol=0, atol=0)
    switch.step_begins(3)
    torch.testing.assert_close(logits_of(model, ids), quantized, rtol=0, atol=0)
    resumed = qat.FakeQuantSwitch(model, after_steps=3)
    resumed.step_begins(5)  # a run resumed past the switch starts with it on
    torch.testing.assert_close(logits_of(model, ids), quantized, rtol=0, atol=0)


@pytest.mark.slow
def test_qat_trains_with_fake_quantization_from_its_step_and_saves_plain_weights(make_config, tiny):
    steps = {"max_steps": 6, "learning_rate": 0.005, **FULL}
    _, plain = train_in_process(make_config("plain", **steps)[0])
    late_cfg, _ = make_config("late", qat=INT4 | {"fake_quant_after_n_steps": 3}, **steps)
    run, late = train_in_process(late_cfg)

    plain_losses = [entry["loss"] for entry in plain["history"]]
    late_losses = [entry["loss"] for entry in late["history"]]
    # Steps 1-3 train without fake quantization: the plain run's losses, exactly. Step 4 is the first
    # with it: its forward sees rounded weights and activations, so its loss is another one.
    assert late_losses[:3] == plain_losses[:3]
    assert late_losses[3] != pytest.approx(plain_losses[3], rel=1e-4)

    # The result is the plain model (what Axolotl saves after its convert step): transformers loads it
    # with plain Linear layers and the trained weights; its logits are the trained model's with fake
    # quantization off, and torchao quantizes it with the scheme's PTQ config.
    trained = run.accelerator.unwrap_model(run.module).model
    reloaded = load_full_model(Path(late_cfg.output_dir))
    assert not any(type(m).__name__.startswith("FakeQuantized") for m in reloaded.modules())
    ids = probe_ids(tiny)
    fake_quantized = logits_of(trained, ids)
    qat.FakeQuantSwitch(trained, after_steps=1_000).step_begins(0)
    torch.testing.assert_close(logits_of(reloaded, ids), logits_of(trained, ids), rtol=0, atol=1e-5)
    assert (logits_of(reloaded, ids) - fake_quantized).abs().max() > 1e-3

    from torchao.quantization import quantize_

    quantize_(reloaded, qat.ptq_config(late_cfg.qat))
    assert (logits_of(reloaded, ids) - fake_quantized).abs().max() < 0.1 * fake_quantized.abs().max()


@pytest.fixture(scope="module")
def qat_reference(seed_mapping, tiny, tmp_path_factory):
    """(summary, logits of the trained weights without fake quantization) of one process, QAT int8/int4."""
    from .support import build_config

    keys = {"gradient_accumulation_steps": 2, "micro_batch_size": 2, "max_steps": 6, "save_steps": 3}
    cfg, _ = build_config(
        seed_mapping, tiny, tmp_path_factory.mktemp("qat-ref"), learning_rate=0.01, qat=INT4, **keys, **FULL
    )
    run, summary = train_in_process(cfg)
    model = run.accelerator.unwrap_model(run.module).model
    qat.FakeQuantSwitch(model, after_steps=1_000).step_begins(0)  # the saved model is the plain one
    return summary, logits_of(model, probe_ids(tiny))


@pytest.fixture(scope="module")
def plain_reference(seed_mapping, tiny, tmp_path_factory):
    """The same single-process run without qat."""
    from .test_fsdp_cpu import reference

    return reference(seed_mapping, tiny, tmp_path_factory.mktemp("plain-ref"), **FULL)


@pytest.mark.slow
@pytest.mark.parametrize("version", ["ddp", 1, 2])
def test_qat_on_two_processes_follows_one_process_resumes_and_saves_the_plain_model(
    make_config, tiny, qat_reference, plain_reference, version
):
    """As Axolotl's QAT examples run it (full fine-tune; DDP, or FSDP2 with fsdp_cpu_ram_efficient_loading):
    each rank fake-quantizes the whole (gathered) weights, so 2 ranks follow the single-process QAT run."""
    from .reload import load_result
    from .support import torchrun_train
    from .test_fsdp_cpu import CPU_FSDP, fsdp, losses

    keys = {}
    if version != "ddp":
        keys = fsdp(version, "SHARDED_STATE_DICT")
        keys["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] = version == 2
    steps = {"max_steps": 6, "save_steps": 3, "learning_rate": 0.01, "micro_batch_size": 2}
    cfg, path = make_config(f"qat-{version}", qat=INT4, **steps, **FULL, **keys)
    out = Path(cfg.output_dir)
    first = torchrun_train(path, 2, timeout=600, env=CPU_FSDP)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "qat: 15 linear layers" in first.stderr
    assert version == "ddp" or f"FSDP{version} on CPU processes (gloo)" in first.stderr
    expected, expected_logits = qat_reference
    sharded = losses(json.loads((out / "training_summary.json").read_text()))
    # Steps 1-2: the single-process QAT losses, and not the plain run's (0.7% apart at step 2). Later
    # steps: within 1%, not exactly, as the ranks' other summation order moves a weight by 1e-7 and some
    # weights then round to the next int4 level.
    plain, single = losses(plain_reference[0]), losses(expected)
    for step, same, other in ((1, 1e-5, 2e-5), (2, 1e-4, 1e-3)):
        assert sharded[step] == pytest.approx(single[step], rel=same)
        assert sharded[step] != pytest.approx(plain[step], rel=other)
    assert sharded == pytest.approx(single, rel=1e-2)

    for leftover in out.iterdir():
        if leftover.name != "checkpoints":
            leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover)
    second = torchrun_train(path, 2, timeout=600, env=CPU_FSDP)
    assert second.returncode == 0, second.stderr[-4000:]
    resumed = json.loads((out / "training_summary.json").read_text())
    assert resumed["resumed_from_step"] == 3
    assert {s: v for s, v in losses(resumed).items() if s > 3} == pytest.approx(
        {s: v for s, v in sharded.items() if s > 3}, rel=1e-5
    )
    model = load_result(tiny["model"], out)  # plain transformers; a lost weight fails here
    assert not any(type(m).__name__.startswith("FakeQuantized") for m in model.modules())
    torch.testing.assert_close(logits_of(model, probe_ids(tiny)), expected_logits, rtol=0, atol=0.1)
