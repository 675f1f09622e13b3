"""kubetune.train: the runtime training engine (model, adapters, loop, checkpoints, outputs).

`run(cfg) -> exit code` is what `kubetune train CONFIG` calls, in every process torchrun starts.
Importing this package is cheap; torch and friends load when a run starts.
"""

from __future__ import annotations


def run(cfg) -> int:
    """Train `cfg` (a kubetune.config.TrainConfig); the exit code follows docs/internals.md."""
    from kubetune.train.runner import run as _run

    return _run(cfg)


__all__ = ["run"]
