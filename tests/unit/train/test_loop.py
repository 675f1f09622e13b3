"""Loop bookkeeping that needs no model: early stopping and the SIGTERM flag."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

from kubetune.train import loop
from kubetune.train.checkpoint import TrainerState


def test_early_stopping_after_patience_evaluations_without_a_new_best(monkeypatch):
    losses = iter([3.0, 2.5, 2.6, 2.4, 2.45, 2.5])
    monkeypatch.setattr(loop, "evaluate", lambda run: (next(losses), 1.0))
    run = SimpleNamespace(
        state=TrainerState(),
        cfg=SimpleNamespace(early_stopping_patience=2),
        accelerator=SimpleNamespace(is_main_process=False),
        pending_log=None,
    )
    stops = [loop.evaluate_and_track(run) for _ in range(6)]
    assert stops == [False, False, False, False, False, True]
    assert run.state.best_eval_loss == 2.4 and run.state.last_eval_loss == 2.5


def test_without_patience_evaluation_never_stops(monkeypatch):
    monkeypatch.setattr(loop, "evaluate", lambda run: (9.0, 1.0))
    run = SimpleNamespace(
        state=TrainerState(best_eval_loss=1.0),
        cfg=SimpleNamespace(early_stopping_patience=None),
        accelerator=SimpleNamespace(is_main_process=False),
        pending_log=None,
    )
    assert not any(loop.evaluate_and_track(run) for _ in range(5))


def test_sigterm_sets_the_flag_and_the_previous_handler_comes_back():
    previous = signal.getsignal(signal.SIGTERM)
    stop = loop.StopFlag()
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is previous
