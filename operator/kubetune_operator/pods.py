"""What the operator reads from its worker pods: who runs, who finished, who failed and why.

Pure functions of pod (and Event) objects as the API returns them; the lifecycle policies (policies/) decide from them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubetune_operator.builders import CONTAINER, POD_INDEX_LABEL
from kubetune_operator.fetchstep import FETCH_CONTAINER

MESSAGE_LIMIT = 1024

# A container waiting for one of these will not start without someone changing something.
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)

# --- time -----------------------------------------------------------------------------------------


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- pods -----------------------------------------------------------------------------------------


def pod_index(pod: Mapping[str, Any]) -> int | None:
    meta = pod.get("metadata", {})
    label = meta.get("labels", {}).get(POD_INDEX_LABEL)
    text = label if label is not None else meta.get("name", "").rsplit("-", 1)[-1]
    return int(text) if text.isdigit() else None


def _trainer(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return status
    return {}


def _fetch_step(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in pod.get("status", {}).get("initContainerStatuses") or []:
        if status.get("name") == FETCH_CONTAINER:
            return status
    return {}


def _terminations(
    pod: Mapping[str, Any], container: Mapping[str, Any] | None = None
) -> list[Mapping[str, Any]]:
    trainer = _trainer(pod) if container is None else container
    found = [trainer.get(key, {}).get("terminated") for key in ("state", "lastState")]
    return [t for t in found if t]


def fetching(pods: list[Mapping[str, Any]]) -> list[str]:
    """Names of the pods whose fetch step runs (downloading, or waiting for another pod's download)."""
    return [
        p.get("metadata", {}).get("name", "")
        for p in pods
        if "running" in (_fetch_step(p).get("state") or {})
    ]


def live_pods(pods: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Pods not on their way out: a pod being deleted is from a generation we already dealt with."""
    return [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]


def is_running(pod: Mapping[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") == "Running" and "running" in _trainer(pod).get("state", {})


def success_summary(pods: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Rank 0's trainer exited 0: its termination message (one JSON line) is the run's summary.

    A trainer restarted after finishing exits 0 again at once and silently; while that exit is in
    state.terminated, the finished run's exit (with the summary) is in lastState: prefer the one
    with a message.
    """
    for pod in pods:
        if pod_index(pod) != 0:
            continue
        exits = [t for t in _terminations(pod) if t.get("exitCode") == 0]
        if exits:
            spoken = [t for t in exits if (t.get("message") or "").strip()]
            return _parse_summary((spoken or exits)[0].get("message"))
    return None


def rank_zero_exit(pods: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """Rank 0's trainer's termination record (current state first, else the last one), or None.

    Under the StatefulSet's restartPolicy Always a finished trainer restarts at once (and exits 0 at
    once, finding KUBETUNE_COMPLETE), so its exit is often only in lastState.terminated.
    """
    for pod in pods:
        if pod_index(pod) == 0:
            found = _terminations(pod)
            return found[0] if found else None
    return None


def _parse_summary(message: str | None) -> dict[str, Any]:
    if not message:
        return {}
    try:
        parsed = json.loads(message.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"message": message[-MESSAGE_LIMIT:]}
    return parsed if isinstance(parsed, dict) else {"message": message[-MESSAGE_LIMIT:]}


# The runtime's exit codes (docs/internals.md, kubetune.train): 2 bad input (the config, a missing
# model directory: running again cannot help), 143 stopped by SIGTERM after its checkpoint (preempted:
# not the run's fault). Anything else is a training failure.
EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 143
BAD_INPUT, PREEMPTED, FAILED = "bad_input", "preempted", "failed"


@dataclass(frozen=True)
class WorkerFailure:
    """The failure the job acts on: `kind` is bad_input (fail at once), preempted (restart without
    counting against backoffLimit) or failed (restart, counted); `fetch`: the pod's fetch step failed
    (a source could not be downloaded), not its trainer."""

    kind: str
    message: str
    fetch: bool = False


def worker_exit(terminated: Mapping[str, Any]) -> tuple[int | None, str, dict[str, Any]]:
    """(the worker's own exit code, its kind, its termination record) from a container termination.

    Under torchrun the container exits 1 whatever the worker returned; the worker's own code is in
    the one-line JSON termination message its first process writes (`exit_code`, `status`).
    """
    container_code = terminated.get("exitCode")
    record = _parse_summary(terminated.get("message"))
    own = record.get("exit_code")
    code = own if isinstance(own, int) and not isinstance(own, bool) else container_code
    status = record.get("status")
    if status == BAD_INPUT or code == EXIT_BAD_INPUT:
        return code, BAD_INPUT, record
    if status == PREEMPTED or code == EXIT_PREEMPTED:
        return code, PREEMPTED, record
    return code, FAILED, record


def failure(pods: list[Mapping[str, Any]]) -> WorkerFailure | None:
    """The failure to act on, or None: of every failed worker, bad input first, then a training
    failure, and preemption only when every failed worker was preempted."""
    found: dict[str, WorkerFailure] = {}
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("name", "")):
        name = pod.get("metadata", {}).get("name")
        exits = [(t, True) for t in _terminations(pod, _fetch_step(pod))] + [
            (t, False) for t in _terminations(pod)
        ]
        for terminated, in_fetch in exits:
            if terminated.get("exitCode") in (0, None):
                continue
            code, kind, record = worker_exit(terminated)
            reason = record.get("reason")
            detail = _tail(
                reason
                if isinstance(reason, str)
                else terminated.get("message") or terminated.get("reason") or ""
            )
            step = " fetch step" if in_fetch else ""
            text = f"worker {name}{step} exited with code {code}"
            if terminated.get("reason") == "OOMKilled":  # the kubelet's word: the log tail rarely says it
                text = f"worker {name}{step} was OOMKilled (over its memory limit; exit code {code})"
            found.setdefault(kind, WorkerFailure(kind, f"{text}: {detail}" if detail else text, in_fetch))
            break
        else:
            if pod.get("status", {}).get("phase") == "Failed":
                reason = pod.get("status", {}).get("reason") or "Failed"
                detail = pod.get("status", {}).get("message") or ""
                found.setdefault(
                    FAILED, WorkerFailure(FAILED, f"worker {name} failed ({reason}) {detail}".strip())
                )
    for kind in (BAD_INPUT, FAILED, PREEMPTED):
        if kind in found:
            return found[kind]
    return None


def _tail(text: str, lines: int = 3, limit: int = 500) -> str:
    """The end of a termination message: with FallbackToLogsOnError it is the log's tail, and the last
    lines (a traceback's exception) say the most."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    joined = " | ".join(kept)
    return joined if len(joined) <= limit else "..." + joined[-limit:]


def create_failure(events: Sequence[Mapping[str, Any]], since: datetime | None) -> str | None:
    """The message of the newest Event about the StatefulSet when it is FailedCreate (a later
    SuccessfulCreate means the cause went away); events from before `since` are an earlier job's."""

    def when(event: Mapping[str, Any]) -> str:
        series = (event.get("series") or {}).get("lastObservedTime")
        return series or event.get("lastTimestamp") or event.get("eventTime") or ""

    recent = [e for e in events if since is None or (parse_time(when(e)[:19] + "Z") or since) >= since]
    recent = [e for e in recent if when(e)]
    if not recent:
        return None
    newest = max(recent, key=when)
    return _tail(newest.get("message") or "", lines=5) if newest.get("reason") == "FailedCreate" else None


def stuck(pods: list[Mapping[str, Any]]) -> str | None:
    """Why pods are not running yet, when it needs someone's attention (bad image, missing secret, no node)."""
    for pod in pods:
        name = pod.get("metadata", {}).get("name")
        waiting = _trainer(pod).get("state", {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            return f"worker {name}: {waiting['reason']}: {waiting.get('message', '')}".strip()
        for condition in pod.get("status", {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
                return f"worker {name} cannot be scheduled: {condition.get('message', '')}".strip()
    return None
