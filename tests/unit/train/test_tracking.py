"""Experiment tracking: TensorBoard event files read back with tensorboard's own reader, MLflow runs
read back through the MLflow client from a real `mlflow server` (tests/mlflow_server.py), W&B offline
run directories read back record by record; a run stopped by SIGTERM and resumed continues the same
tracker runs."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from kubetune.cli import main as cli

from tests.mlflow_server import mlflow_server

from .support import subprocess_env, torchrun_train

pytestmark = pytest.mark.slow

LORA = {"lora_target_linear": True, "lora_modules_to_save": ["lm_head"], "lora_r": 8, "lora_alpha": 16}
TRAIN_TAGS = ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second")


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


def scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every scalar event under log_dir (tensorboard's event reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: {event.step: event.value for event in accumulator.Scalars(tag)}
        for tag in accumulator.Tags()["scalars"]
    }


def wandb_records(path: Path) -> list:
    """The protobuf Records of a W&B run file (`run-<id>.wandb`).

    wandb 0.31 no longer ships a Python reader for its run files (its Go core writes them), so this
    reads the container: a `:W&B` header of 7 bytes, then LevelDB-log blocks of 32 KiB holding chunks
    (crc32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last); the records are wandb's own
    protobuf messages (wandb.proto.wandb_internal_pb2.Record).
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_history(out: Path, run_id: str) -> dict[str, dict[int, float]]:
    """metric -> {step: value} over every run directory of `run_id` under output_dir/wandb (a resumed
    offline run writes a new directory with the same id)."""
    history: dict[str, dict[int, float]] = {}
    files = sorted(out.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert files, sorted(p.name for p in (out / "wandb").iterdir())
    for path in files:
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                items = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
                for name, value in items.items():
                    if not name.startswith("_"):
                        steps = history.setdefault(name, {})
                        assert items["_step"] not in steps, f"{name} logged twice at step {items['_step']}"
                        steps[items["_step"]] = value
    return history


def metric_steps(client, run_id: str, name: str) -> dict[int, float]:
    history = client.get_metric_history(run_id, name)
    steps = [metric.step for metric in history]
    assert len(steps) == len(set(steps)), f"{name} logged twice for a step: {sorted(steps)}"
    return {metric.step: metric.value for metric in history}


def test_tensorboard_and_mlflow_receive_params_and_every_step(make_config, tracking_uri):
    from mlflow.tracking import MlflowClient

    cfg, path = make_config(
        "tracked",
        max_steps=6,
        val_set_size=0.05,
        eval_steps=3,
        use_tensorboard=True,
        mlflow_tracking_uri=tracking_uri,
        mlflow_experiment_name="kubetune-tests",
        mlflow_run_name="tracked-run",
        wandb_project="kubetune-tests",
        wandb_name="tracked-run",
        wandb_mode="offline",
        **LORA,
    )
    assert cli(["train", str(path)]) == 0
    out = Path(cfg.output_dir)
    summary = json.loads((out / "training_summary.json").read_text())
    losses = {entry["step"]: entry["loss"] for entry in summary["history"]}
    assert sorted(losses) == list(range(1, 7))
    state = json.loads((out / "tracking.json").read_text())

    # TensorBoard: one run directory under output_dir/runs, every step's numbers, the evaluations.
    log_dir = out / state["tensorboard"]["log_dir"]
    assert log_dir.parent == out / "runs" and list(log_dir.glob("events.out.tfevents.*"))
    board = scalars(log_dir)
    for tag in TRAIN_TAGS:
        assert sorted(board[tag]) == list(range(1, 7)), tag
    assert board["train/loss"] == pytest.approx(losses, rel=1e-4)
    assert sorted(board["eval/loss"]) == [3, 6]
    assert board["eval/loss"][6] == pytest.approx(summary["final_eval_loss"], rel=1e-4)
    lrs = board["train/learning_rate"]
    assert lrs[1] != lrs[6] and all(value > 0 for value in board["train/tokens_per_second"].values())

    # MLflow: the named experiment and run, finished, with the config as params and the same metrics.
    client = MlflowClient(tracking_uri)
    assert state["mlflow"]["tracking_uri"] == tracking_uri
    run = client.get_run(state["mlflow"]["run_id"])
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "kubetune-tests" and run.info.run_name == "tracked-run"
    assert run.info.status == "FINISHED"
    assert run.data.params["base_model"] == cfg.base_model
    assert run.data.params["max_steps"] == "6" and run.data.params["use_tensorboard"] == "true"
    assert run.data.params["datasets"].startswith("[{")
    for tag in TRAIN_TAGS:
        assert sorted(metric_steps(client, run.info.run_id, tag)) == list(range(1, 7)), tag
    assert metric_steps(client, run.info.run_id, "train/loss") == pytest.approx(losses, rel=1e-4)
    assert metric_steps(client, run.info.run_id, "train/learning_rate") == pytest.approx(lrs, rel=1e-4)
    evals = metric_steps(client, run.info.run_id, "eval/loss")
    assert sorted(evals) == [3, 6] and evals[6] == pytest.approx(summary["final_eval_loss"], rel=1e-4)

    # W&B, offline: the run directory under output_dir/wandb holds the config and the same history.
    wandb_id = state["wandb"]["run_id"]
    history = wandb_history(out, wandb_id)
    for tag in TRAIN_TAGS:
        assert sorted(history[tag]) == list(range(1, 7)), tag
    assert history["train/loss"] == pytest.approx(losses, rel=1e-4)
    assert sorted(history["eval/loss"]) == [3, 6]
    (records,) = [wandb_records(path) for path in out.glob(f"wandb/offline-run-*-{wandb_id}/*.wandb")]
    kinds = {record.WhichOneof("record_type"): record for record in records}
    assert kinds["run"].run.project == "kubetune-tests" and kinds["run"].run.display_name == "tracked-run"
    config = {item.key: json.loads(item.value_json) for item in kinds["run"].run.config.update}
    assert config["base_model"] == cfg.base_model and kinds["exit"].exit.exit_code == 0


def test_a_resumed_run_continues_the_same_tracker_runs(make_config, tracking_uri):
    from mlflow.tracking import MlflowClient

    total = 20
    cfg, path = make_config(
        "resumed",
        max_steps=total,
        use_tensorboard=True,
        mlflow_tracking_uri=tracking_uri,
        mlflow_experiment_name="kubetune-resume",
        wandb_project="kubetune-resume",
        wandb_mode="offline",
        **LORA,
    )
    out = Path(cfg.output_dir)
    process = subprocess.Popen(
        [sys.executable, "-m", "kubetune", "train", str(path)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if line.startswith("{") and json.loads(line).get("step", 0) >= 3:
            process.send_signal(signal.SIGTERM)
            break
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 143, stderr[-3000:]
    # stdout stays the JSON log lines: the trackers' own messages (MLflow's run URL, wandb's banners) are not in it
    assert [line for line in stdout.splitlines() if line.strip() and not line.startswith("{")] == []
    first = json.loads((out / "tracking.json").read_text())
    client = MlflowClient(tracking_uri)
    assert client.get_run(first["mlflow"]["run_id"]).info.status == "KILLED"
    stopped_at = max(metric_steps(client, first["mlflow"]["run_id"], "train/loss"))
    assert 3 <= stopped_at < total

    assert cli(["train", str(path)]) == 0  # the restarted group resumes from the SIGTERM checkpoint
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["resumed_from_step"] == stopped_at
    assert json.loads((out / "tracking.json").read_text()) == first  # same run id, same log directory

    run_id = first["mlflow"]["run_id"]
    experiment = client.get_experiment_by_name("kubetune-resume")
    assert [run.info.run_id for run in client.search_runs([experiment.experiment_id])] == [run_id]
    assert client.get_run(run_id).info.status == "FINISHED"
    for tag in TRAIN_TAGS:
        assert sorted(metric_steps(client, run_id, tag)) == list(range(1, total + 1)), tag
    runs = list((out / "runs").iterdir())
    assert runs == [out / first["tensorboard"]["log_dir"]]
    board = scalars(runs[0])
    for tag in TRAIN_TAGS:
        assert sorted(board[tag]) == list(range(1, total + 1)), tag
    history = wandb_history(out, first["wandb"]["run_id"])  # both offline directories carry the one id
    assert len(list((out / "wandb").glob(f"offline-run-*-{first['wandb']['run_id']}"))) == 2
    for tag in TRAIN_TAGS:
        assert sorted(history[tag]) == list(range(1, total + 1)), tag


def test_a_fresh_run_in_the_same_output_dir_starts_new_tracker_runs(make_config, tracking_uri):
    cfg, path = make_config("fresh", max_steps=2, mlflow_tracking_uri=tracking_uri, **LORA)
    out = Path(cfg.output_dir)
    assert cli(["train", str(path)]) == 0
    first = json.loads((out / "tracking.json").read_text())["mlflow"]["run_id"]
    (out / "KUBETUNE_COMPLETE").unlink()  # the same output_dir, trained again without resuming
    assert cli(["train", str(path)]) == 0
    second = json.loads((out / "tracking.json").read_text())["mlflow"]["run_id"]
    assert second != first


def test_only_rank_0_tracks_under_ddp(make_config, tracking_uri):
    from mlflow.tracking import MlflowClient

    cfg, path = make_config(
        "ddp",
        max_steps=3,
        use_tensorboard=True,
        mlflow_tracking_uri=tracking_uri,
        mlflow_experiment_name="kubetune-ddp",
        **LORA,
    )
    result = torchrun_train(path, 2, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = Path(cfg.output_dir)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("kubetune-ddp")
    (run,) = client.search_runs([experiment.experiment_id])  # one run, not one per rank
    assert sorted(metric_steps(client, run.info.run_id, "train/loss")) == [1, 2, 3]
    (log_dir,) = (out / "runs").iterdir()
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1
    assert sorted(scalars(log_dir)["train/loss"]) == [1, 2, 3]
