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


# (id, processes, gradient accumulation, extra common keys, layout keys): the layouts of test_nd_cpu.py.
# Each needs one GPU per process; the global batch (accumulation x data-parallel ranks) is the reference's.
PACKED = {"sequence_len": 256}
LAYOUTS = [
    ("tensor_parallel_2", 2, 1, {}, {"tensor_parallel_size": 2}),
    ("dp_shard_2", 2, 2, {}, {"dp_shard_size": 2, **CPU_FSDP2}),
    ("hsdp_2x2", 4, 4, {}, {"dp_replicate_size": 2, "dp_shard_size": 2, **CPU_FSDP2}),
    ("tensor_parallel_2_x_dp_shard_2", 4, 2, {}, {"tensor_parallel_size": 2, "dp_shard_size": 2, **CPU_FSDP2}),
    ("context_parallel_2", 2, 1, PACKED, {"context_parallel_size": 2, "ring_attn": True, **CPU_FSDP2}),
    ("tensor_parallel_2_x_context_parallel_2", 4, 1, PACKED,
     {"tensor_parallel_size": 2, "context_parallel_size": 2, "ring_attn": True, **CPU_FSDP2}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("nproc", "accumulation", "common", "layout"),
    [
        pytest.param(
            nproc, accumulation, common, layout, id=name,
            marks=pytest.mark.skipif(torch.cuda.device_count() < nproc, reason=f"needs {nproc} GPUs"),
        )
        for name, nproc, accumulation, common, layout in LAYOUTS
    ],
)  # fmt: skip
def test_layout_on_gpus(seed_mapping, tiny_tp, start_adapter, tmp_path, nproc, accumulation, common, layout):  # noqa: F811
    run_resume_and_reload(
        seed_mapping, tiny_tp, start_adapter, tmp_path, nproc=nproc, accumulation=accumulation,
        tolerance=GPU_TOLERANCE, common={**FLOAT32, **common}, **layout,
    )  # fmt: skip
