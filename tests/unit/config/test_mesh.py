"""The device mesh from the parallelism keys (kubetune.config.mesh): sizes, the derived dimension, the
arithmetic against the world size and the pod boundary, in the words a user reads."""

from __future__ import annotations

import pytest
import yaml
from kubetune.config.mesh import MeshLayout, layout_problems, resolve_layout
from kubetune.config.schema import TrainConfig

from tests.paths import SEED_DIR

FSDP2 = {"fsdp": ["full_shard", "auto_wrap"], "fsdp_config": {"fsdp_version": 2}}


def typed(seed_mapping, **keys) -> TrainConfig:
    """The schema alone (the rules refuse the mesh keys until the runtime honours them)."""
    return TrainConfig.model_validate({**seed_mapping, **keys})


def test_seed_overlay_keeps_tp_and_cp_in_a_node_and_shards_across_nodes(seed_mapping):
    overlay = yaml.safe_load((SEED_DIR / "nd-parallel.overlay.yml").read_text())
    cfg = typed(seed_mapping, **overlay)
    layout, problems = resolve_layout(cfg, world_size=16)  # 2 nodes x 8 GPUs
    assert problems == []
    assert layout == MeshLayout(dp_replicate=1, dp_shard=2, cp=2, tp=4)
    assert layout.in_pod == 8 and layout.data_parallel == 2 and layout.is_nd
    assert layout.describe() == "dp_replicate 1 × dp_shard 2 × cp 2 × tp 4 = 16"
    assert layout_problems(cfg, world_size=16, processes_per_node=8) == []
    # 4 GPUs per node would split a tp x cp group of 8 across two pods
    (problem,) = layout_problems(cfg, world_size=16, processes_per_node=4)
    assert problem.path == "tensor_parallel_size"
    assert "context_parallel_size 2 × tensor_parallel_size 4 = 8" in problem.message
    assert "one pod, which runs 4" in problem.message


@pytest.mark.parametrize(
    ("keys", "world", "expected"),
    [
        ({}, 4, MeshLayout(dp_replicate=4)),  # plain DDP
        (FSDP2, 4, MeshLayout(dp_shard=4)),  # plain FSDP
        ({**FSDP2, "dp_replicate_size": 2}, 4, MeshLayout(dp_replicate=2, dp_shard=2)),  # HSDP
        ({"tensor_parallel_size": 2}, 2, MeshLayout(tp=2)),
        ({**FSDP2, "tensor_parallel_size": 2}, 4, MeshLayout(dp_shard=2, tp=2)),
        ({"dp_shard_size": 2, "tensor_parallel_size": 2}, 8, MeshLayout(dp_replicate=2, dp_shard=2, tp=2)),
        ({"dp_shard_size": 2, "dp_replicate_size": 2, "context_parallel_size": 2}, 8, MeshLayout(2, 2, 2, 1)),
    ],
)
def test_the_unset_data_parallel_size_takes_the_rest(seed_mapping, keys, world, expected):
    layout, problems = resolve_layout(typed(seed_mapping, **keys), world)
    assert problems == [] and layout == expected and layout.size == world


def test_product_must_equal_the_world_with_the_arithmetic_in_the_message(seed_mapping):
    cfg = typed(seed_mapping, **FSDP2, dp_shard_size=2, dp_replicate_size=2, tensor_parallel_size=2)
    (problem,) = layout_problems(cfg, world_size=4, processes_per_node=4)
    assert problem.path == "dp_replicate_size"
    assert problem.message == (
        "the mesh needs dp_replicate 2 × dp_shard 2 × cp 1 × tp 2 = 8 processes, but the job has 4"
    )
    assert "dp_shard_size 2 × context_parallel_size 1 × tensor_parallel_size 2 equal 4" in problem.fix

    cfg = typed(seed_mapping, **FSDP2, tensor_parallel_size=4)
    (problem,) = layout_problems(cfg, world_size=6, processes_per_node=6)
    assert problem.path == "tensor_parallel_size"
    assert "tensor_parallel_size 4 = 4 does not divide the job's 6 processes" in problem.message


def test_data_parallel_alone_never_has_a_problem(seed_mapping):
    for world, per_node in ((1, 1), (3, 3), (16, 8)):
        assert layout_problems(typed(seed_mapping), world_size=world, processes_per_node=per_node) == []
        assert resolve_layout(typed(seed_mapping, **FSDP2), world)[0] == MeshLayout(dp_shard=world)


def test_tensor_parallel_beside_pure_replication_is_refused(seed_mapping):
    """tp 2 on 4 processes without fsdp leaves dp_replicate 2, dp_shard 1: accelerate composes TP with
    FSDP2 only, so the layout is refused with the arithmetic instead of failing at start-up."""
    cfg = typed(seed_mapping, tensor_parallel_size=2)
    assert layout_problems(cfg, world_size=2, processes_per_node=2) == []
    (problem,) = layout_problems(cfg, world_size=4, processes_per_node=4)
    assert problem.path == "tensor_parallel_size"
    assert "dp_replicate 2 × dp_shard 1 × cp 1 × tp 2 = 4 replicates" in problem.message
    assert problem.fix == "add `fsdp` to shard the data-parallel ranks, or run 2 processes (one model)"


def test_tensor_parallel_beside_a_set_replication_size_is_told_to_shard_instead(seed_mapping):
    """With fsdp already set, dp_replicate_size 2 leaves dp_shard 1 on 2 pods × 2 processes (the FineTuneJob
    of issue 19's point 4): the fix names the size to change, not `fsdp`."""
    cfg = typed(seed_mapping, **FSDP2, tensor_parallel_size=2, dp_replicate_size=2)
    replicated, no_shards = layout_problems(cfg, world_size=4, processes_per_node=2)
    assert replicated.path == "tensor_parallel_size" and "replicates" in replicated.message
    assert replicated.fix == (
        "shard instead of replicating: dp_shard_size 2 in place of dp_replicate_size 2, or run 2 processes (one model)"
    )
    assert no_shards.path == "fsdp" and "run a multiple of 8 processes" in no_shards.fix
    fixed = typed(seed_mapping, **FSDP2, tensor_parallel_size=2, dp_shard_size=2)
    assert layout_problems(fixed, world_size=4, processes_per_node=2) == []


def test_fsdp_beside_tensor_parallel_needs_ranks_to_shard_over(seed_mapping):
    """accelerate shards over dp_shard × cp: tp 2 with fsdp on 2 processes leaves it nothing."""
    cfg = typed(seed_mapping, **FSDP2, tensor_parallel_size=2)
    (problem,) = layout_problems(cfg, world_size=2, processes_per_node=2)
    assert problem.path == "fsdp"
    assert problem.message == (
        "dp_replicate 1 × dp_shard 1 × cp 1 × tp 2 = 2 leaves FSDP no ranks to shard over (dp_shard × cp is 1)"
    )
    assert "run a multiple of 4 processes" in problem.fix
    assert layout_problems(cfg, world_size=4, processes_per_node=4) == []  # dp_shard 2
    with_cp = typed(seed_mapping, **FSDP2, tensor_parallel_size=2, context_parallel_size=2)
    assert layout_problems(with_cp, world_size=4, processes_per_node=4) == []  # FSDP over the cp ranks
