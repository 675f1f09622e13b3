"""Distributed settings from the config: FSDP from the seed overlay, DeepSpeed "auto" values."""

import json

import pytest
from kubetune.train.distributed import (
    build_accelerator,
    check_request,
    deepspeed_config,
    fsdp_plugin_kwargs,
    topology,
)
from kubetune.train.errors import UserError
from kubetune.train.model import Precision

from .support import QLORA_FSDP_OVERLAY


def test_fsdp_from_the_seed_overlay(make_config):
    cfg, _ = make_config(overlay_file=QLORA_FSDP_OVERLAY)
    kwargs = fsdp_plugin_kwargs(cfg, Precision(None, "bf16"))
    assert kwargs["fsdp_version"] == 1
    assert kwargs["sharding_strategy"] == "FULL_SHARD"
    assert kwargs["auto_wrap_policy"] == "transformer_based_wrap"
    assert kwargs["transformer_cls_names_to_wrap"] == ["MistralDecoderLayer"]
    assert kwargs["state_dict_type"] == "FULL_STATE_DICT"
    assert kwargs["use_orig_params"] is True and kwargs["cpu_offload"] is False
    assert kwargs["mixed_precision_policy"] == "bf16"


def test_fsdp2(make_config):
    cfg, _ = make_config(fsdp=["full_shard", "auto_wrap"], fsdp_config={"fsdp_version": 2})
    kwargs = fsdp_plugin_kwargs(cfg, Precision(None, "no"))
    assert kwargs["fsdp_version"] == 2 and kwargs["reshard_after_forward"] is True
    assert "sharding_strategy" not in kwargs and "mixed_precision_policy" not in kwargs
    cfg, _ = make_config(
        fsdp=["full_shard"], fsdp_config={"fsdp_version": 2, "fsdp_reshard_after_forward": False}
    )
    assert fsdp_plugin_kwargs(cfg, Precision(None, "no"))["reshard_after_forward"] is False


def test_cpu_ram_efficient_loading_reaches_the_plugin_and_fsdp1_broadcasts(make_config):
    """Rank 0 alone reads the weights; FSDP1 needs sync_module_states to hand them to the other ranks."""
    cfg, _ = make_config(fsdp=["full_shard"], fsdp_config={"fsdp_cpu_ram_efficient_loading": True})
    kwargs = fsdp_plugin_kwargs(cfg, Precision(None, "no"))
    assert kwargs["cpu_ram_efficient_loading"] is True and kwargs["sync_module_states"] is True
    cfg, _ = make_config(fsdp=["full_shard"], fsdp_config={"fsdp_version": 2})
    kwargs = fsdp_plugin_kwargs(cfg, Precision(None, "no"))
    assert kwargs["cpu_ram_efficient_loading"] is False and kwargs["sync_module_states"] is False


def test_fsdp_backward_prefetch_reaches_the_fsdp1_plugin(make_config):
    cfg, _ = make_config(fsdp=["full_shard"], fsdp_config={"fsdp_backward_prefetch": "BACKWARD_POST"})
    kwargs = fsdp_plugin_kwargs(cfg, Precision(None, "no"))
    assert kwargs["backward_prefetch"] == "BACKWARD_POST"
    from accelerate import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import BackwardPrefetch

    assert FullyShardedDataParallelPlugin(**kwargs).backward_prefetch is BackwardPrefetch.BACKWARD_POST
    cfg, _ = make_config(fsdp=["full_shard"])
    assert "backward_prefetch" not in fsdp_plugin_kwargs(cfg, Precision(None, "no"))  # accelerate's default


@pytest.mark.parametrize("value", [True, False, None])
def test_ddp_find_unused_parameters_reaches_ddp(make_config, value):
    keys = {} if value is None else {"ddp_find_unused_parameters": value}
    cfg, _ = make_config(**keys)
    accelerator = build_accelerator(cfg, Precision(None, "no"), topology())
    assert accelerator.ddp_handler.find_unused_parameters is bool(value)


def test_deepspeed_auto_values_come_from_the_config(make_config, tmp_path):
    path = tmp_path / "zero3.json"
    path.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 3},
                "bf16": {"enabled": "auto"},
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
            }
        )
    )
    cfg, _ = make_config(
        deepspeed=str(path), micro_batch_size=2, gradient_accumulation_steps=4, max_grad_norm=0.5
    )
    ds = deepspeed_config(cfg, precision=Precision(None, "bf16"), world_size=8)
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 64 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["zero_optimization"] == {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}

    # A DeepSpeed config with its own optimizer is refused with the config: tests/unit/config/test_loading.py


def test_deepspeed_and_nccl_need_cuda(make_config):
    cfg, _ = make_config(deepspeed={"zero_optimization": {"stage": 2}})
    with pytest.raises(UserError, match="needs CUDA"):
        check_request(cfg, cuda=False)
    cfg, _ = make_config(ddp_backend="nccl")
    with pytest.raises(UserError, match="nccl needs CUDA"):
        check_request(cfg, cuda=False)


def test_tensor_parallel_with_fsdp_on_cpu_needs_fsdp_over_gloo(make_config, monkeypatch):
    """Without KUBETUNE_CPU_FSDP, `fsdp` on CPU runs DDP, which cannot carry a tensor-parallel model (its
    optimizer step crashed on mixed DTensor / plain tensors): refused before anything loads, naming the
    switch. With the switch, on GPUs, or without tensor parallelism (context parallel trains under DDP), it runs."""
    monkeypatch.delenv("KUBETUNE_CPU_FSDP", raising=False)
    fsdp2 = {"fsdp": ["full_shard", "auto_wrap"], "fsdp_config": {"fsdp_version": 2}}
    cfg, _ = make_config(tensor_parallel_size=2, dp_shard_size=2, **fsdp2)
    with pytest.raises(UserError) as caught:
        check_request(cfg, cuda=False)
    assert caught.value.key == "tensor_parallel_size"
    assert "cannot carry a tensor-parallel model" in caught.value.problem
    assert "KUBETUNE_CPU_FSDP=1" in caught.value.fix and "spec.env" in caught.value.fix
    check_request(cfg, cuda=True)
    tp_alone = cfg.model_copy(update={"fsdp": None, "dp_shard_size": None})  # nothing wraps it: no DDP
    check_request(tp_alone, cuda=False)
    cp, _ = make_config(context_parallel_size=2, ring_attn=True, **fsdp2)
    check_request(cp, cuda=False)
    monkeypatch.setenv("KUBETUNE_CPU_FSDP", "1")
    check_request(cfg, cuda=False)


@pytest.mark.parametrize(
    ("name", "stage", "offload"),
    [
        ("zero1", 1, set()),
        ("zero2", 2, set()),
        ("zero3", 3, set()),
        ("zero3_bf16", 3, set()),
        ("zero3_bf16_cpuoffload_params", 3, {"offload_param"}),
        ("zero3_bf16_cpuoffload_all", 3, {"offload_param", "offload_optimizer"}),
    ],
)
def test_axolotl_deepspeed_paths_resolve_to_kubetunes_presets(make_config, name, stage, offload):
    cfg, path = make_config(deepspeed=f"deepspeed_configs/{name}.json")  # no such file next to the config
    assert not (path.parent / "deepspeed_configs").exists()
    ds = deepspeed_config(cfg, precision=Precision(None, "bf16"), world_size=2)
    zero = ds["zero_optimization"]
    assert (
        zero["stage"] == stage
        and offload <= set(zero)
        and not ({"offload_param", "offload_optimizer"} - offload) & set(zero)
    )
    assert (
        ds["train_batch_size"] == cfg.micro_batch_size * cfg.gradient_accumulation_steps * 2
    )  # "auto" filled
    assert ds["bf16"]["enabled"] is True and "optimizer" not in ds and "scheduler" not in ds


def test_a_file_next_to_the_config_wins_over_the_preset(make_config, tmp_path):
    cfg, path = make_config(deepspeed="deepspeed_configs/zero3.json")
    own = path.parent / "deepspeed_configs"
    own.mkdir()
    (own / "zero3.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert deepspeed_config(cfg)["zero_optimization"]["stage"] == 2


def test_the_mesh_is_checked_against_torchruns_world_at_start_up(make_config):
    """Outside the operator the world size is known only at start-up: the same rule (config/mesh.py)."""
    from kubetune.config.mesh import MeshLayout
    from kubetune.train.distributed import Topology, mesh_layout

    cfg, _ = make_config()
    four = Topology(rank=0, world_size=4, local_rank=0, cuda=False, local_world_size=2)
    assert mesh_layout(cfg, four) == MeshLayout(dp_replicate=4)  # plain DDP
    nd = cfg.model_copy(update={"tensor_parallel_size": 4, "fsdp": ["full_shard"]})
    with pytest.raises(UserError) as caught:
        mesh_layout(nd, four)
    assert "= 4 processes must sit in one pod, which runs 2" in caught.value.problem
    assert caught.value.key == "tensor_parallel_size"
    three = Topology(rank=0, world_size=3, local_rank=0, cuda=False, local_world_size=3)
    with pytest.raises(UserError) as caught:
        mesh_layout(nd, three)
    assert "tensor_parallel_size 4 = 4 does not divide the job's 3 processes" in caught.value.problem
