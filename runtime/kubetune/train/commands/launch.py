"""`kubetune launch [torchrun options] -m kubetune train CONFIG`: torchrun that gives its workers the
pod's grace period, not 30 seconds, to stop after SIGTERM.

On SIGTERM torchrun forwards the signal to its workers and SIGKILLs them 30 s later: the timeout is a
default argument of PContext.close (torch/distributed/elastic/multiprocessing/api.py) that the agent's
shutdown never overrides, and no option or variable sets it. A checkpoint that takes longer (a large
model, slow storage) was lost although the pod's terminationGracePeriodSeconds would have allowed it.
This command runs torchrun unchanged except for that default, which it takes from
KUBETUNE_WORKER_STOP_TIMEOUT (seconds; the operator sets it a few seconds below the pod's grace period).
"""

from __future__ import annotations

import argparse
import inspect
import os

STOP_TIMEOUT_ENV = "KUBETUNE_WORKER_STOP_TIMEOUT"
TORCHRUN_STOP_TIMEOUT_S = 30  # torchrun's own, used when the variable is not set


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("torchrun_args", nargs=argparse.REMAINDER, help="torchrun's options and the command")


def stop_timeout() -> int:
    value = os.environ.get(STOP_TIMEOUT_ENV, "").strip()
    if not value:
        return TORCHRUN_STOP_TIMEOUT_S
    try:
        seconds = int(value)
    except ValueError:
        raise SystemExit(f"{STOP_TIMEOUT_ENV}={value!r}: expected whole seconds, e.g. 570") from None
    if seconds < 1:
        raise SystemExit(f"{STOP_TIMEOUT_ENV}={value!r}: expected at least 1 second")
    return seconds


def give_workers(seconds: int) -> None:
    """Make `seconds` the time torchrun waits for its workers after forwarding a signal."""
    from torch.distributed.elastic.multiprocessing.api import PContext

    close = getattr(PContext.close, "torch_close", PContext.close)
    parameters = inspect.signature(close).parameters
    if list(parameters)[:3] != ["self", "death_sig", "timeout"]:  # a torch whose API moved: say so
        raise RuntimeError(
            f"torch's PContext.close{inspect.signature(close)} is not the one kubetune patches"
        )

    def close_with_grace(self, death_sig=None, timeout=seconds):
        return close(self, death_sig, timeout)

    close_with_grace.torch_close = close  # type: ignore[attr-defined]  # not __wrapped__: inspect.signature would follow it
    PContext.close = close_with_grace  # type: ignore[method-assign]  # torch's own, patched on purpose


def launch(torchrun_args: list[str]) -> int:
    from torch.distributed.run import main as torchrun

    give_workers(stop_timeout())
    torchrun(torchrun_args)  # raises ChildFailedError on a failed worker, as torchrun exits 1
    return 0


def run(args: argparse.Namespace) -> int:
    return launch(args.torchrun_args)
