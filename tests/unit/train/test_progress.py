"""Progress reporters: log lines, the progress file, and the Kubernetes status patch."""

import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from kubetune.console import JsonLines
from kubetune.train.progress import (
    FileReporter,
    KubernetesReporter,
    Progress,
    Reporters,
    Throttled,
    build_reporters,
)

STATUS_FIELDS = {
    "step",
    "totalSteps",
    "epoch",
    "loss",
    "learningRate",
    "tokensPerSecond",
    "trainedTokens",
    "etaSeconds",
    "lastCheckpoint",
    "resumedFromStep",
    "completed",
    "percent",
    "outputDir",
    "updatedAt",
}


def sample(**keys) -> Progress:
    values = dict(
        step=7,
        total_steps=30,
        epoch=0.5,
        loss=2.345678912,
        learning_rate=1e-4,
        grad_norm=0.5,
        tokens_per_second=1234.56,
        trained_tokens=999,
        eta_seconds=61.7,
        output_dir="/out",
    )
    return Progress(**(values | keys))


def test_status_has_exactly_the_contract_fields():
    status = sample(last_checkpoint="/out/checkpoints/checkpoint-5", resumed_from_step=5).status()
    assert set(status) == STATUS_FIELDS
    assert status["totalSteps"] == 30 and status["etaSeconds"] == 61 and status["updatedAt"].endswith("Z")


def test_percent_is_the_share_of_steps_done_for_the_progress_column():
    assert sample(step=7, total_steps=30).status()["percent"] == "23%"  # rounded down, as kubectl shows it
    assert sample(step=30, total_steps=30).status()["percent"] == "100%"
    assert sample(step=31, total_steps=30).status()["percent"] == "100%"
    assert sample(step=0, total_steps=0).status()["percent"] is None


def test_stdout_prints_one_json_line_per_report_when_not_a_terminal():
    stream = io.StringIO()
    JsonLines(stream).report(sample())
    line = json.loads(stream.getvalue())
    assert line == {
        "event": "train",
        "step": 7,
        "total_steps": 30,
        "epoch": 0.5,
        "loss": 2.34568,
        "lr": 1e-4,
        "grad_norm": 0.5,
        "trained_tokens": 999,
        "tokens_per_s": 1234.6,
        "eta_s": 61,
    }


def test_file_reporter_rewrites_the_file(tmp_path):
    reporter = FileReporter(tmp_path / "sub" / "progress.json")
    reporter.report(sample(step=1))
    reporter.report(sample(step=2))
    assert json.loads((tmp_path / "sub" / "progress.json").read_text())["step"] == 2
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["progress.json"]


def test_throttle_lets_one_report_per_interval_and_forced_ones_through():
    seen, now = [], [0.0]

    class Sink:
        def report(self, progress):
            seen.append(progress.step)

    throttled = Throttled(Sink(), interval=5.0, clock=lambda: now[0])
    for step, at in [(1, 0.0), (2, 1.0), (3, 4.9), (4, 5.1), (5, 6.0)]:
        now[0] = at
        throttled.report(sample(step=step))
    throttled.report(sample(step=6), force=True)
    assert seen == [1, 4, 6]


class Recorder(BaseHTTPRequestHandler):
    requests: list = []

    def do_PATCH(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Recorder.requests.append((self.path, dict(self.headers), json.loads(body)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_kubernetes_reporter_merge_patches_the_progress_configmap(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    try:
        reporter = KubernetesReporter(
            api_url=f"http://127.0.0.1:{server.server_port}",
            namespace="team",
            configmap="job-a-progress",
            token_path=token,
            ca_path=None,
        )
        reporter.report(sample(completed=True))
        reporter.close()
    finally:
        server.shutdown()
    path, headers, body = Recorder.requests[-1]
    # The pod's only write: its own ConfigMap, never the FineTuneJob (whose status the operator owns).
    assert path == "/api/v1/namespaces/team/configmaps/job-a-progress"
    assert headers["Authorization"] == "Bearer secret-token"
    assert headers["Content-Type"] == "application/merge-patch+json"
    progress = json.loads(body["data"]["progress.json"])
    assert set(progress) == STATUS_FIELDS and progress["completed"] is True


def test_an_unreachable_api_server_logs_a_warning_and_never_raises(tmp_path, caplog):
    token = tmp_path / "token"
    token.write_text("t")
    reporter = KubernetesReporter(
        api_url="http://127.0.0.1:9",
        namespace="n",
        configmap="j-progress",
        token_path=token,
        ca_path=None,
        timeout=1.0,
    )
    with caplog.at_level(logging.WARNING):
        reporter.report(sample())
        reporter.close()
    assert "could not report progress" in caplog.text


def test_a_failing_reporter_is_skipped(caplog):
    class Broken:
        def report(self, progress):
            raise OSError("disk full")

        def close(self):
            pass

    stream = io.StringIO()
    reporters = Reporters([Broken(), JsonLines(stream)])
    with caplog.at_level(logging.WARNING):
        reporters.report(sample())
    assert "disk full" in caplog.text and json.loads(stream.getvalue())["step"] == 7


def test_environment_selects_the_reporters(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_PROGRESS_FILE", str(tmp_path / "p.json"))
    monkeypatch.setenv("KUBETUNE_PROGRESS_CONFIGMAP", "job-progress")
    monkeypatch.setenv("KUBETUNE_JOB_NAMESPACE", "ns")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # no API server: no Kubernetes reporter
    monkeypatch.delenv("KUBETUNE_LOG_FORMAT", raising=False)
    names = [type(getattr(r, "reporter", r)).__name__ for r in build_reporters().reporters]
    assert names == ["JsonLines", "FileReporter"]  # pytest's stdout is no terminal: auto means json
    assert build_reporters(enabled=False).reporters == []


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_train_prints_the_chosen_log_format(make_config, capsys, monkeypatch, log_format):
    from kubetune.cli import main as cli

    monkeypatch.setenv("KUBETUNE_LOG_FORMAT", "auto")  # restored afterwards: the command exports its choice
    _, path = make_config(log_format, max_steps=4, logging_steps=2, save_steps=2)
    assert cli(["train", str(path), "--log-format", log_format]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    steps = [line for line in lines if line.startswith("step ")]
    if log_format == "plain":
        assert not any(line.startswith("{") for line in lines), lines
        assert steps[0].startswith("step 2/4 (50%)  loss ") and "tok/s" in steps[0] and "eta " in steps[0]
        assert any(line.startswith("checkpoint at step 2/4 (50%): ") for line in lines), lines
        assert lines[-1].startswith("done at step 4/4 (100%): loss ") and "outputs in " in lines[-1]
    else:
        events = [json.loads(line) for line in lines]
        assert [e["step"] for e in events if e["event"] == "train"] == [2, 4] and not steps
        assert events[-1]["event"] == "done"
