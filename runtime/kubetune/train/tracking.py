"""Experiment tracking from rank 0: TensorBoard event files and MLflow runs, fed by the progress reports.

    check_request(cfg)                                   # before anything loads: the libraries are there
    trackers = start(cfg, output_dir, resumed_from_step=state.resumed_from_step)   # rank 0 only
    reporters.reporters.extend(trackers)                 # each gets every Progress report, then close()

Each tracker is a progress reporter (kubetune.train.progress): it sees every train, eval, checkpoint,
preempted and done report, so it logs the same numbers the log lines and `status.progress` show: per
step `train/loss`, `train/learning_rate`, `train/grad_norm`, `train/tokens_per_second`, and
`eval/loss`, `eval/perplexity` at each evaluation. A tracker that fails logs a warning and never stops
training (progress.Reporters).

A group restart resumes from a checkpoint; the run must go on in the same tracker run, not start a new
one. The identity of the runs (TensorBoard's log directory, MLflow's tracking URI and run id) is kept in
`output_dir/tracking.json`, which lives beside the checkpoints on the job's output volume. It is reused
only when the run resumes from a checkpoint; a fresh run starts new tracker runs (and rewrites it).

`describe(trackers)` names the runs for `status.tracking` (kind, server, experiment, run id, a URL
where one can be built); rank 0 reports it once at start through the progress ConfigMap. After a
resume the runs are the same, so the description is too. URIs are stripped of credentials first
(kubetune.config.redaction): nothing from the environment or a URI's userinfo leaves the pod.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from kubetune.config.redaction import without_credentials
from kubetune.train.errors import UserError
from kubetune.train.progress import Progress

if TYPE_CHECKING:
    from kubetune.config import TrainConfig

log = logging.getLogger(__name__)

STATE_FILE = "tracking.json"
TENSORBOARD_DIR = "runs"  # as transformers' Trainer: output_dir/runs/<date>_<host>
# MLflow refuses longer parameter values (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
MAX_PARAM_LENGTH = 6000


def mlflow_enabled(cfg: TrainConfig) -> bool:
    """use_mlflow, which defaults to on when mlflow_tracking_uri is set (Axolotl's behaviour)."""
    return cfg.use_mlflow if cfg.use_mlflow is not None else bool(cfg.mlflow_tracking_uri)


def wandb_enabled(cfg: TrainConfig) -> bool:
    """use_wandb, which defaults to on when wandb_project is set (Axolotl's behaviour)."""
    return cfg.use_wandb if cfg.use_wandb is not None else bool(cfg.wandb_project)


def check_request(cfg: TrainConfig) -> None:
    """UserError (exit 2) before any weights load when a tracker's library is missing from the image."""
    needs = []
    if cfg.use_tensorboard:
        needs.append(("use_tensorboard", "tensorboard"))
    if mlflow_enabled(cfg):
        needs.append(("use_mlflow", "mlflow"))
    if wandb_enabled(cfg):
        needs.append(("use_wandb", "wandb"))
    for key, module in needs:
        if importlib.util.find_spec(module) is None:
            raise UserError(
                f"{key} needs the {module} package, which is not installed.",
                "pip install 'kubetune[tracking]' in the training image (it brings tensorboard, the "
                "mlflow-skinny client and wandb), or turn the tracker off.",
                key=key,
            )


def metrics_of(progress: Progress) -> dict[str, float]:
    """The tracked numbers of one report (train or eval), by tracker name; None values left out."""
    if progress.event == "train":
        values = {
            "train/loss": progress.loss,
            "train/learning_rate": progress.learning_rate,
            "train/grad_norm": progress.grad_norm,
            "train/tokens_per_second": progress.tokens_per_second,
        }
        # rl: runs: trl's reward means (rewards/margins, ...) as trl's trainers log them
        values |= {f"train/{name}": value for name, value in (progress.rewards or {}).items()}
    elif progress.event == "eval":
        values = {"eval/loss": progress.eval_loss, "eval/perplexity": progress.eval_perplexity}
        values |= {
            f"eval/{name.removeprefix('eval_')}": value for name, value in (progress.rewards or {}).items()
        }
    else:
        return {}
    return {name: float(value) for name, value in values.items() if value is not None}


def start(cfg: TrainConfig, output_dir: Path, *, resumed_from_step: int | None) -> list:
    """The trackers the config turns on, each continuing its earlier run when the run resumed."""
    previous = load_state(output_dir) if resumed_from_step is not None else {}
    state: dict[str, dict] = {}
    trackers: list = []
    if cfg.use_tensorboard:
        board = TensorBoardTracker(output_dir, previous.get("tensorboard"), resumed_from_step)
        state["tensorboard"] = board.identity()
        trackers.append(board)
    if mlflow_enabled(cfg):
        try:
            mlflow_run = MlflowTracker(cfg, previous.get("mlflow"))
        except Exception as err:  # noqa: BLE001 - whatever the client raises, the job cannot track: say why
            raise UserError(
                f"could not start the MLflow run at "
                f"{without_credentials(cfg.mlflow_tracking_uri or '') or 'the MLflow default URI'}: {err}",
                "Check that mlflow_tracking_uri (or MLFLOW_TRACKING_URI) names a tracking server the pods can "
                "reach, with its credentials (MLFLOW_TRACKING_TOKEN, ...) in the pods' environment.",
                key="mlflow_tracking_uri",
            ) from err
        state["mlflow"] = mlflow_run.identity()
        trackers.append(mlflow_run)
    if wandb_enabled(cfg):
        wandb_run = WandbTracker(cfg, output_dir, previous.get("wandb"))
        state["wandb"] = wandb_run.identity()
        trackers.append(wandb_run)
    if state:
        save_state(output_dir, state)
    return trackers


def describe(trackers: list) -> list[dict[str, str]]:
    """What `status.tracking` shows of each tracker run (camelCase; None values left out)."""
    entries = []
    for tracker in trackers:
        entry = {key: str(value) for key, value in tracker.describe().items() if value not in (None, "")}
        entries.append(entry)
    return entries


def mlflow_run_url(tracking_uri: str, experiment_id: str | None, run_id: str) -> str | None:
    """The run's page in the MLflow UI, which the tracking server serves at its root (http(s) only)."""
    uri = without_credentials(tracking_uri)
    if not uri.startswith(("http://", "https://")) or not experiment_id:
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def shareable_config(cfg: TrainConfig) -> dict:
    """The config as trackers record it (MLflow params, W&B config): the tracking URI without credentials."""
    mapping = cfg.to_mapping()
    if mapping.get("mlflow_tracking_uri"):
        mapping["mlflow_tracking_uri"] = without_credentials(mapping["mlflow_tracking_uri"])
    return mapping


def load_state(output_dir: Path) -> dict:
    path = output_dir / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("could not read %s (%s): starting new tracker runs", path, err)
        return {}


def save_state(output_dir: Path, state: dict) -> None:
    path = output_dir / STATE_FILE
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(state, indent=2))
    os.replace(temp, path)


def _terminal_event(event: str | None) -> str:
    """How a tracker run ends: done, preempted (the group restarts and continues it), or failed."""
    return {"done": "FINISHED", "preempted": "KILLED"}.get(event or "", "FAILED")


class TensorBoardTracker:
    """Event files under output_dir/runs/<date>_<host>/ (torch.utils.tensorboard's SummaryWriter)."""

    def __init__(self, output_dir: Path, previous: dict | None, resumed_from_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        if previous and previous.get("log_dir"):
            self.log_dir = previous["log_dir"]
        else:
            stamp = datetime.now(timezone.utc).strftime("%b%d_%H-%M-%S")
            self.log_dir = f"{TENSORBOARD_DIR}/{stamp}_{socket.gethostname()}"
        # After a resume, points logged past the checkpoint (before a crash) are dropped so the curve has
        # one value per step: purge_step discards events at and after it.
        purge = resumed_from_step + 1 if resumed_from_step is not None and previous else None
        self.writer = SummaryWriter(log_dir=str(output_dir / self.log_dir), purge_step=purge)
        self.output_dir = output_dir
        self.last_event: str | None = None

    def identity(self) -> dict:
        return {"log_dir": self.log_dir}

    def describe(self) -> dict:
        return {"kind": "tensorboard", "logDir": str(self.output_dir / self.log_dir)}

    def report(self, progress: Progress) -> None:
        self.last_event = progress.event
        for name, value in metrics_of(progress).items():
            self.writer.add_scalar(name, value, progress.step)
        if progress.event in ("checkpoint", "preempted", "done"):
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowTracker:
    """An MLflow run: the config as params, the tracked numbers as metrics by step.

    The client is MlflowClient (no process-wide active run): the tracking URI is the config's, else
    MLflow's own default (MLFLOW_TRACKING_URI, e.g. from the pod's environment; else ./mlruns).
    """

    def __init__(self, cfg: TrainConfig, previous: dict | None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=cfg.mlflow_tracking_uri)
        self.tracking_uri = self.client.tracking_uri
        self.last_event: str | None = None
        self.experiment_name = cfg.mlflow_experiment_name or "Default"
        # The state file (and every log line) names the server without its credentials.
        self.shown_uri = without_credentials(self.tracking_uri)
        if previous and previous.get("run_id") and previous.get("tracking_uri") == self.shown_uri:
            self.run_id = previous["run_id"]
            self.experiment_id = previous.get("experiment_id")
            self.client.update_run(self.run_id, status="RUNNING")
            log.info("MLflow: continuing run %s at %s", self.run_id, self.shown_uri)
            return
        name = self.experiment_name
        experiment = self.client.get_experiment_by_name(name)
        self.experiment_id = (
            experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
        )
        run = self.client.create_run(self.experiment_id, run_name=cfg.mlflow_run_name)
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=_params(shareable_config(cfg)))
        log.info("MLflow: run %s in experiment %r at %s", self.run_id, name, self.shown_uri)

    def identity(self) -> dict:
        return {"tracking_uri": self.shown_uri, "experiment_id": self.experiment_id, "run_id": self.run_id}

    def describe(self) -> dict:
        return {
            "kind": "mlflow",
            "uri": self.shown_uri,
            "experiment": self.experiment_name,
            "experimentId": self.experiment_id,
            "runId": self.run_id,
            "url": mlflow_run_url(self.tracking_uri, self.experiment_id, self.run_id),
        }

    def report(self, progress: Progress) -> None:
        from mlflow.entities import Metric

        self.last_event = progress.event
        values = metrics_of(progress)
        if not values:
            return
        now = int(datetime.now(timezone.utc).timestamp() * 1000)
        metrics = [Metric(name, value, now, progress.step) for name, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        # The client prints the run's URL to stdout, which carries the JSON log lines: send it to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            self.client.set_terminated(self.run_id, status=_terminal_event(self.last_event))


def _params(mapping: dict, prefix: str = "") -> list:
    """The config as MLflow params: nested keys dotted, lists and values as text (bounded)."""
    from mlflow.entities import Param

    params = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            params.extend(_params(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)
            params.append(Param(name, text[:MAX_PARAM_LENGTH]))
    return params


class WandbTracker:
    """A Weights & Biases run (wandb.init with the config's project, entity, name and mode), its files
    under output_dir/wandb/ (`wandb_mode: offline`: the offline run directory holds the history, for
    `wandb sync` later). Credentials (WANDB_API_KEY) come from the environment, never from the config."""

    def __init__(self, cfg: TrainConfig, output_dir: Path, previous: dict | None):
        import wandb

        run_id = (previous or {}).get("run_id") or cfg.wandb_run_id
        self.run = wandb.init(
            project=cfg.wandb_project,
            entity=cfg.wandb_entity,
            name=cfg.wandb_name,
            mode=cfg.wandb_mode,
            id=run_id,
            resume="allow" if run_id else None,
            dir=str(output_dir),
            config=shareable_config(cfg),
            # stdout carries the JSON log lines: wandb must neither wrap it nor print banners into it.
            settings=wandb.Settings(console="off", silent=True),
        )
        self.mode = cfg.wandb_mode
        self.last_event: str | None = None

    def identity(self) -> dict:
        return {"run_id": self.run.id}

    def describe(self) -> dict:
        # An offline run has no page yet (run.url is None): its files are under output_dir/wandb/.
        url = self.run.url if self.mode not in ("offline", "disabled") else None
        return {
            "kind": "wandb",
            "project": self.run.project,
            "entity": self.run.entity or None,
            "experiment": self.run.name or None,
            "runId": self.run.id,
            "mode": self.mode,
            "url": without_credentials(url, keep_fragment=True) if url else None,
        }

    def report(self, progress: Progress) -> None:
        self.last_event = progress.event
        values = metrics_of(progress)
        if values:
            self.run.log(values, step=progress.step)

    def close(self) -> None:
        codes = {"FINISHED": 0, "KILLED": 143}
        self.run.finish(exit_code=codes.get(_terminal_event(self.last_event), 1))
