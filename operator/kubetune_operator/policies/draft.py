"""What the lifecycle policies share: the observation, the decision they assemble, the status draft.

`Observed` is what the reconciler gathered; `Decision` is what it carries out (the new status and
the actions); `Draft` is the status being rewritten from the old one, with the old one at hand for
transitions, that the policies fill in turn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetune.config import ConfigProblem

from kubetune_operator.pods import MESSAGE_LIMIT, live_pods, rfc3339
from kubetune_operator.spec import FineTuneJobSpec

PENDING, RUNNING, SUCCEEDED, FAILED, SUSPENDED = "Pending", "Running", "Succeeded", "Failed", "Suspended"
# Between Pending and Running: the workers' fetch step downloads the remote sources (fetchstep.py).
FETCHING = "Fetching"
FINAL = frozenset({SUCCEEDED, FAILED})
CONDITION_TYPES = ("Created", "Running", "Succeeded", "Failed", "Suspended")
# Status keys the operator owns: all of them. status.progress too, copied field by field from the
# ConfigMap rank 0 writes (progress.py): a pod never writes the job itself. status.tracking likewise.
OWNED_KEYS = (
    "progress",
    "fetch",
    "tracking",
    "phase",
    "reason",
    "message",
    "conditions",
    "observedGeneration",
    "startTime",
    "completionTime",
    "restarts",
    "preemptions",
    "workers",
    "readyWorkers",
    "outputs",
)


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    job: Mapping[str, Any]
    spec: FineTuneJobSpec | None
    pods: list[Mapping[str, Any]]
    now: datetime
    problems: list[ConfigProblem] = field(default_factory=list)
    problem_reason: str = "InvalidConfig"
    waiting: tuple[str, str] | None = None  # (reason, message): children cannot be built yet
    outputs: Mapping[str, Any] | None = None  # where the run writes (outputDir, volume)
    create_failure: str | None = None  # the StatefulSet's newest event, when it is a FailedCreate
    progress: Mapping[str, Any] | None = None  # rank 0's latest report, sanitized (None: no report)
    tracking: Sequence[Mapping[str, Any]] | None = None  # rank 0's tracker runs, sanitized (None: none named)
    fetch: Mapping[str, Any] | None = None  # the fetch step's progress, sanitized (None: no report)


@dataclass
class Decision:
    """The lifecycle's answer to one observation: the new status and what the reconciler does."""

    status: dict[str, Any]
    apply_children: bool = False
    replicas: int = 0
    scale_to_zero: bool = False
    delete_pods: list[str] = field(default_factory=list)
    delete_job: bool = False
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None

    def wake_in(self, seconds: float) -> None:
        seconds = max(seconds, 0.5)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for item in status.get("conditions") or []:
        if item.get("type") == kind:
            return item
    return {}


def _set_condition(
    conditions: list[dict[str, Any]],
    kind: str,
    true: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
) -> None:
    value = "True" if true else "False"
    for item in conditions:
        if item["type"] == kind:
            if item["status"] != value:
                item["lastTransitionTime"] = rfc3339(now)
            item.update(status=value, reason=reason, message=message, observedGeneration=generation)
            return
    conditions.append(
        {
            "type": kind,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": rfc3339(now),
            "observedGeneration": generation,
        }
    )


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


class Draft:
    """The operator-owned status being rewritten from the old one, and the decision being assembled."""

    def __init__(self, obs: Observed):
        self.obs = obs
        self.old: Mapping[str, Any] = obs.job.get("status") or {}
        self.generation = int(obs.job.get("metadata", {}).get("generation") or 0)
        self.new: dict[str, Any] = {k: _copy(self.old[k]) for k in OWNED_KEYS if k in self.old}
        conditions = self.new.get("conditions") or []
        self.conditions: list[dict[str, Any]] = [
            dict(c) for c in conditions if c.get("type") in CONDITION_TYPES
        ]
        self.new["conditions"] = self.conditions
        self.new["observedGeneration"] = self.generation
        self.new.setdefault("restarts", 0)
        self.decision = Decision(status=self.new)
        self.created = condition(self.old, "Created").get("status") == "True"
        self.live = live_pods(obs.pods)

    @property
    def spec(self) -> FineTuneJobSpec:
        """The valid spec: policies after the invalid-config one may rely on it."""
        if self.obs.spec is None:
            raise RuntimeError("a lifecycle policy that needs a valid spec ran before invalid.fail_invalid")
        return self.obs.spec

    @property
    def progress(self) -> Mapping[str, Any]:
        """Rank 0's report as reports.carry_reports put it into the new status ({} when none)."""
        return self.new.get("progress") or {}

    def cond(self, kind: str, true: bool, reason: str, message: str = "") -> None:
        _set_condition(
            self.conditions, kind, true, reason, message[:MESSAGE_LIMIT], self.obs.now, self.generation
        )

    def phase(self, phase: str, reason: str, message: str) -> None:
        self.new.update(phase=phase, reason=reason, message=message[:MESSAGE_LIMIT])

    def workers(self, running: list, desired: int) -> None:
        self.new["readyWorkers"] = len(running)
        self.new["workers"] = f"{len(running)}/{desired}"

    @property
    def old_phase(self) -> str | None:
        return self.old.get("phase")
