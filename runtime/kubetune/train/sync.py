"""What the training loop reads back from the GPU, read without a per-step device sync.

Reading a device value on the host (`.item()`, `.tolist()`) right after queueing a step drains the
GPU's queue: the GPU idles until the host has queued more work. The throughput bench measured what that
cost (bench/results/README.md, session 2: an 8B LoRA with torch_compile made 14,768 tokens/s while every
logged step ended in `.item()`, then 16,922 and 16,251 once the log values reached the host behind the
next step; separate device calls, not a same-run ratio). So every value the loop needs from the device
travels here, queued behind the work already on the GPU, and is read once the next step is queued:

    counts = StepCounts(acc, window, stop, group=...)   # the step's token counts + stop flag, all ranks
    scale = ... / counts.trained_for_scale()            # a device scalar on several ranks: no wait
    ... queue the step ...
    trained, tokens, stopping = counts.resolve()        # waits only for the counts' copy

    values = log_values(acc, interval, grad_norm, group=...)   # the log line's reduction, queued
    ... queue the next step ...
    line = PendingLog(..., values=values, ...).read()          # loss, grad norm, tokens/s
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

    from kubetune.train.loop import StopFlag


class HostCopy:
    """A device tensor's values on their way to the host: the copy is queued behind the work already on
    the GPU, and `tolist` waits only for that copy. Reading a device value with .item() right after
    queueing a step would instead drain the queue (the GPU idles until the host queues more work)."""

    def __init__(self, tensor: torch.Tensor):
        self.ready: torch.cuda.Event | None = None
        if tensor.is_cuda:
            self.values = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self.values.copy_(tensor, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        else:
            self.values = tensor.detach().clone()

    def tolist(self) -> list:
        if self.ready is not None:
            self.ready.synchronize()
        return self.values.tolist()


class StepCounts:
    """(trained tokens, non-pad tokens, stop?) of one optimizer step, summed over all ranks.

    One small all-reduce per step carries the token counts and whether any rank was asked to stop (so
    that all of them stop at the same boundary). The loss scale takes the reduced count as a device
    tensor, and the host reads the counts once the step is queued (`resolve`). A single process has
    the counts on the host already.
    """

    def __init__(self, acc: Accelerator, window: list[dict], stop: StopFlag, *, group: int = 1):
        self.stop = stop
        # Each of the `group` ranks that share these rows adds its share, so the sum counts them once.
        self.local = [
            sum(b["n_trained"] for b in window) / group,
            sum(b["n_tokens"] for b in window) / group,
            int(stop.requested),
        ]
        self.reduced: torch.Tensor | None = None
        if acc.num_processes == 1:
            return
        counts = torch.tensor(self.local, dtype=torch.float64)
        if acc.device.type == "cuda":
            counts = counts.pin_memory().to(acc.device, non_blocking=True)
        self.reduced = acc.reduce(counts, reduction="sum")  # collective, queued behind the previous step
        self.host = HostCopy(self.reduced)

    def trained_for_scale(self) -> float | torch.Tensor:
        """Trained tokens of the step on all ranks (at least 1): a float, or a device scalar."""
        if self.reduced is None:
            return max(float(self.local[0]), 1.0)
        return self.reduced[0].clamp(min=1.0).float()

    def resolve(self) -> tuple[float, float, bool]:
        if self.reduced is None:  # the flag as of now: a SIGTERM during this step stops after it
            return float(self.local[0]), float(self.local[1]), self.stop.requested
        trained, tokens, stopping = self.host.tolist()
        return trained, tokens, bool(stopping)


@dataclass
class Interval:
    """Sums since the last log line."""

    started: float
    loss_sum: torch.Tensor | float = 0.0
    trained: float = 0.0
    tokens: float = 0.0


def log_values(
    acc: Accelerator, interval: Interval, grad_norm: torch.Tensor | float | None, *, group: int
) -> HostCopy:
    """Queue a log line's reduction (the loss summed over all ranks, then the grad norm when the step
    has one) and its copy to the host; nothing here waits for the GPU. A collective: all ranks log here."""
    device = acc.device
    loss_sum = (
        interval.loss_sum.reshape(1).to(device, torch.float32)
        if isinstance(interval.loss_sum, torch.Tensor)
        else torch.zeros(1, device=device)
    )
    loss_sum = loss_sum / group  # the ranks of a tensor/context-parallel group hold the same loss
    values = [acc.reduce(loss_sum, reduction="sum").reshape(1).float()]
    if grad_norm is not None:
        values.append(local_tensor(grad_norm).to(device, torch.float32).reshape(1))
    return HostCopy(torch.cat(values))


def local_tensor(value: torch.Tensor | float) -> torch.Tensor:
    """A plain tensor of a value that may be a DTensor: FSDP2's clip_grad_norm_ returns the grad norm as
    a DTensor, which mixes with no plain tensor (torch.cat, copy_ into host memory, tolist all refuse).
    full_tensor() is a collective when the norm is still a partial sum: every rank logs the same steps."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return value.full_tensor()
    return torch.as_tensor(value)


@dataclass(frozen=True)
class TrainLine:
    """A train log line's values, on the host."""

    loss: float  # summed token loss over all ranks / trained tokens since the last line
    grad_norm: float | None
    tokens_per_second: float


@dataclass
class PendingLog:
    """A train log line whose summed loss (and grad norm) are still on their way from the GPU."""

    step: int
    trained_tokens: int
    input_tokens: int
    values: HostCopy  # [loss sum over all ranks] + [grad norm] when the step has one (log_values)
    interval: Interval
    eta: float
    learning_rate: float
    rewards: dict | None = None  # preference runs: trl's reward means since the last line (rank 0's pairs)

    def read(self) -> TrainLine:
        """The line's values (waits until they have reached the host)."""
        total, *norm = self.values.tolist()
        interval = self.interval
        seconds = max(time.perf_counter() - interval.started, 1e-9)
        return TrainLine(
            loss=total / max(interval.trained, 1.0),
            grad_norm=norm[0] if norm else None,
            tokens_per_second=interval.tokens / seconds,
        )
