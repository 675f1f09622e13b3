"""N-D parallelism on CPU processes (gloo), float32, against one process with the same global batch.

First the libraries themselves: peft's LoRA layers over transformers' DTensor tensor-parallel layers
(the Llama tp_plan), with the DTensor collectives carried by gloo.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from . import tp_lora_worker
from .support import subprocess_env

pytestmark = pytest.mark.slow


def test_peft_lora_over_tensor_parallel_layers_matches_one_process(tiny_tp, tmp_path):
    torch.manual_seed(0)
    reference = tp_lora_worker.lora_model(tiny_tp["model"])
    torch.save(tp_lora_worker.trainable(reference), tmp_path / "initial.pt")
    expected_losses = tp_lora_worker.train(reference)
    expected = tp_lora_worker.trainable(reference)

    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        tp_lora_worker.__file__, tiny_tp["model"], str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "tp.json").read_text())
    # peft follows the base layer's sharding: lora_B of a column-wise layer is sharded on its output
    # rows, lora_A of a row-wise layer on its input columns; the other factor is a plain replicated tensor.
    placements = report["placements"]
    layer = "base_model.model.model.layers.0."
    assert placements[layer + "self_attn.q_proj.lora_B.default.weight"] == ["S(0)"]
    assert placements[layer + "self_attn.q_proj.lora_A.default.weight"] is None
    assert placements[layer + "mlp.down_proj.lora_A.default.weight"] == ["S(1)"]
    assert placements[layer + "mlp.down_proj.lora_B.default.weight"] is None
    assert report["losses"] == pytest.approx(expected_losses, rel=1e-5)
    got = torch.load(tmp_path / "tp.pt")
    assert got.keys() == expected.keys() and len(got) == 2 * 2 * 7  # 2 layers x 7 linears x (A, B)
    for name, weight in expected.items():
        # 4 SGD steps at lr 1 move each adapter by ~0.1; a missing all-reduce would be off by that much
        torch.testing.assert_close(got[name], weight, rtol=0, atol=1e-6, msg=name)
