"""The N-D layouts of tests/unit/train/test_nd_cpu.py on CUDA GPUs (NCCL), for the multi-GPU verification:
`pytest -m gpu tests/gpu/test_nd_gpu.py` on 2 or 4 GPUs. Each layout skips without the GPUs it needs.

Same runs as on CPU (6 steps, checkpoint at 3, resume, the adapter loaded by plain peft), in float32
(bf16: false) so that the only differences from the one-process reference are the order of reductions
across GPUs (NCCL) against one GPU's: hence looser tolerances than on CPU.
"""

from __future__ import annotations

import pytest
import torch

from tests.unit.train.test_nd_cpu import CPU_FSDP2, run_resume_and_reload, start_adapter  # noqa: F401

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU_TOLERANCE = {"losses_rel": 1e-3, "resumed_rel": 1e-4, "logits_atol": 1e-3}
FLOAT32 = {"bf16": False, "fp16": False, "tf32": False}


def needs_gpus(count: int):
    return pytest.mark.skipif(torch.cuda.device_count() < count, reason=f"needs {count} GPUs")


@needs_gpus(2)
def test_tensor_parallel_2_on_gpus(seed_mapping, tiny_tp, start_adapter, tmp_path):  # noqa: F811
    run_resume_and_reload(
        seed_mapping, tiny_tp, start_adapter, tmp_path, nproc=2, accumulation=1, tolerance=GPU_TOLERANCE, common=FLOAT32,
        tensor_parallel_size=2,
    )  # fmt: skip


@needs_gpus(2)
def test_dp_shard_2_on_gpus(seed_mapping, tiny_tp, start_adapter, tmp_path):  # noqa: F811
    run_resume_and_reload(
        seed_mapping, tiny_tp, start_adapter, tmp_path, nproc=2, accumulation=2, tolerance=GPU_TOLERANCE, common=FLOAT32,
        dp_shard_size=2, **CPU_FSDP2,
    )  # fmt: skip


@needs_gpus(4)
def test_hsdp_2x2_on_gpus(seed_mapping, tiny_tp, start_adapter, tmp_path):  # noqa: F811
    run_resume_and_reload(
        seed_mapping, tiny_tp, start_adapter, tmp_path, nproc=4, accumulation=4, tolerance=GPU_TOLERANCE, common=FLOAT32,
        dp_replicate_size=2, dp_shard_size=2, **CPU_FSDP2,
    )  # fmt: skip


@needs_gpus(4)
def test_tensor_parallel_2_x_dp_shard_2_on_gpus(seed_mapping, tiny_tp, start_adapter, tmp_path):  # noqa: F811
    run_resume_and_reload(
        seed_mapping, tiny_tp, start_adapter, tmp_path, nproc=4, accumulation=2, tolerance=GPU_TOLERANCE, common=FLOAT32,
        tensor_parallel_size=2, dp_shard_size=2, **CPU_FSDP2,
    )  # fmt: skip


@needs_gpus(2)
def test_context_parallel_2_on_gpus(seed_mapping, tiny_tp, start_adapter, tmp_path):  # noqa: F811
    run_resume_and_reload(
        seed_mapping, tiny_tp, start_adapter, tmp_path, nproc=2, accumulation=1, tolerance=GPU_TOLERANCE,
        common={**FLOAT32, "sequence_len": 256}, context_parallel_size=2, ring_attn=True, **CPU_FSDP2,
    )  # fmt: skip


@needs_gpus(4)
def test_tensor_parallel_2_x_context_parallel_2_on_gpus(seed_mapping, tiny_tp, start_adapter, tmp_path):  # noqa: F811
    run_resume_and_reload(
        seed_mapping, tiny_tp, start_adapter, tmp_path, nproc=4, accumulation=1, tolerance=GPU_TOLERANCE,
        common={**FLOAT32, "sequence_len": 256}, tensor_parallel_size=2, context_parallel_size=2, ring_attn=True,
        **CPU_FSDP2,
    )  # fmt: skip
