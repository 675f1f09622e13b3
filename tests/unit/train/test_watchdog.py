"""The loss watchdog (loss_watchdog_threshold / loss_watchdog_patience) stops a run that stays too high."""

from __future__ import annotations

import pytest
from kubetune.train.watchdog import LossWatchdog


def test_patience_consecutive_high_losses_stop_and_a_low_one_resets():
    watchdog = LossWatchdog(threshold=5.0, patience=3)
    history = []
    verdicts = []
    for loss in (6.0, 7.0, 4.0, 6.0, 6.5, 5.5):
        history.append({"step": len(history) + 1, "loss": loss})
        verdicts.append(watchdog.tripped(history))
    assert verdicts == [False, False, False, False, False, True]


def test_a_resumed_run_counts_only_new_log_lines_and_patience_defaults_to_three():
    class Cfg:
        loss_watchdog_threshold = 1.0
        loss_watchdog_patience = None

    history = [{"loss": 9.0}] * 5  # before the restart
    watchdog = LossWatchdog.from_config(Cfg(), seen=len(history))
    assert watchdog.patience == 3 and not watchdog.tripped(history)
    history += [{"loss": 9.0}] * 2
    assert not watchdog.tripped(history)
    history.append({"loss": 9.0})
    assert watchdog.tripped(history)
    Cfg.loss_watchdog_threshold = None
    assert LossWatchdog.from_config(Cfg()) is None


@pytest.mark.slow
def test_the_engine_stops_and_saves_when_the_watchdog_trips(make_config):
    from .test_runs import train_in_process

    cfg, _ = make_config("watchdog", max_steps=20, loss_watchdog_threshold=0.01, loss_watchdog_patience=2)
    run, summary = train_in_process(cfg)
    assert summary["status"] == "stopped_loss_watchdog"
    # log lines of steps 1 and 2 exceed the threshold; the second is read at the end of step 3
    assert summary["steps"] == 3 < summary["total_steps"]
    assert (run.output_dir / "KUBETUNE_COMPLETE").is_file()
