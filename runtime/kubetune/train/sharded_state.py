"""Checkpoints of an adapter trained under FSDP: its trainable weights, not the frozen base model.

accelerate's save_state writes the whole FSDP model, frozen base included, through the model's own
state_dict. For an adapter that is wasteful (the base never changes and is read again from
`base_model` on resume) and, for a bitsandbytes 4-bit base under FSDP1, it crashes: FSDP's state-dict
hooks do not know the packed weights' quant_state entries ("FSDP assumes ...embed_tokens.weight is in
the state_dict"). This layout reads the trainable parameters directly instead, and saves them and
their optimizer state whole whatever `fsdp_state_dict_type` says: both are a few MB to a few GB, so
one file each (the FULL_STATE_DICT layout) costs little and resumes exactly onto the uninterrupted
loss curve (tests/unit/train/test_fsdp_cpu.py). `fsdp_state_dict_type` keeps its meaning for full
fine-tunes, which checkpoint through accelerate.

Memory: FSDP1 unshards one FSDP unit at a time to read its trainable weights; FSDP2 gathers the
trainable parameters one at a time.

    adapter_weights.safetensors   every trainable parameter, whole (gathered from the shards on rank 0)
    adapter_optimizer.pt          the optimizer state of those parameters, whole (torch's
                                  get_optimizer_state_dict, for FSDP1 and FSDP2 alike)
    custom_checkpoint_0.pkl       the LR schedule
    random_states_<rank>.pkl      every rank's RNG
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    from torch.distributed.checkpoint.stateful import Stateful
    from torch.distributed.fsdp import FullyShardedDataParallel

log = logging.getLogger(__name__)

WEIGHTS = "adapter_weights.safetensors"
OPTIMIZER = "adapter_optimizer.pt"


class ShardedTrainableState:
    """Save / load the trainable weights, optimizer, schedule and RNG of an FSDP (1 or 2) adapter run."""

    def __init__(
        self,
        accelerator: Accelerator,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Stateful,  # the LR schedule (optim.build_scheduler): saved as accelerate's custom state
    ):
        self.accelerator, self.module, self.optimizer, self.scheduler = (
            accelerator,
            module,
            optimizer,
            scheduler,
        )

    def trainable_names(self) -> list[str]:
        from kubetune.train.outputs import clean_key

        if self._flattened():
            return [name for _, _, names in self._trained_flat_units() for name in names]
        return [clean_key(name) for name, param in self.module.named_parameters() if param.requires_grad]

    def _flattened(self) -> bool:
        """FSDP1 with use_orig_params=False: the parameters are FlatParameters, one per FSDP unit."""
        from kubetune.train.distributed import is_fsdp1

        return is_fsdp1(self.accelerator) and not self.accelerator.state.fsdp_plugin.use_orig_params

    @contextmanager
    def key_names_without_collectives(self) -> Iterator[None]:
        """On the main process alone, while it writes the adapter: peft reads the key names of each
        `modules_to_save` copy by calling its state_dict(), and with flat parameters that copy is an FSDP
        unit whose state_dict() is a collective the other ranks never enter (the save hung). Inside, each
        flat unit answers state_dict() with the names of its original parameters; the values peft saves
        come from gather_trainable."""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        units: list[tuple[FSDP, tuple[str, ...]]] = []
        if self._flattened():
            units = [
                (u, u._flat_param._fqns)
                for u in self.module.modules()
                if isinstance(u, FSDP) and u._flat_param is not None
            ]
        for unit, fqns in units:
            # This instance's state_dict only, and only until the `finally` below.
            unit.state_dict = functools.partial(dict.fromkeys, fqns)  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            for unit, _ in units:
                del unit.state_dict

    def _trained_flat_units(self) -> Iterator[tuple[FullyShardedDataParallel, tuple[str, ...], list[str]]]:
        """(FSDP unit, the names of the original parameters in its trained FlatParameter as FSDP knows
        them, the same names clean), in module order; a unit's flat parameter is trained or frozen as a
        whole (distributed.wrap_trainable_leaves_apart)."""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        from kubetune.train.outputs import clean_key

        for unit_name, unit in self.module.named_modules():
            flat = unit._flat_param if isinstance(unit, FSDP) else None
            if flat is not None and flat.requires_grad:
                prefix = f"{unit_name}." if unit_name else ""
                yield unit, flat._fqns, [clean_key(prefix + fqn) for fqn in flat._fqns]

    def save(self, directory: Path) -> None:
        """Collective: every rank calls it."""
        from accelerate.checkpointing import save_accelerator_state, save_custom_state
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        acc = self.accelerator
        weights = self.gather_trainable()
        if acc.is_main_process:
            save_file(weights, str(directory / WEIGHTS))
        optimizer = get_optimizer_state_dict(self.module, self.optimizer, options=self._options())
        if acc.is_main_process:
            torch.save(optimizer, directory / OPTIMIZER)
            save_custom_state(self.scheduler, str(directory), 0)
        save_accelerator_state(str(directory), [], [], [], [], acc.process_index, acc.step, acc.scaler)

    def load(self, directory: Path) -> None:
        """Collective: every rank calls it."""
        from accelerate.checkpointing import load_accelerator_state, load_custom_state
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        acc = self.accelerator
        weights = load_file(str(directory / WEIGHTS), device="cpu")
        expected = set(self.trainable_names())
        if set(weights) != expected:
            missing, extra = sorted(expected - set(weights))[:3], sorted(set(weights) - expected)[:3]
            raise RuntimeError(
                f"checkpoint {directory} does not match the trainable weights of this run (missing {missing}, "
                f"unexpected {extra}); was the adapter configuration changed?"
            )
        self._scatter_trainable(weights)
        optimizer = torch.load(directory / OPTIMIZER, map_location="cpu", weights_only=True)
        set_optimizer_state_dict(self.module, self.optimizer, optimizer, options=self._options())
        load_custom_state(self.scheduler, str(directory), 0)
        load_accelerator_state(str(directory), [], [], [], [], acc.process_index, acc.scaler)

    @torch.no_grad()
    def gather_trainable(self) -> dict[str, torch.Tensor]:
        """{clean name: whole tensor on the CPU} on the main process; {} elsewhere (collective).

        Also what the final adapter is saved from: the whole model's FSDP state dict is never taken."""
        from torch.distributed.tensor import DTensor

        main = self.accelerator.is_main_process
        out = {}
        for name, param in self._each_trainable(writeback=False):
            value = param.full_tensor() if isinstance(param, DTensor) else param  # collective (FSDP2)
            if main:
                out[name] = value.detach().to("cpu", copy=True).contiguous()
        return out

    @torch.no_grad()
    def _scatter_trainable(self, weights: dict[str, torch.Tensor]) -> None:
        from torch.distributed.tensor import DTensor, distribute_tensor

        for name, param in self._each_trainable(writeback=True):
            value = weights[name]
            if isinstance(param, DTensor):  # FSDP2: keep this rank's shard of the whole tensor
                shard = distribute_tensor(
                    value.to(param.device, param.dtype), param.device_mesh, param.placements
                )
                param.to_local().copy_(shard.to_local())
            else:
                param.copy_(value.to(param.device, param.dtype))

    def _options(self) -> StateDictOptions:
        """Whole optimizer tensors (an adapter's are small), moved off the GPU while gathered."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=self.accelerator.device.type == "cuda")

    def _each_trainable(self, *, writeback: bool) -> Iterator[tuple[str, nn.Parameter]]:
        """(clean name, parameter) of every trainable parameter, in the same order on every rank.

        FSDP1: each FSDP unit is unsharded alone (summon_full_params without recursing) while its own
        parameters are read or written, so a save holds one unit whole at a time, never the model.
        FSDP2: the parameters are DTensors, gathered or scattered one at a time by the caller."""
        from kubetune.train.distributed import is_fsdp1
        from kubetune.train.outputs import clean_key

        if not is_fsdp1(self.accelerator):
            for name, param in self.module.named_parameters():
                if param.requires_grad:
                    yield clean_key(name), param
            return
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if self._flattened():
            # Inside summon_full_params the unit's original parameters are views of its unsharded flat
            # parameter (written back on exit when writeback is set).
            trained = list(self._trained_flat_units())
            if trained and trained[0][0] is not self.module:
                # the root first, always: it initialises FSDP's state before a nested unit is unsharded
                with FSDP.summon_full_params(self.module, recurse=False):
                    pass
            for unit, fqns, clean in trained:
                with FSDP.summon_full_params(unit, recurse=False, writeback=writeback):
                    for fqn, name in zip(fqns, clean, strict=True):
                        yield name, unit.module.get_parameter(fqn)
            return
        # Names and owners are read outside summon_full_params (inside it FSDP renames the parameters);
        # with use_orig_params the parameter objects stay the same, so identity finds them again.
        name_of = {id(param): clean_key(name) for name, param in self.module.named_parameters()}
        units = [unit for unit in self.module.modules() if isinstance(unit, FSDP)]
        for unit in units:
            nested = {
                id(param)
                for inner in unit.modules()
                if inner is not unit and isinstance(inner, FSDP)
                for param in inner.parameters()
            }
            own = [p for p in unit.parameters() if p.requires_grad and id(p) not in nested]
            if not own and unit is not self.module:  # the root first, always: it initialises FSDP's
                continue  # state before a nested unit is unsharded (on resume no forward has run yet)
            with FSDP.summon_full_params(unit, recurse=False, writeback=writeback):
                for param in own:
                    yield name_of[id(param)], param
