"""`kubetune launch`: torchrun whose workers get KUBETUNE_WORKER_STOP_TIMEOUT seconds after SIGTERM."""

from __future__ import annotations

import inspect
import signal
import subprocess
import sys
import time

import pytest
from kubetune.train.commands import launch

from .support import subprocess_env

WORKER = """
import pathlib, signal, sys, time
out, save_seconds = pathlib.Path(sys.argv[1]), float(sys.argv[2])

def checkpoint_and_exit(*_):
    time.sleep(save_seconds)  # a checkpoint that takes this long
    (out / "saved").write_text("saved")
    sys.exit(143)

signal.signal(signal.SIGTERM, checkpoint_and_exit)
(out / "ready").write_text("ready")
while True:
    time.sleep(0.05)
"""


def sigterm_launcher(tmp_path, stop_timeout: int, save_seconds: float) -> float:
    """SIGTERM to `kubetune launch` (as Kubernetes sends it to the container); seconds until it exited."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "worker.py").write_text(WORKER)
    command = [sys.executable, "-m", "kubetune", "launch", "--standalone", "--nproc-per-node", "1"]
    process = subprocess.Popen(
        [*command, str(tmp_path / "worker.py"), str(tmp_path), str(save_seconds)],
        env=subprocess_env() | {launch.STOP_TIMEOUT_ENV: str(stop_timeout)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "ready").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the worker never started"
        time.sleep(0.05)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    return time.monotonic() - sent


@pytest.mark.slow
def test_the_workers_get_the_configured_time_to_stop_after_sigterm(tmp_path):
    took = sigterm_launcher(tmp_path / "enough", stop_timeout=20, save_seconds=2)
    assert (tmp_path / "enough" / "saved").is_file() and took < 20
    took = sigterm_launcher(tmp_path / "short", stop_timeout=1, save_seconds=6)
    assert not (tmp_path / "short" / "saved").exists() and took < 6  # SIGKILLed after 1 s, not 30


def test_the_timeout_becomes_torchruns_default_above_its_30_seconds(monkeypatch):
    from torch.distributed.elastic.multiprocessing.api import PContext

    monkeypatch.setattr(PContext, "close", PContext.close)  # undone after the test
    launch.give_workers(570)
    assert inspect.signature(PContext.close).parameters["timeout"].default == 570
    launch.give_workers(40)  # applied twice: still wraps torch's own close
    assert inspect.signature(PContext.close.torch_close).parameters["timeout"].default == 30


@pytest.mark.parametrize("value", ["ten", "0", "-3"])
def test_a_bad_timeout_is_refused_with_the_variable_named(monkeypatch, value):
    monkeypatch.setenv(launch.STOP_TIMEOUT_ENV, value)
    with pytest.raises(SystemExit, match=launch.STOP_TIMEOUT_ENV):
        launch.stop_timeout()


def test_without_the_variable_torchruns_own_timeout_stays(monkeypatch):
    monkeypatch.delenv(launch.STOP_TIMEOUT_ENV, raising=False)
    assert launch.stop_timeout() == 30
