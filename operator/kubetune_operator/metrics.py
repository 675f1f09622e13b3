"""Prometheus metrics: jobs by phase, reconcile duration, reconcile errors."""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Hashable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

PHASES = ("Pending", "Fetching", "Running", "Succeeded", "Failed", "Suspended")

JOBS = Gauge("kubetune_finetunejobs", "FineTuneJobs seen by this operator, by phase", ["phase"])
RECONCILE_SECONDS = Histogram(
    "kubetune_reconcile_duration_seconds",
    "Time of one reconcile of one FineTuneJob (API calls included)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RECONCILE_ERRORS = Counter(
    "kubetune_reconcile_errors_total", "Reconciles that failed and were retried", ["error"]
)


class PhaseBook:
    """The last phase of every job, so the gauge is exact (a job leaving a phase decrements it)."""

    def __init__(self) -> None:
        self._phases: dict[Hashable, str] = {}
        self._lock = threading.Lock()
        for phase in PHASES:
            JOBS.labels(phase=phase).set(0)

    def set(self, key: Hashable, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = phase
            counts = Tally(self._phases.values())
        for name in set(PHASES) | set(counts):
            JOBS.labels(phase=name).set(counts.get(name, 0))


def observe_reconcile(seconds: float, error: BaseException | None) -> None:
    RECONCILE_SECONDS.observe(seconds)
    if error is not None:
        RECONCILE_ERRORS.labels(error=type(error).__name__).inc()


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """`/metrics` on `port` (0 turns it off)."""
    if port:
        start_http_server(port, addr=addr)
