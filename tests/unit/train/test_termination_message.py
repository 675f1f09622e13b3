"""Every pod of a failed run says why in its termination message, not only global rank 0's pod.

The operator reports whichever worker it sees fail first; a pod whose message were torchrun's log
tail would leave `status.message` useless (found by the e2e test of an always-crashing config).
"""

from __future__ import annotations

import json

import pytest
from kubetune.train import loop, runner
from kubetune.train.errors import Preempted, UserError


def _run_failing(monkeypatch, tmp_path, error: Exception, rank: int, local_rank: int) -> tuple[int, str]:
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))

    def train(cfg):
        raise error

    monkeypatch.setattr(loop, "train", train)
    return runner.run(cfg=None), log.read_text()


@pytest.mark.parametrize("rank", [0, 1, 5])
def test_the_first_process_of_every_pod_writes_the_reason(monkeypatch, tmp_path, rank):
    error = UserError(
        "base_model is the directory /m, which does not exist.", "fix the path", key="base_model"
    )
    code, message = _run_failing(monkeypatch, tmp_path, error, rank=rank, local_rank=0)
    assert code == 2
    assert json.loads(message) == {
        "status": "bad_input",
        "exit_code": 2,
        "reason": "base_model is the directory /m, which does not exist.",
    }


def test_other_processes_of_a_pod_leave_the_message_alone(monkeypatch, tmp_path):
    code, message = _run_failing(monkeypatch, tmp_path, RuntimeError("boom"), rank=3, local_rank=1)
    assert code == 1 and message == ""


def test_training_failures_and_preemption_on_any_pod(monkeypatch, tmp_path):
    code, message = _run_failing(
        monkeypatch, tmp_path, RuntimeError("gloo: connection closed"), rank=1, local_rank=0
    )
    assert code == 1
    assert json.loads(message) == {
        "status": "failed",
        "exit_code": 1,
        "reason": "RuntimeError: gloo: connection closed",
    }
    code, message = _run_failing(monkeypatch, tmp_path, Preempted(40, "/out/checkpoints/checkpoint-40"), 1, 0)
    assert code == 143
    assert json.loads(message) == {"status": "preempted", "steps": 40, "exit_code": 143}


def test_a_restarted_worker_of_a_completed_run_reports_its_summary_again(monkeypatch, tmp_path):
    """StatefulSet pods restart after success: the new exit's message must still carry the figures."""
    from kubetune.config import load_config
    from kubetune.train import outputs

    out = tmp_path / "out"
    out.mkdir()
    summary = {"status": "completed", "steps": 30, "final_train_loss": 1.25, "trained_tokens": 4096}
    outputs.mark_complete(out, summary)
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = load_config(
        {
            "base_model": str(tmp_path / "never-loaded"),
            "datasets": [{"path": str(tmp_path / "never-read.jsonl"), "type": "alpaca"}],
            "learning_rate": 1e-3,
            "max_steps": 30,
            "output_dir": str(out),
        }
    )
    assert runner.run(cfg) == 0
    assert json.loads(log.read_text()) == summary


def test_data_problems_are_bad_input_with_every_key_path(monkeypatch, tmp_path, capsys):
    """The data pipeline's DataError reaches the runner as it is (no conversion): each problem is
    printed with its key path and fix, the termination reason is the whole report."""
    from kubetune.config import ConfigProblem
    from kubetune.data import DataError

    error = DataError(
        [
            ConfigProblem("datasets[0].path", "no file at /data/a.jsonl", "point path at the file"),
            ConfigProblem(
                "sequence_len", "every example is longer than sequence_len 16", "raise sequence_len"
            ),
        ]
    )
    code, message = _run_failing(monkeypatch, tmp_path, error, rank=0, local_rank=0)
    assert code == 2
    assert json.loads(message) == {"status": "bad_input", "exit_code": 2, "reason": str(error)}
    assert capsys.readouterr().err.splitlines() == [
        "kubetune: cannot train (datasets[0].path, sequence_len):",
        "  datasets[0].path: no file at /data/a.jsonl",
        "    fix: point path at the file",
        "  sequence_len: every example is longer than sequence_len 16",
        "    fix: raise sequence_len",
        "  Nothing in output_dir was changed.",
    ]


def test_a_user_error_is_one_config_problem():
    from kubetune.config import ConfigError, ConfigProblem

    error = UserError("no CUDA GPU here", "set adapter: lora", key="load_in_4bit")
    assert isinstance(error, ConfigError)
    assert error.problems == [ConfigProblem("load_in_4bit", "no CUDA GPU here", "set adapter: lora")]
    assert str(error).splitlines() == [
        "kubetune: cannot train (load_in_4bit):",
        "  no CUDA GPU here",
        "  fix: set adapter: lora",
        "  Nothing in output_dir was changed.",
    ]
    assert UserError("bitsandbytes is not installed", "install it").key is None
