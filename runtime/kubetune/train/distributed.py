"""The accelerate `Accelerator` for this run: DDP by default, FSDP 1/2 or DeepSpeed ZeRO from the config.

torchrun (or the operator's pods, through PET_* variables) sets RANK / WORLD_SIZE / LOCAL_RANK;
accelerate reads them and initialises the process group: NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from kubetune.config.deepspeed_presets import resolve_deepspeed_path
from kubetune.config.mesh import MeshLayout, layout_problems, mesh_requested, resolve_layout
from kubetune.config.sharding import fsdp_version, sharding_strategy
from kubetune.train.errors import UserError
from kubetune.train.model import Precision

log = logging.getLogger(__name__)
PEFT_LAYER_CLASSES_ENV = "FSDP_TRANSFORMER_CLS_TO_WRAP"

# Test and development switch: FSDP on CPU processes (gloo) instead of the DDP fallback; see docs/training.md.
CPU_FSDP_ENV = "KUBETUNE_CPU_FSDP"


@dataclass(frozen=True)
class Topology:
    rank: int
    world_size: int
    local_rank: int
    cuda: bool
    local_world_size: int = 1  # processes in this pod (torchrun's --nproc-per-node)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def topology() -> Topology:
    """Where this process sits, from torchrun's environment (1 process when not under torchrun)."""
    import torch

    return Topology(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        cuda=torch.cuda.is_available(),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1))),
    )


def mesh_layout(cfg, topo: Topology) -> MeshLayout:
    """The run's device mesh for this world (config/mesh.py); a UserError when the sizes do not fit it."""
    problems = layout_problems(cfg, world_size=topo.world_size, processes_per_node=topo.local_world_size)
    if problems:
        first = problems[0]
        raise UserError(
            f"{first.message} (torchrun: {topo.world_size} processes, {topo.local_world_size} per node).",
            first.fix,
            key=first.path,
        )
    layout, _ = resolve_layout(cfg, topo.world_size)
    assert layout is not None  # no problems: the layout resolved
    return layout


def check_request(cfg, *, cuda: bool) -> None:
    """What the config's rules (kubetune.config.sharding) cannot know: CUDA, installed packages and the
    environment."""
    if cfg.deepspeed is not None:
        if not cuda:
            raise UserError(
                "deepspeed needs CUDA GPUs, and this machine has none.",
                "Remove `deepspeed` to train with DDP (gloo) on CPU, or run on GPU nodes.",
                key="deepspeed",
            )
        if importlib.util.find_spec("deepspeed") is None:
            raise UserError(
                "deepspeed is configured but the deepspeed package is not installed.",
                "Install it in the training image (pip install 'kubetune[gpu]'), or use `fsdp` instead.",
                key="deepspeed",
            )
        deepspeed_config(cfg)  # read and check the file now, before anything is loaded
    if cfg.ddp_backend == "nccl" and not cuda:
        raise UserError(
            "ddp_backend: nccl needs CUDA GPUs, and this machine has none.",
            "Set `ddp_backend: auto` (gloo on CPU).",
            key="ddp_backend",
        )
    if cfg.fsdp and (cfg.tensor_parallel_size or 1) > 1 and not cuda and not cpu_fsdp_requested():
        # On CPU, `fsdp` falls back to DDP unless KUBETUNE_CPU_FSDP is set; DDP over a tensor-parallel
        # model is the tp × plain-replication layout accelerate refuses, and its optimizer step fails on
        # the mix of DTensor and plain parameters (torch 2.11: "got mixed torch.Tensor and DTensor").
        raise UserError(
            f"tensor_parallel_size {cfg.tensor_parallel_size} with fsdp on CPU processes needs FSDP over gloo, "
            f"which runs only with {CPU_FSDP_ENV}=1: the DDP that otherwise stands in for FSDP on CPU cannot "
            "carry a tensor-parallel model.",
            f"Set {CPU_FSDP_ENV}=1 in the environment (a FineTuneJob's spec.env), or run on GPUs.",
            key="tensor_parallel_size",
        )


def fsdp2_requested(cfg, *, cuda: bool) -> bool:
    """The config asks for FSDP2 and it will run: on GPUs, or on CPU processes with KUBETUNE_CPU_FSDP."""
    return bool(cfg.fsdp) and fsdp_version(cfg) == 2 and (cuda or cpu_fsdp_requested())


def is_sharded(accelerator) -> bool:
    """FSDP and DeepSpeed place the weights themselves and checkpoint in their own formats."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def is_fsdp1(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2


def wrap_trainable_leaves_apart(accelerator, model) -> None:
    """FSDP1 with `fsdp_use_orig_params: false` flattens each wrapped unit into one tensor that is trained
    or frozen as a whole, and a decoder layer with an adapter holds both ("Must flatten tensors with
    uniform requires_grad"). peft's wrap policy, the one transformers' Trainer installs for PEFT models
    under FSDP, also gives every trainable leaf module (LoRA's A and B, a trained embedding) a unit of its
    own; the layer classes stay units as the config names them."""
    plugin = accelerator.state.fsdp_plugin
    if not is_fsdp1(accelerator) or plugin.use_orig_params:
        return
    from peft.utils.other import fsdp_auto_wrap_policy

    layers = plugin.transformer_cls_names_to_wrap
    saved = os.environ.get(PEFT_LAYER_CLASSES_ENV)
    if layers:  # peft reads the layer classes from this variable, else from the model's _no_split_modules
        os.environ[PEFT_LAYER_CLASSES_ENV] = ",".join(layers)
    try:
        plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)
    finally:
        if saved is None:
            os.environ.pop(PEFT_LAYER_CLASSES_ENV, None)
        else:
            os.environ[PEFT_LAYER_CLASSES_ENV] = saved
    log.info("fsdp_use_orig_params is false: the adapter's trainable layers are FSDP units of their own")


def build_accelerator(cfg, precision: Precision, topo: Topology):
    from accelerate import Accelerator
    from accelerate.utils import (
        DistributedDataParallelKwargs,
        DistributedType,
        GradientAccumulationPlugin,
        InitProcessGroupKwargs,
    )

    process_group = {"timeout": timedelta(seconds=cfg.ddp_timeout)}
    if cfg.ddp_backend != "auto":
        process_group["backend"] = cfg.ddp_backend
    kwargs = {
        "cpu": not topo.cuda,
        "mixed_precision": precision.mixed_precision,
        # The loop hands accelerate exactly gradient_accumulation_steps micro-batches per optimizer step.
        "gradient_accumulation_plugin": GradientAccumulationPlugin(
            num_steps=cfg.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        "kwargs_handlers": [
            InitProcessGroupKwargs(**process_group),
            DistributedDataParallelKwargs(find_unused_parameters=bool(cfg.ddp_find_unused_parameters)),
        ],
        "step_scheduler_with_optimizer": False,
    }
    if cfg.fsdp:
        from accelerate import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(**fsdp_plugin_kwargs(cfg, precision))
    if cfg.deepspeed is not None:
        from accelerate import DeepSpeedPlugin

        ds = deepspeed_config(cfg, precision=precision, world_size=topo.world_size)
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=ds)
    parallelism = parallelism_config(mesh_layout(cfg, topo)) if mesh_requested(cfg) else None
    if parallelism is not None and topo.cuda:
        kwargs["parallelism_config"] = parallelism
    accelerator = Accelerator(**kwargs)
    if cfg.fsdp and not is_sharded(accelerator):
        if cpu_fsdp_requested() and accelerator.distributed_type == DistributedType.MULTI_CPU:
            plugin = kwargs["fsdp_plugin"]
            full = plugin.state_dict_type.name == "FULL_STATE_DICT"
            if plugin.fsdp_version == 1 and full and not cfg.adapter:
                # accelerate offloads the gathered weights to the CPU they are on; the clone after
                # that reads freed memory (segfault, torch 2.11 / accelerate 1.15).
                raise UserError(
                    "fsdp_state_dict_type FULL_STATE_DICT of a full fine-tune under FSDP1 crashes on CPU "
                    f"processes ({CPU_FSDP_ENV}=1).",
                    "Use fsdp_state_dict_type: SHARDED_STATE_DICT on CPU processes (GPUs are not affected).",
                    key="fsdp_config.fsdp_state_dict_type",
                )
            if plugin.fsdp_version == 1 and plugin.sync_module_states:
                # torch's FSDP1 broadcasts module states only from an accelerator ("no available
                # devices"); FSDP2 loads rank 0's weights through accelerate's broadcast on CPU too.
                raise UserError(
                    "FSDP1 cannot broadcast rank 0's weights between CPU processes "
                    f"({CPU_FSDP_ENV}=1): fsdp_sync_module_states / fsdp_cpu_ram_efficient_loading need GPUs.",
                    "Set fsdp_version: 2 on CPU processes (GPUs are not affected).",
                    key="fsdp_config.fsdp_cpu_ram_efficient_loading",
                )
            _shard_on_cpu(accelerator, plugin)
        else:
            log.warning(
                "fsdp is set but accelerate runs %s here (FSDP needs CUDA): training with DDP instead "
                "(%s=1 runs FSDP on CPU processes with gloo)",
                accelerator.distributed_type,
                CPU_FSDP_ENV,
            )
    if parallelism is not None and not topo.cuda:
        _mesh_on_cpu(accelerator, parallelism)
    return accelerator


def ram_efficient_loading(accelerator) -> bool:
    """fsdp_cpu_ram_efficient_loading is in force: ranks other than each pod's first build the model
    without reading the weights (transformers' side of it) and receive rank 0's when FSDP shards it."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    return is_sharded(accelerator) and plugin is not None and bool(plugin.cpu_ram_efficient_loading)


def read_the_weights(model, accelerator, topo: Topology) -> bool:
    """Whether this rank read the weights itself. Under fsdp_cpu_ram_efficient_loading the ranks other
    than each pod's first should not have (transformers built their models with zeros); they still do
    for a 4-bit base, which transformers loads on every rank."""
    if not ram_efficient_loading(accelerator) or topo.local_rank == 0:
        return True
    embeddings = model.get_input_embeddings().weight
    read = embeddings.device.type != "meta" and bool(embeddings.detach().any())
    if read:
        log.warning(
            "fsdp_cpu_ram_efficient_loading is set, but rank %d read the weights itself (transformers "
            "loads quantized bases on every rank): size each pod's memory for one copy per process",
            topo.rank,
        )
    return read


def report_host_memory(accelerator, read_weights: bool) -> None:
    """Log each rank's peak host memory with the model prepared, and which ranks read the weights:
    what fsdp_cpu_ram_efficient_loading is for, and what a pod's memory request must cover."""
    import torch.distributed as dist

    mine = (round(peak_host_memory_mib()), read_weights)
    ranks: list[Any] = [mine]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
    if accelerator.is_main_process:
        log.info(
            "peak host memory with the model prepared, per rank: %s MiB; ranks that read the weights: %s",
            ", ".join(str(peak) for peak, _ in ranks),
            ", ".join(str(rank) for rank, (_, read) in enumerate(ranks) if read) or "none",
        )


def peak_host_memory_mib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parallelism_config(layout: MeshLayout):
    """accelerate's ParallelismConfig of the layout: it builds the torch DeviceMesh (and its flattened
    dp / dp_shard_cp / dp_cp dims) that FSDP2 and the tensor-parallel model are placed on."""
    from accelerate.parallelism_config import ParallelismConfig

    return ParallelismConfig(
        dp_replicate_size=layout.dp_replicate,
        dp_shard_size=layout.dp_shard,
        tp_size=layout.tp,
        cp_size=layout.cp,
    )


def _mesh_on_cpu(accelerator, parallelism) -> None:
    """Give the CPU processes (gloo) the mesh accelerate builds on GPUs.

    accelerate accepts a ParallelismConfig only on accelerators (or under FSDP, which it selects only on
    accelerators); the mesh, FSDP2 over its data-parallel dims and DTensor tensor parallelism all run on
    gloo, and kubetune's CPU tests prove the N-D layouts with it. Set where accelerate would have set it."""
    accelerator.state.parallelism_config = parallelism
    accelerator.state.device_mesh = parallelism.get_device_mesh("cpu")
    log.info("device mesh on CPU processes (gloo): %s", parallelism.get_device_mesh("cpu"))


def tensor_parallel_mesh(accelerator):
    """The "tp" dimension of the run's mesh (transformers shards the model over it), or None."""
    config = accelerator.parallelism_config
    if config is None or not config.tp_enabled:
        return None
    return accelerator.torch_device_mesh["tp"]


@contextmanager
def model_parallel_left_to_fully_shard(accelerator) -> Iterator[None]:
    """accelerate.prepare under FSDP2 with the mesh's tp and cp dims kept from accelerate's own steps.

    Tensor parallelism: accelerate 1.15 prepares TP × FSDP2 by first turning every plain parameter into a
    replicated DTensor with transformers' ReplicateParallel, which transformers 5 removed (ImportError).
    That step is not needed: torch's fully_shard composes with the DTensor layers transformers' tp_plan
    made (a tp-sharded weight becomes a DTensor over (dp_shard, tp), a plain one is sharded over dp_shard
    alone), and accelerate's clip_grad_norm_ groups the gradients by mesh. Context parallelism:
    accelerate's step installs torch's context_parallel, which cannot keep packed examples apart;
    kubetune's ring attention (context_parallel.py) does it instead. So prepare sees the config without
    tp and cp and shards over the mesh's dp_shard × cp ranks (accelerate's flattened dp_shard_cp dim, with
    dp_replicate for HSDP) as for FSDP2 alone; tests/unit/train/test_nd_cpu.py checks the result against
    one process."""
    config = accelerator.state.parallelism_config
    if config is None or not (config.tp_enabled or config.cp_enabled) or not accelerator.is_fsdp2:
        yield
        return
    hidden = dataclasses.replace(config, tp_size=1, tp_handler=None, cp_size=1, cp_handler=None)
    accelerator.state.parallelism_config = hidden
    try:
        yield
    finally:
        accelerator.state.parallelism_config = config


def sequence_split(accelerator, tokenizer):
    """Context parallelism's split of the rows over the mesh's cp dim (context_parallel.py)."""
    from kubetune.train.context_parallel import SequenceSplit

    return SequenceSplit(accelerator.torch_device_mesh["cp"].get_group(), tokenizer.pad_token_id)


def cpu_fsdp_requested() -> bool:
    return os.environ.get(CPU_FSDP_ENV, "").lower() in ("1", "true", "yes")


def _shard_on_cpu(accelerator, plugin) -> None:
    """Run FSDP (1 or 2) on CPU processes over gloo, where accelerate would pick plain DDP.

    accelerate only selects FSDP on accelerators, but torch's FSDP1 and fully_shard both run on CPU
    with gloo; kubetune's CPU tests use this to exercise the sharded code paths (wrapping, state dict
    gathering, sharded checkpoints, resume) that DDP would hide. The state is process-wide, and
    nothing has been prepared yet, so switching the type here is what accelerate itself would have
    set had it allowed CPU.
    """
    import torch
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    # Both singletons, as accelerate itself does: AcceleratorState() re-reads PartialState's values.
    for state in (accelerator.state, PartialState()):
        state.distributed_type = DistributedType.FSDP
        # accelerate names the CPU "cpu:<n>"; FSDP compares it with torch.cpu's current device, "cpu".
        state.device = torch.device("cpu")
    accelerator.state.fsdp_plugin = plugin
    # "Offloading" a gathered CPU tensor to the CPU hands back memory FSDP frees on exit: the clone
    # that follows segfaults (torch 2.11). On CPU the gathered weights are on the host already.
    for config in (plugin.state_dict_config, plugin.optim_state_dict_config):
        if hasattr(config, "offload_to_cpu"):
            config.offload_to_cpu = False
    log.info("%s is set: FSDP%d on CPU processes (gloo)", CPU_FSDP_ENV, plugin.fsdp_version)


def fsdp_plugin_kwargs(cfg, precision: Precision) -> dict:
    """accelerate FullyShardedDataParallelPlugin arguments from `fsdp: [...]` and `fsdp_config`."""
    options = set(cfg.fsdp)
    fc = cfg.fsdp_config
    strategy = sharding_strategy(cfg)  # one strategy, FSDP2 with full_shard only: config/sharding.py's rules
    version = fsdp_version(cfg)
    get = (lambda name: getattr(fc, name)) if fc else (lambda name: None)

    wrap = get("fsdp_auto_wrap_policy")
    if wrap == "SIZE_BASED_WRAP":
        policy = "size_based_wrap"
    elif wrap == "TRANSFORMER_BASED_WRAP" or "auto_wrap" in options:
        policy = "transformer_based_wrap"
    else:
        policy = "no_wrap"
    layer_cls = get("fsdp_transformer_layer_cls_to_wrap")
    offload = get("fsdp_offload_params")
    kwargs = {
        "fsdp_version": version,
        "auto_wrap_policy": policy,
        "transformer_cls_names_to_wrap": [layer_cls] if layer_cls else None,
        "min_num_params": get("fsdp_min_num_params"),
        "cpu_offload": ("offload" in options) if offload is None else offload,
        "state_dict_type": get("fsdp_state_dict_type") or "SHARDED_STATE_DICT",
        "activation_checkpointing": bool(get("fsdp_activation_checkpointing")),
        # Rank 0 alone reads the weights; transformers builds the others' models without them (zeros, not
        # meta: it reads accelerate's FSDP_CPU_RAM_EFFICIENT_LOADING) and the wrapper broadcasts rank 0's
        # values when it shards: FSDP1 through sync_module_states (which this therefore turns on), FSDP2
        # through accelerate's full-state-dict load. 4-bit bases are the exception: transformers loads
        # those on every rank (it cannot build them empty), see docs/training.md.
        "cpu_ram_efficient_loading": bool(get("fsdp_cpu_ram_efficient_loading")),
        "sync_module_states": bool(get("fsdp_sync_module_states") or get("fsdp_cpu_ram_efficient_loading")),
    }
    if get("fsdp_backward_prefetch"):
        kwargs["backward_prefetch"] = get("fsdp_backward_prefetch")
    if precision.mixed_precision != "no":
        kwargs["mixed_precision_policy"] = precision.mixed_precision
    if version == 1:
        kwargs["sharding_strategy"] = strategy.upper()
        # Adapters mix frozen and trainable weights in one FSDP unit, which needs the original parameters.
        use_orig = get("fsdp_use_orig_params")
        kwargs["use_orig_params"] = True if use_orig is None else use_orig
    else:
        reshard = get("fsdp_reshard_after_forward")
        kwargs["reshard_after_forward"] = (strategy == "full_shard") if reshard is None else reshard
    return kwargs


def deepspeed_config(cfg, *, precision: Precision | None = None, world_size: int = 1) -> dict:
    """The DeepSpeed config (a JSON file or inline), with its "auto" values filled in from the config."""
    if isinstance(cfg.deepspeed, str):
        path = resolve_deepspeed_path(cfg.deepspeed, cfg.source_dir)  # or kubetune's preset of that name
        try:
            ds = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(
                f"cannot read the DeepSpeed config {path}: {err}",
                "Point `deepspeed` at a readable JSON file (relative paths resolve against the config's "
                "directory), or give the DeepSpeed config inline as a mapping.",
                key="deepspeed",
            ) from err
    else:
        ds = copy.deepcopy(dict(cfg.deepspeed))
    mbs, accumulation = cfg.micro_batch_size, cfg.gradient_accumulation_steps
    fill = {
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": mbs * accumulation * world_size,
        "gradient_clipping": cfg.max_grad_norm,
    }
    for key, value in fill.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    zero = ds.setdefault("zero_optimization", {})
    if zero.get("stage") == 3:
        # The final save gathers the full 16-bit weights; without this ZeRO-3 refuses to hand them over.
        zero.setdefault("stage3_gather_16bit_weights_on_model_save", True)
    if precision is not None:
        for section, on in (
            ("bf16", precision.mixed_precision == "bf16"),
            ("fp16", precision.mixed_precision == "fp16"),
        ):
            block = ds.setdefault(section, {})
            if block.get("enabled", "auto") == "auto":
                block["enabled"] = on
    return ds
