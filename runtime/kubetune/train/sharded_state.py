"""Checkpoints of an adapter trained under FSDP: its trainable weights, not the frozen base model.

accelerate's save_state writes the whole FSDP model, frozen base included, through the model's own
state_dict. For an adapter that is wasteful (the base never changes and is read again from
`base_model` on resume) and, for a bitsandbytes 4-bit base under FSDP1, it crashes: FSDP's state-dict
hooks do not know the packed weights' quant_state entries ("FSDP assumes ...embed_tokens.weight is in
the state_dict"). This layout reads the trainable parameters directly instead, and saves them and
their optimizer state whole whatever `fsdp_state_dict_type` says: both are a few MB to a few GB, so
one file each (the FULL_STATE_DICT layout) costs little, and it is the layout that resumes exactly
(accelerate's sharded DCP optimizer state of a LoRA under FSDP1 did not: the loss after the resumed
step drifted from the uninterrupted run's, CPU/gloo, torch 2.11). `fsdp_state_dict_type` keeps its
meaning for full fine-tunes, which checkpoint through accelerate.

    adapter_weights.safetensors   every trainable parameter, whole (gathered from the shards on rank 0)
    adapter_optimizer.pt          the optimizer state of those parameters, whole (torch's
                                  get_optimizer_state_dict, for FSDP1 and FSDP2 alike)
    custom_checkpoint_0.pkl       the LR schedule
    random_states_<rank>.pkl      every rank's RNG
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

WEIGHTS = "adapter_weights.safetensors"
OPTIMIZER = "adapter_optimizer.pt"


class ShardedTrainableState:
    """Save / load the trainable weights, optimizer, schedule and RNG of an FSDP (1 or 2) adapter run."""

    def __init__(self, accelerator, module, optimizer, scheduler):
        self.accelerator, self.module, self.optimizer, self.scheduler = (
            accelerator,
            module,
            optimizer,
            scheduler,
        )

    def trainable_names(self) -> list[str]:
        from kubetune.train.outputs import clean_key

        return [clean_key(name) for name, param in self.module.named_parameters() if param.requires_grad]

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

        from kubetune.train.outputs import clean_key

        main = self.accelerator.is_main_process
        out = {}
        with self._full_parameters(writeback=False):
            for name, param in self.module.named_parameters():
                if not param.requires_grad:
                    continue
                value = param.full_tensor() if isinstance(param, DTensor) else param  # collective (FSDP2)
                if main:
                    out[clean_key(name)] = value.detach().to("cpu", copy=True).contiguous()
        return out

    @torch.no_grad()
    def _scatter_trainable(self, weights: dict[str, torch.Tensor]) -> None:
        from torch.distributed.tensor import DTensor, distribute_tensor

        from kubetune.train.outputs import clean_key

        with self._full_parameters(writeback=True):
            for name, param in self.module.named_parameters():
                if not param.requires_grad:
                    continue
                value = weights[clean_key(name)]
                if isinstance(param, DTensor):  # FSDP2: keep this rank's shard of the whole tensor
                    shard = distribute_tensor(
                        value.to(param.device, param.dtype), param.device_mesh, param.placements
                    )
                    param.to_local().copy_(shard.to_local())
                else:
                    param.copy_(value.to(param.device, param.dtype))

    def _options(self):
        """Whole optimizer tensors (an adapter's are small), moved off the GPU while gathered."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=self.accelerator.device.type == "cuda")

    def _full_parameters(self, *, writeback: bool):
        """FSDP1: the parameters whole for the duration (FSDP2's are DTensors, gathered one by one)."""
        from kubetune.train.distributed import is_fsdp1

        if not is_fsdp1(self.accelerator):
            return contextlib.nullcontext()
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.summon_full_params(self.module, writeback=writeback, recurse=True)
