"""QAT on a CUDA GPU in bf16 (`pytest -m gpu tests/gpu/test_qat_gpu.py`): the int8/int4 and emulated mxfp4
schemes train with the liger switches on (as Axolotl's QAT examples set them) and save the plain model;
nvfp4 runs on a Blackwell GPU and stops at start on an older one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.unit.train.test_runs import train_in_process

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

FULL = dict.fromkeys(("adapter", "lora_r", "lora_alpha", "lora_target_modules"))
# The switches Axolotl's QAT examples set (LigerPlugin + liger_*), and their precision.
EXAMPLE_KEYS = {
    "bf16": True,
    "gradient_checkpointing": True,
    "liger_rms_norm": True,
    "liger_glu_activation": True,
    "liger_rope": True,
    "liger_fused_linear_cross_entropy": True,
    "max_steps": 8,
    "learning_rate": 0.005,
}
SCHEMES = {
    "int8-int4": {"activation_dtype": "int8", "weight_dtype": "int4", "group_size": 32},
    "int8-int4-late": {
        "activation_dtype": "int8",
        "weight_dtype": "int4",
        "group_size": 32,
        "fake_quant_after_n_steps": 4,
    },
    "mxfp4": {"activation_dtype": "mxfp4", "weight_dtype": "mxfp4", "group_size": 32},
}


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_qat_trains_in_bf16_on_cuda_and_saves_the_plain_model(make_config, scheme, caplog):
    from tests.unit.train.reload import load_full_model

    cfg, _ = make_config(scheme, qat=SCHEMES[scheme], **EXAMPLE_KEYS, **FULL)
    with caplog.at_level("INFO"):
        run, summary = train_in_process(cfg)
    assert "qat: 15 linear layers fake-quantized" in caplog.text
    model = run.accelerator.unwrap_model(run.module).model
    assert type(model.lm_head).__name__ in ("FakeQuantizedLinear", "MXFakeQuantizedLinear")
    assert model.lm_head.weight.is_cuda and model.lm_head.weight.dtype == torch.bfloat16
    losses = [entry["loss"] for entry in summary["history"]]
    assert len(losses) == 8 and all(loss == loss for loss in losses) and losses[-1] < losses[0]
    reloaded = load_full_model(Path(cfg.output_dir))
    assert not any(type(m).__name__.endswith("FakeQuantizedLinear") for m in reloaded.modules())


def test_nvfp4_runs_on_blackwell_and_stops_at_start_elsewhere(make_config):
    from kubetune.train.errors import UserError

    block = {"activation_dtype": "nvfp4", "weight_dtype": "nvfp4", "group_size": 16}
    cfg, _ = make_config("nvfp4", qat=block, **EXAMPLE_KEYS, **FULL)
    if torch.cuda.get_device_capability() < (10, 0):
        with pytest.raises(UserError, match="Blackwell"):
            train_in_process(cfg)
        assert not Path(cfg.output_dir).exists()  # stopped before anything was written
        return
    _, summary = train_in_process(cfg)
    assert (
        json.loads((Path(cfg.output_dir) / "training_summary.json").read_text())["steps"] == summary["steps"]
    )
