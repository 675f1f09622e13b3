"""Progress reporting from rank 0: log lines for people, `status.progress` for the operator.

    reporters = build_reporters(output_dir)     # from the environment (docs/internals.md)
    reporters.report(progress)                  # every logging step; external ones are rate-bounded
    reporters.close()                           # flushes the final report

Reporters:
  * stdout: a live display on a terminal, otherwise one JSON line (or with --log-format plain, one
    readable line) per logging step: kubetune.console;
  * KUBETUNE_PROGRESS_FILE: the status.progress JSON, atomically rewritten;
  * Kubernetes: a JSON merge patch of the job's progress ConfigMap (`KUBETUNE_PROGRESS_CONFIGMAP`, key
    `progress.json`), over plain HTTPS with the pod's service-account token (no kubernetes client),
    from a background thread. The pod may write only that ConfigMap, never the FineTuneJob: the
    operator copies the fields of the contract into status.progress and owns the rest of the status.
    The same ConfigMap's key `tracking.json` names the experiment tracker runs (kubetune.train.tracking
    .describe), sent once at start (`Reporters.announce_tracking`); the operator copies it, checked,
    into status.tracking.
A reporter that fails logs a warning; it never stops training.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from kubetune.console import progress_reporter, resolve_log_format

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_INTERVAL = 5.0
# The key of the progress ConfigMap the operator reads (kubetune_operator.progress.PROGRESS_KEY).
PROGRESS_KEY = "progress.json"
# The key naming the tracker runs (kubetune_operator.progress.TRACKING_KEY): a list of objects.
TRACKING_KEY = "tracking.json"
# The fetch step's progress (kubetune_operator.progress.FETCH_KEY): kubetune.sources.fetch.FetchProgress.
FETCH_KEY = "fetch.json"


@dataclass
class Progress:
    step: int
    total_steps: int
    epoch: float
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    trained_tokens: int = 0
    input_tokens: int = 0  # non-pad tokens seen (log lines and benchmarks; not in the status contract)
    eta_seconds: float | None = None
    last_checkpoint: str | None = None
    resumed_from_step: int | None = None
    completed: bool = False
    output_dir: str | None = None
    event: str = "train"  # train | eval | checkpoint | done | preempted (log lines only)
    eval_loss: float | None = None
    eval_perplexity: float | None = None
    rewards: dict[str, float] | None = None  # preference runs: this line's trl metrics (rewards/margins, ...)
    # preference runs: the latest train line's trl metrics, which status.progress carries on every report
    # (an eval or checkpoint report replaces the whole report, so it must repeat them)
    train_rewards: dict[str, float] | None = None

    def status(self) -> dict:
        """The `status.progress` object (camelCase, exactly the fields of the contract)."""
        return {
            "step": self.step,
            "totalSteps": self.total_steps,
            "epoch": round(self.epoch, 4),
            "loss": _round(self.loss),
            "learningRate": self.learning_rate,
            "tokensPerSecond": _round(self.tokens_per_second, 1),
            "trainedTokens": self.trained_tokens,
            "etaSeconds": None if self.eta_seconds is None else int(self.eta_seconds),
            "lastCheckpoint": self.last_checkpoint,
            "resumedFromStep": self.resumed_from_step,
            "completed": self.completed,
            "percent": self.percent(),
            "outputDir": self.output_dir,
            "updatedAt": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **status_rewards(self.train_rewards),
        }

    def percent(self) -> str | None:
        """step/totalSteps as "25%" (the FineTuneJob's Progress column reads it; None without a total)."""
        if self.total_steps <= 0:
            return None
        return f"{max(0, min(100, 100 * self.step // self.total_steps))}%"

    def log_line(self) -> dict:
        """The JSON log line (snake_case); None values are left out."""
        line = {
            "event": self.event,
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": round(self.epoch, 4),
            "loss": _round(self.loss),
            "lr": self.learning_rate,
            "grad_norm": _round(self.grad_norm),
            "trained_tokens": self.trained_tokens,
            "tokens_per_s": _round(self.tokens_per_second, 1),
            "eta_s": None if self.eta_seconds is None else int(self.eta_seconds),
            "eval_loss": _round(self.eval_loss),
            "eval_perplexity": _round(self.eval_perplexity),
            "checkpoint": self.last_checkpoint if self.event == "checkpoint" else None,
        }
        line |= {name: _round(value) for name, value in (self.rewards or {}).items()}
        return {key: value for key, value in line.items() if value is not None}


# trl's metric names -> status.progress.rewards keys (kubetune_operator.progress.REWARD_KEYS)
STATUS_REWARDS = {
    "rewards/chosen": "chosen",
    "rewards/rejected": "rejected",
    "rewards/margins": "margins",
    "rewards/accuracies": "accuracies",
    "logps/chosen": "logpsChosen",
    "logps/rejected": "logpsRejected",
}


def status_rewards(metrics: dict[str, float] | None) -> dict:
    """`{"rewards": {...}}` for status.progress from trl's metric names; {} for an SFT run."""
    given = metrics or {}
    rewards = {key: _round(given[name]) for name, key in STATUS_REWARDS.items() if name in given}
    return {"rewards": rewards} if rewards else {}


def _round(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(float(value), digits)


class FileReporter:
    """Rewrites a JSON file with the latest status.progress (temp file, then rename)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def report(self, progress: Progress) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps(progress.status()))
        os.replace(temp, self.path)

    def close(self) -> None:
        pass


class KubernetesReporter:
    """PATCHes the job's progress ConfigMap from a background thread (the loop never waits on it)."""

    def __init__(
        self,
        *,
        api_url: str,
        namespace: str,
        configmap: str,
        token_path: Path,
        ca_path: Path | None,
        timeout: float = 5.0,
    ):
        self.url = f"{api_url.rstrip('/')}/api/v1/namespaces/{namespace}/configmaps/{configmap}"
        self.token_path = token_path
        self.context = ssl.create_default_context(cafile=str(ca_path)) if ca_path else None
        self.timeout = timeout
        self._pending: dict[str, str] = {}  # ConfigMap data keys to send, newest value of each
        self._lock = threading.Condition()
        self._closed = False
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name="kubetune-progress", daemon=True)
        self._thread.start()

    @classmethod
    def from_environment(cls) -> KubernetesReporter | None:
        name = os.environ.get("KUBETUNE_PROGRESS_CONFIGMAP")
        namespace = os.environ.get("KUBETUNE_JOB_NAMESPACE")
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
        )
        token = SERVICE_ACCOUNT / "token"
        if not (name and namespace and host and token.is_file()):
            return None
        host = f"[{host}]" if ":" in host else host  # IPv6 service address
        ca = SERVICE_ACCOUNT / "ca.crt"
        return cls(
            api_url=f"https://{host}:{port}",
            namespace=namespace,
            configmap=name,
            token_path=token,
            ca_path=ca if ca.is_file() else None,
        )

    def report(self, progress: Progress) -> None:
        self._queue(PROGRESS_KEY, progress.status())  # only the newest matters

    def announce_tracking(self, entries: list[dict]) -> None:
        self._queue(TRACKING_KEY, entries)

    def announce_fetch(self, status: dict) -> None:
        self._queue(FETCH_KEY, status)

    def _queue(self, key: str, value) -> None:
        with self._lock:
            self._pending[key] = json.dumps(value)
            self._lock.notify()

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                data, self._pending = self._pending, {}
                if not data:  # closed with nothing left to send
                    return
            self._send(data)

    def _send(self, data: dict[str, str]) -> None:
        request = urllib.request.Request(
            self.url,
            data=json.dumps({"data": data}).encode(),
            method="PATCH",
            headers={
                # Re-read each time: projected service-account tokens are rotated by the kubelet.
                "Authorization": f"Bearer {self.token_path.read_text().strip()}",
                "Content-Type": "application/merge-patch+json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                response.read()
            self._failures = 0
        except (OSError, urllib.error.URLError, ssl.SSLError) as err:
            self._failures += 1
            # One warning per streak of failures, then every 20th, so a dead API server cannot flood the log.
            if self._failures == 1 or self._failures % 20 == 0:
                log.warning(
                    "could not report progress to %s (%d failures in a row): %s",
                    self.url,
                    self._failures,
                    err,
                )


class Throttled:
    """At most one report per `interval` seconds; a forced report (final, checkpoint) always goes out."""

    def __init__(self, reporter, interval: float, clock=time.monotonic):
        self.reporter = reporter
        self.interval = interval
        self.clock = clock
        self._last: float | None = None

    def announce_tracking(self, entries: list[dict]) -> None:
        if hasattr(self.reporter, "announce_tracking"):
            self.reporter.announce_tracking(entries)  # once per run: never rate-bounded

    def report(self, progress: Progress, *, force: bool = False) -> None:
        now = self.clock()
        if not force and self._last is not None and now - self._last < self.interval:
            return
        self._last = now
        self.reporter.report(progress)

    def close(self) -> None:
        self.reporter.close()


class Reporters:
    """Every reporter of this run; a failing one is logged and skipped, never raised."""

    def __init__(self, reporters: list):
        self.reporters = reporters

    def report(self, progress: Progress, *, force: bool = False) -> None:
        for reporter in self.reporters:
            try:
                if isinstance(reporter, Throttled):
                    reporter.report(progress, force=force or progress.completed)
                else:
                    reporter.report(progress)
            except Exception as err:  # noqa: BLE001 - reporting must never kill training
                log.warning("progress reporter %s failed: %s", type(reporter).__name__, err)

    def announce_tracking(self, entries: list[dict]) -> None:
        """Name the tracker runs (kubetune.train.tracking.describe) to the reporters that carry them."""
        if not entries:
            return
        log.info("experiment tracking: %s", json.dumps(entries))
        for reporter in self.reporters:
            if not hasattr(reporter, "announce_tracking"):
                continue
            try:
                reporter.announce_tracking(entries)
            except Exception as err:  # noqa: BLE001 - reporting must never kill training
                log.warning("progress reporter %s failed: %s", type(reporter).__name__, err)

    def close(self) -> None:
        for reporter in self.reporters:
            try:
                reporter.close()
            except Exception as err:  # noqa: BLE001
                log.warning("progress reporter %s failed to close: %s", type(reporter).__name__, err)


def build_reporters(enabled: bool = True) -> Reporters:
    """The reporters the environment asks for (none on ranks other than 0: pass enabled=False)."""
    if not enabled:
        return Reporters([])
    interval = float(os.environ.get("KUBETUNE_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    reporters: list = [progress_reporter(resolve_log_format(None))]
    if path := os.environ.get("KUBETUNE_PROGRESS_FILE"):
        reporters.append(Throttled(FileReporter(path), interval))
    if kubernetes := KubernetesReporter.from_environment():
        reporters.append(Throttled(kubernetes, interval))
    return Reporters(reporters)
