"""SIGTERM: the operator keeps serving for the drain period, then stops (the webhook stays up while
its pod leaves the Service's endpoints, so creates are not refused during a restart)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from kubetune_operator.shutdown import run_until_terminated


def serving(log: list):
    def run(stop_flag: threading.Event) -> None:
        log.append(("started", time.monotonic()))
        stop_flag.wait(30)
        log.append(("stopped", time.monotonic()))

    return run


def test_sigterm_keeps_serving_for_the_drain_then_stops():
    log: list = []
    sent = []
    threading.Timer(
        0.3, lambda: (sent.append(time.monotonic()), os.kill(os.getpid(), signal.SIGTERM))
    ).start()
    run_until_terminated(serving(log), drain_seconds=1.0)
    (_, stopped) = log[-1]
    assert log[0][0] == "started" and log[-1][0] == "stopped"
    assert 1.0 <= stopped - sent[0] < 5.0  # served the drain period after the signal, then stopped
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_a_run_that_ends_by_itself_needs_no_signal_and_its_error_is_raised():
    started = time.monotonic()
    run_until_terminated(lambda stop_flag: None, drain_seconds=30)
    assert time.monotonic() - started < 5  # no drain when kopf ended on its own

    def broken(stop_flag):
        raise RuntimeError("kopf failed")

    with pytest.raises(RuntimeError, match="kopf failed"):
        run_until_terminated(broken, drain_seconds=30)


def test_the_previous_signal_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    run_until_terminated(lambda stop_flag: None, drain_seconds=0)
    assert signal.getsignal(signal.SIGTERM) == before
