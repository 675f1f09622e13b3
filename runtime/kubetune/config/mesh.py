"""The device mesh of a run: data-parallel replication × FSDP sharding × context parallel × tensor parallel.

One home for the arithmetic between the parallelism keys and the number of processes. The operator
checks it at apply time (world size = workers × processes per pod) and the runtime at start-up
(torchrun's WORLD_SIZE / LOCAL_WORLD_SIZE); both call `layout_problems`. No torch here: the runtime
turns a `MeshLayout` into accelerate's `ParallelismConfig` (kubetune.train.distributed).

Ranks are laid out as torchrun numbers them (pod after pod, process after process), and the mesh dims
go outermost to innermost in accelerate's order: dp_replicate, dp_shard, cp, tp. So consecutive ranks
form the tensor-parallel groups, then the context-parallel ones: when cp × tp divides the processes of
one pod, those groups never leave a pod (NVLink), while dp_shard and dp_replicate may span pods.
"""

from __future__ import annotations

from dataclasses import dataclass

from .problems import ConfigProblem

MESH_DIMS = ("dp_replicate", "dp_shard", "cp", "tp")  # outermost first, as accelerate builds the mesh


@dataclass(frozen=True)
class MeshLayout:
    dp_replicate: int = 1
    dp_shard: int = 1
    cp: int = 1
    tp: int = 1

    @property
    def size(self) -> int:
        return self.dp_replicate * self.dp_shard * self.cp * self.tp

    @property
    def data_parallel(self) -> int:
        """Ranks that read different rows: replicas × shards (cp and tp ranks share their rows)."""
        return self.dp_replicate * self.dp_shard

    @property
    def in_pod(self) -> int:
        """Ranks of one context × tensor parallel group, which must share a pod."""
        return self.cp * self.tp

    @property
    def is_nd(self) -> bool:
        """A mesh beyond plain data parallelism or plain FSDP: built with accelerate's ParallelismConfig."""
        return self.tp > 1 or self.cp > 1 or (self.dp_replicate > 1 and self.dp_shard > 1)

    def describe(self) -> str:
        sizes = " × ".join(f"{name} {getattr(self, name)}" for name in MESH_DIMS)
        return f"{sizes} = {self.size}"


def mesh_requested(cfg) -> bool:
    """A parallelism size above 1 is set: the run builds accelerate's ParallelismConfig mesh."""
    return any(size not in (None, 1) for size in requested_sizes(cfg).values())


def requested_sizes(cfg) -> dict[str, int | None]:
    """The sizes the config sets (None: not set, to be derived from the world size)."""
    return {
        "dp_replicate": cfg.dp_replicate_size,
        "dp_shard": cfg.dp_shard_size,
        "cp": cfg.context_parallel_size,
        "tp": cfg.tensor_parallel_size,
    }


def _key(dim: str) -> str:
    return {
        "dp_replicate": "dp_replicate_size",
        "dp_shard": "dp_shard_size",
        "cp": "context_parallel_size",
        "tp": "tensor_parallel_size",
    }[dim]


def _other(dim: str) -> str:
    return "dp_replicate" if dim == "dp_shard" else "dp_shard"


def resolve_layout(cfg, world_size: int) -> tuple[MeshLayout | None, list[ConfigProblem]]:
    """The mesh for `world_size` processes: the unset data-parallel size takes the rest of the world.

    The rest goes to dp_shard when FSDP is on (the seed's overlay: tp × cp inside a node, FSDP across
    nodes) and to dp_replicate otherwise (DDP); set both data-parallel sizes to choose yourself.
    """
    sizes = requested_sizes(cfg)
    if sizes["dp_shard"] is None:
        free = "dp_shard" if cfg.fsdp or sizes["dp_replicate"] is not None else "dp_replicate"
    else:
        free = "dp_replicate"
    fixed = {dim: (size if size is not None else 1) for dim, size in sizes.items() if dim != free}
    product = fixed[_other(free)] * fixed["cp"] * fixed["tp"]
    given = sizes[free]
    arithmetic = " × ".join(f"{_key(dim)} {fixed[dim]}" for dim in MESH_DIMS if dim != free)
    if given is not None:
        layout = MeshLayout(**fixed, **{free: given})
        if layout.size != world_size:
            return None, [
                ConfigProblem(
                    _key(free),
                    f"the mesh needs {layout.describe()} processes, but the job has {world_size}",
                    f"make {_key(free)} × {arithmetic} equal {world_size}, or run {layout.size} processes",
                )
            ]
        return layout, []
    if world_size % product:
        return None, [
            ConfigProblem(
                _key("tp") if fixed["tp"] > 1 else _key("cp") if fixed["cp"] > 1 else _key(free),
                f"{arithmetic} = {product} does not divide the job's {world_size} processes",
                f"choose sizes whose product divides {world_size}, or run a multiple of {product} processes",
            )
        ]
    return MeshLayout(**fixed, **{free: world_size // product}), []


def layout_problems(cfg, *, world_size: int, processes_per_node: int) -> list[ConfigProblem]:
    """Everything about the mesh that needs the number of processes: product, pod boundaries, and what
    accelerate can compose."""
    layout, problems = resolve_layout(cfg, world_size)
    if layout is None:
        return problems
    if processes_per_node % layout.in_pod:
        problems.append(
            ConfigProblem(
                _key("tp") if layout.tp > 1 else _key("cp"),
                f"context_parallel_size {layout.cp} × tensor_parallel_size {layout.tp} = {layout.in_pod} "
                f"processes must sit in one pod, which runs {processes_per_node}",
                f"run a multiple of {layout.in_pod} processes per pod (gpusPerWorker, or processesPerWorker on CPU), "
                "or lower the sizes",
            )
        )
    if layout.in_pod > 1 and layout.dp_replicate > 1 and layout.dp_shard == 1:
        # accelerate composes TP/CP with FSDP2 (2-D) or HSDP (3-D), never with plain replication (DDP).
        if cfg.fsdp:  # fsdp is there, but dp_replicate_size took the data-parallel ranks
            shard = (
                f"shard instead of replicating: dp_shard_size {layout.dp_replicate} in place of "
                f"dp_replicate_size {layout.dp_replicate}"
            )
        else:
            shard = "add `fsdp` to shard the data-parallel ranks"
        problems.append(
            ConfigProblem(
                _key("tp") if layout.tp > 1 else _key("cp"),
                f"{layout.describe()} replicates a tensor/context-parallel model without sharding it; "
                "accelerate composes them with FSDP2 only",
                f"{shard}, or run {layout.in_pod} processes (one model)",
            )
        )
    if cfg.fsdp and layout.tp > 1 and layout.dp_shard * layout.cp == 1:
        # FSDP2 shards over dp_shard × cp (accelerate's dp_shard_cp dim); tensor parallelism took every rank.
        problems.append(
            ConfigProblem(
                "fsdp",
                f"{layout.describe()} leaves FSDP no ranks to shard over (dp_shard × cp is 1)",
                "remove fsdp (tensor parallelism alone shards the layers), or run a multiple of "
                f"{2 * layout.in_pod * layout.dp_replicate} processes so that dp_shard_size is above 1",
            )
        )
    return problems
