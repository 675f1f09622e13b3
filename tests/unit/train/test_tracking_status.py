"""status.tracking from the runtime's side: rank 0 names its tracker runs once, through the progress
ConfigMap's `tracking.json`, with no credentials in them; after a resume it names the same runs.

The credential test plants a secret in the MLflow tracking URI's userinfo and in the environment
(MLFLOW_TRACKING_TOKEN, WANDB_API_KEY) and follows the description all the way: the ConfigMap patch
the pod sends (to a local HTTP server standing in for the API server), then the operator's status and
events built from that ConfigMap.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import HTTPServer
from pathlib import Path

import pytest
from kubetune.config.redaction import without_credentials
from kubetune.train import tracking
from kubetune.train.progress import KubernetesReporter, Reporters, Throttled

from tests.mlflow_server import mlflow_server

from .test_progress import Recorder, sample

SECRET = "s3cr3t-planted-token"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (f"https://alice:{SECRET}@mlflow.example.com:8443/base", "https://mlflow.example.com:8443/base"),
        (f"https://{SECRET}@mlflow.example.com", "https://mlflow.example.com"),
        (f"http://mlflow:5000/?token={SECRET}#frag", "http://mlflow:5000/"),
        (f"alice:{SECRET}@mlflow:5000/path", "mlflow:5000/path"),
        ("file:///outputs/mlruns", "file:///outputs/mlruns"),
        ("/outputs/with@sign/mlruns", "/outputs/with@sign/mlruns"),
        ("databricks", "databricks"),
        ("http://[::1", ""),  # unparseable: nothing rather than a guess
    ],
)
def test_credentials_are_stripped_from_uris(uri, shown):
    assert without_credentials(uri) == shown


def test_the_mlflow_run_url_is_built_only_for_http_servers():
    uri = f"https://alice:{SECRET}@mlflow.example.com/"
    assert tracking.mlflow_run_url(uri, "7", "r1") == "https://mlflow.example.com/#/experiments/7/runs/r1"
    assert tracking.mlflow_run_url("file:///outputs/mlruns", "7", "r1") is None
    assert tracking.mlflow_run_url("databricks", "7", "r1") is None


def patches(send, directory: Path) -> list[dict]:
    """The ConfigMap data of every PATCH a KubernetesReporter sends while `send(reporters)` runs."""
    Recorder.requests = []
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = directory / "token"
    token.write_text("sa-token")
    try:
        reporter = KubernetesReporter(
            api_url=f"http://127.0.0.1:{server.server_port}",
            namespace="default",
            configmap="demo-progress",
            token_path=token,
            ca_path=None,
        )
        # As build_reporters wraps it: the announcement is never held back by the rate bound.
        reporters = Reporters([Throttled(reporter, 3600.0)])
        send(reporters)
        reporters.close()
    finally:
        server.shutdown()
    return [body["data"] for _, _, body in Recorder.requests]


def test_the_tracker_runs_go_to_their_own_key_beside_the_progress_report(tmp_path):
    entries = [{"kind": "tensorboard", "logDir": "/out/runs/x"}]

    def send(reporters):
        reporters.announce_tracking(entries)
        reporters.report(sample())

    sent = patches(send, tmp_path)
    merged = {key: value for data in sent for key, value in data.items()}
    assert json.loads(merged["tracking.json"]) == entries
    assert json.loads(merged["progress.json"])["step"] == 7
    # Nothing to announce (no tracker on): the key is never written.
    assert all("tracking.json" not in data for data in patches(lambda r: r.announce_tracking([]), tmp_path))


@pytest.mark.slow
def test_a_planted_secret_reaches_neither_the_configmap_nor_the_status_nor_events(
    make_config, tmp_path, monkeypatch, caplog
):
    from kubetune_operator.progress import read_tracking

    from tests.unit.operator.test_progress import add_pod, setup, status

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET)
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    caplog.set_level(logging.INFO)
    with mlflow_server(tmp_path / "mlflow") as server_uri:
        leaky_uri = server_uri.replace("http://", f"http://alice:{SECRET}@")
        cfg, _ = make_config(
            "tracked",
            use_tensorboard=True,
            mlflow_tracking_uri=leaky_uri,
            mlflow_experiment_name="status-tracking",
            wandb_project="status-tracking",
            wandb_mode="offline",
        )
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        trackers = tracking.start(cfg, out, resumed_from_step=None)
        described = tracking.describe(trackers)
        for tracker in trackers:
            tracker.report(sample(event="preempted"))
            tracker.close()
        # A group restart resumes from a checkpoint: the same runs, so the same description.
        resumed = tracking.start(cfg, out, resumed_from_step=7)
        assert tracking.describe(resumed) == described
        for tracker in resumed:
            tracker.close()

    by_kind = {entry["kind"]: entry for entry in described}
    mlflow = by_kind["mlflow"]
    assert mlflow["uri"] == server_uri and mlflow["experiment"] == "status-tracking"
    assert mlflow["url"] == f"{server_uri}/#/experiments/{mlflow['experimentId']}/runs/{mlflow['runId']}"
    assert by_kind["tensorboard"]["logDir"].startswith(str(out / "runs"))
    assert by_kind["wandb"]["project"] == "status-tracking" and by_kind["wandb"]["mode"] == "offline"
    assert "url" not in by_kind["wandb"]  # an offline run has no page

    sent = patches(lambda reporters: reporters.announce_tracking(described), tmp_path)
    assert sent and SECRET not in json.dumps(sent)
    assert SECRET not in caplog.text and SECRET not in (out / "tracking.json").read_text()

    # The operator's side, from exactly what the pod sent.
    kube, reconciler = setup()
    add_pod(kube, 0)
    add_pod(kube, 1)
    kube.objects[("ConfigMap", "default", "demo-progress")]["data"] = sent[-1]
    reconciler.reconcile("default", "demo")
    assert status(kube)["tracking"] == read_tracking({"data": sent[-1]}) == described
    assert any(event[1] == "TrackerRuns" for event in kube.events)
    assert SECRET not in json.dumps(status(kube)) and SECRET not in json.dumps(kube.events)


@pytest.mark.slow
def test_a_training_run_announces_its_tracker_runs_once(make_config, monkeypatch):
    from kubetune.cli import main as cli

    announced = []
    real = Reporters.announce_tracking
    monkeypatch.setattr(Reporters, "announce_tracking", lambda self, entries: (announced.append(entries),
                                                                              real(self, entries)))  # fmt: skip
    cfg, path = make_config("announced", max_steps=2, use_tensorboard=True)
    assert cli(["train", str(path)]) == 0
    state = json.loads((Path(cfg.output_dir) / "tracking.json").read_text())
    assert announced == [
        [{"kind": "tensorboard", "logDir": str(Path(cfg.output_dir) / state["tensorboard"]["log_dir"])}]
    ]
