"""Axolotl's loss watchdog: stop a run whose training loss stays above a threshold.

    watchdog = LossWatchdog.from_config(cfg, seen=len(state.history))   # None when not configured
    if watchdog.tripped(state.history): stop

Each logged training loss (every `logging_steps`, the same value on every rank: it is reduced over
all of them, so every rank stops at the same step) above `loss_watchdog_threshold` counts; one at or
below resets the count; `loss_watchdog_patience` consecutive ones (default 3, as in Axolotl) stop the
run, which then saves what it trained like any other finished run (status `stopped_loss_watchdog`).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

DEFAULT_PATIENCE = 3


class LossWatchdog:
    def __init__(self, threshold: float, patience: int = DEFAULT_PATIENCE, *, seen: int = 0):
        self.threshold = threshold
        self.patience = patience
        self.seen = seen  # history entries already looked at (a resumed run's earlier ones)
        self.violations = 0

    @classmethod
    def from_config(cls, cfg, *, seen: int = 0) -> LossWatchdog | None:
        if cfg.loss_watchdog_threshold is None:
            return None
        return cls(cfg.loss_watchdog_threshold, cfg.loss_watchdog_patience or DEFAULT_PATIENCE, seen=seen)

    def tripped(self, history: list[dict]) -> bool:
        """Look at the log lines added since the last call; True once the loss stayed too high too long."""
        for entry in history[self.seen :]:
            if entry["loss"] > self.threshold:
                self.violations += 1
            else:
                self.violations = 0
        self.seen = len(history)
        if self.violations >= self.patience:
            log.warning(
                "loss watchdog: the training loss stayed above %s for %d logged steps: stopping",
                self.threshold,
                self.violations,
            )
            return True
        return False
