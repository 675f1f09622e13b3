"""--log-format: JSON lines for pods, readable lines for logs, a live display on a terminal."""

from __future__ import annotations

import io
import json

import pytest
from kubetune.console import LiveDisplay, PlainLines, describe, resolve_log_format
from kubetune.train.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def progress(**keys) -> Progress:
    values = dict(
        step=30,
        total_steps=60,
        epoch=0.47,
        loss=3.47352,
        learning_rate=0.005,
        tokens_per_second=1171.4,
        trained_tokens=1031,
        eta_seconds=24.6,
    )
    return Progress(**(values | keys))


def test_auto_is_a_display_on_a_terminal_and_json_elsewhere(monkeypatch):
    monkeypatch.delenv("KUBETUNE_LOG_FORMAT", raising=False)
    assert resolve_log_format(None, Terminal()) == "display"
    assert resolve_log_format("auto", io.StringIO()) == "json"
    assert resolve_log_format("plain", Terminal()) == "plain"  # the flag wins over the terminal
    monkeypatch.setenv("KUBETUNE_LOG_FORMAT", "plain")
    assert resolve_log_format(None, Terminal()) == "plain"  # the environment, where no flag is given
    assert resolve_log_format("json", Terminal()) == "json"  # and the flag over the environment
    monkeypatch.setenv("KUBETUNE_LOG_FORMAT", "fancy")
    with pytest.raises(ValueError, match="KUBETUNE_LOG_FORMAT='fancy': expected one of auto, json, plain"):
        resolve_log_format(None)


def test_plain_lines_are_readable_and_name_every_figure():
    stream = io.StringIO()
    reporter = PlainLines(stream)
    reporter.report(progress())
    reporter.report(progress(event="checkpoint", last_checkpoint="/out/checkpoints/checkpoint-30"))
    reporter.report(progress(event="eval", eval_loss=2.5, eval_perplexity=12.18))
    assert stream.getvalue().splitlines() == [
        "step 30/60 (50%)  loss 3.4735  lr 0.005  1,171 tok/s  eta 0:00:24",
        "checkpoint at step 30/60 (50%): /out/checkpoints/checkpoint-30",
        "eval at step 30/60 (50%): eval_loss 2.5000, perplexity 12.1800",
    ]


def test_the_live_display_shows_step_loss_lr_speed_eta_and_the_last_checkpoint():
    from rich.console import Console

    screen = io.StringIO()
    display = LiveDisplay(Console(file=screen, force_terminal=True, width=160, color_system=None))
    display.report(progress(step=5, loss=4.1, eta_seconds=75))
    display.report(progress(event="checkpoint", last_checkpoint="/out/checkpoints/checkpoint-30"))
    display.report(progress(step=35, loss=3.6621, eta_seconds=3725))
    display.close()
    text = screen.getvalue()
    assert "checkpoint at step 30/60 (50%): /out/checkpoints/checkpoint-30" in text  # the event line stays
    final = text.rsplit("\r", 1)[-1]  # the display's last frame
    for shown in (
        "35/60 steps",
        "loss 3.6621",
        "lr 0.005",
        "1,171 tok/s",
        "ckpt checkpoint-30",
        "ETA 1:02:05",
    ):
        assert shown in final, (shown, final)
    assert "{" not in text  # no JSON on the terminal


def test_json_lines_stay_the_pods_format():
    line = json.loads(json.dumps(progress().log_line()))
    assert line["step"] == 30 and line["loss"] == 3.47352 and line["tokens_per_s"] == 1171.4
    assert describe(progress(event="done")) == "done at step 30/60 (50%): loss 3.4735"


def test_setup_replaces_only_its_own_log_handler(monkeypatch):
    import logging

    from kubetune.console import setup_console

    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    before = list(root.handlers)
    try:
        monkeypatch.setenv("KUBETUNE_LOG_FORMAT", "auto")
        setup_console("plain")
        setup_console("json")
        ours = [h for h in root.handlers if getattr(h, "kubetune_console", False)]
        assert len(ours) == 1 and foreign in root.handlers  # e.g. pytest's caplog handler survives
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
        root.removeHandler(foreign)
