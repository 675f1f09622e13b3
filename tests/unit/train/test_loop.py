"""Loop bookkeeping that needs no model: early stopping and the SIGTERM flag."""

from __future__ import annotations

import math
import os
import signal
from types import SimpleNamespace

import pytest
import torch
from kubetune.train import loop
from kubetune.train.checkpoint import TrainerState
from kubetune.train.sync import Interval


def test_early_stopping_after_patience_evaluations_without_a_new_best(monkeypatch):
    losses = iter([3.0, 2.5, 2.6, 2.4, 2.45, 2.5])
    monkeypatch.setattr(loop, "evaluate", lambda run: (next(losses), 1.0))
    run = SimpleNamespace(
        state=TrainerState(),
        cfg=SimpleNamespace(early_stopping_patience=2),
        accelerator=SimpleNamespace(is_main_process=False),
        pending_log=None,
        scheduler=None,
        module=torch.nn.Linear(1, 1),  # an SFT objective
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
        scheduler=None,
        module=torch.nn.Linear(1, 1),  # an SFT objective
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


@pytest.mark.parametrize("grad_norm", [None, torch.tensor(2.5), torch.tensor(float("nan"))])
def test_a_logged_step_reports_its_loss_and_grad_norm_once_flushed(monkeypatch, grad_norm):
    """A NaN grad norm (a diverging run) is reported as NaN, not dropped; a step without one reports None."""
    reports = []
    monkeypatch.setattr(loop, "report", lambda run, event, **metrics: reports.append((event, metrics)))
    acc = SimpleNamespace(device=torch.device("cpu"), reduce=lambda tensor, reduction: tensor * 2)
    run = SimpleNamespace(
        accelerator=acc,
        state=TrainerState(step=7, trained_tokens=40, input_tokens=64),
        scheduler=SimpleNamespace(get_last_lr=lambda: [0.01]),
        pending_log=None,
        module=torch.nn.Linear(1, 1),  # an SFT objective: no reward metrics
        group=1,
    )
    interval = Interval(started=0.0, loss_sum=torch.tensor(30.0), trained=20.0, tokens=32.0)
    run.pending_log = loop.begin_log(run, interval, grad_norm, eta=5.0)
    run.state.step = 8  # the next step is queued before the line is read
    loop.flush_log(run)
    loop.flush_log(run)  # nothing pending any more: no second report

    assert len(reports) == 1
    event, metrics = reports[0]
    assert event == "train" and metrics["step"] == 7 and metrics["loss"] == 3.0  # 2 ranks x 30 / 20
    assert (metrics["trained_tokens"], metrics["input_tokens"], metrics["learning_rate"]) == (40, 64, 0.01)
    assert metrics["rewards"] is None
    if grad_norm is None:
        assert metrics["grad_norm"] is None
    elif grad_norm.isnan():
        assert math.isnan(metrics["grad_norm"])
    else:
        assert metrics["grad_norm"] == 2.5
    assert run.state.history == [{"step": 7, "loss": 3.0, "lr": 0.01}]
