"""Pure lifecycle logic: what the job's status should say, and what to do, given what is observed.

`decide(Observed) -> Plan` is the whole state machine; the reconciler only gathers the observation
and carries out the plan. Deciding from observations (pods, progress, the previous status) rather
than from remembered events is what makes a restarted operator pick up exactly where the last one
stopped.

Phases: Pending -> (Fetching ->) Running -> Succeeded | Failed, and Suspended while spec.suspend is
true. Fetching: the workers' fetch step (fetchstep.py) downloads the remote sources; status.fetch
has its bytes (the Fetched column); a fetch that fails for good (not found, no access, no such
revision) fails the job at once with reason FetchFailed, naming the source and why.
Succeeded and Failed are final.

Success takes two steps when rank 0 reports `status.progress.completed` first: the job stays Running
with reason Completing until rank 0's trainer has exited (its termination message becomes
outputs.summary) or COMPLETION_GRACE_SECONDS have passed, and only then scales to zero. Scaling at
the report would SIGTERM torchrun while rank 0 is still writing its summary and exiting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubetune.config import ConfigProblem
from kubetune.config.redaction import without_credentials

from kubetune_operator import progress as progress_report
from kubetune_operator.pods import (
    MESSAGE_LIMIT,
    WorkerFailure,
    failure,
    fetching,
    is_running,
    live_pods,
    parse_time,
    rank_zero_exit,
    rfc3339,
    stuck,
    success_summary,
)
from kubetune_operator.spec import FineTuneJobSpec, report, shares_one_node_claim

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
CONFIG_RETRY_SECONDS = 10.0
# While workers are missing, look again this often: a pod the StatefulSet controller cannot create
# (Pod Security admission, a quota, a forbidden volume) leaves only an Event, which nothing watches.
MISSING_PODS_RECHECK_SECONDS = 10.0
# How long a job whose rank 0 reported completion waits for rank 0's trainer to exit before scaling
# to zero anyway (rank 0 still has to flush its last report, write the summary and leave torchrun).
COMPLETION_GRACE_SECONDS = 60.0
COMPLETING = "Completing"


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
class Plan:
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


# --- status ---------------------------------------------------------------------------------------


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


class _Status:
    """The operator-owned status being rewritten, with the old one at hand for transitions."""

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

    def cond(self, kind: str, true: bool, reason: str, message: str = "") -> None:
        _set_condition(
            self.conditions, kind, true, reason, message[:MESSAGE_LIMIT], self.obs.now, self.generation
        )

    def phase(self, phase: str, reason: str, message: str) -> None:
        self.new.update(phase=phase, reason=reason, message=message[:MESSAGE_LIMIT])

    @property
    def old_phase(self) -> str | None:
        return self.old.get("phase")


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def decide(obs: Observed) -> Plan:
    """The new status and the actions that get the cluster there; every phase change gets an Event."""
    plan = _decide(obs)
    old_phase = (obs.job.get("status") or {}).get("phase")
    new_phase = plan.status.get("phase")
    if new_phase != old_phase and not plan.events:
        plan.events.append(Event("Normal", new_phase or "Unknown", plan.status.get("message", "")))
    return plan


def _decide(obs: Observed) -> Plan:
    st = _Status(obs)
    plan = Plan(status=st.new)
    spec = obs.spec
    created = condition(st.old, "Created").get("status") == "True"
    live = live_pods(obs.pods)

    if st.old_phase in FINAL:
        _finished(st, plan, spec, created, live)
        return plan
    # Only the contract's fields, re-checked: whatever else the pod wrote never reaches the status.
    progress = progress_report.sanitize(obs.progress if obs.progress is not None else st.old.get("progress"))
    if progress:
        st.new["progress"] = progress
    else:
        st.new.pop("progress", None)
    _tracking(st, plan, obs)
    fetch = progress_report.sanitize_fetch(obs.fetch if obs.fetch is not None else st.old.get("fetch"))
    if fetch:
        st.new["fetch"] = fetch
    else:
        st.new.pop("fetch", None)

    if obs.problems or spec is None:
        _fail(st, plan, obs.problem_reason, report(obs.problems), created and bool(live))
        return plan

    if spec.suspend:
        if not created:
            st.cond("Created", True, "ChildrenCreated", "children created with no workers (suspended)")
        _suspend(st, plan, spec, live)
        return plan

    if obs.waiting is not None:
        reason, message = obs.waiting
        st.cond("Created", False, reason, message)
        st.phase(PENDING, reason, message)
        _workers(st, live, spec.workers)
        plan.wake_in(CONFIG_RETRY_SECONDS)
        return plan

    # Active from here on: children exist (or are about to) with every worker scheduled.
    plan.apply_children, plan.replicas = True, spec.workers
    if not created:
        st.cond(
            "Created",
            True,
            "ChildrenCreated",
            f"ConfigMap, Service and StatefulSet of {spec.workers} worker(s)",
        )
        plan.events.append(Event("Normal", "Created", f"created the children for {spec.workers} worker(s)"))
        if shares_one_node_claim(spec):
            message = (
                f"{spec.workers} workers share one ReadWriteOnce claim: they can all mount it only on one "
                "node; for workers on several nodes use accessModes [ReadWriteMany]"
            )
            plan.events.append(Event("Warning", "SharedReadWriteOnce", message))
    if st.old_phase == SUSPENDED:
        plan.events.append(Event("Normal", "Resumed", "resumed; training continues from the last checkpoint"))
    st.cond("Suspended", False, "Active")
    if not st.new.get("startTime"):
        st.new["startTime"] = rfc3339(obs.now)
    st.new.pop("completionTime", None)

    summary = success_summary(live)
    if summary is not None:
        _succeed(st, plan, obs, summary, progress)
        return plan
    if progress.get("completed"):
        _completing(st, plan, obs, spec, live, progress)
        return plan

    deadline = spec.runPolicy.activeDeadlineSeconds
    if deadline is not None:
        started = parse_time(st.new["startTime"]) or obs.now
        left = (started + timedelta(seconds=deadline) - obs.now).total_seconds()
        if left <= 0:
            _fail(
                st,
                plan,
                "DeadlineExceeded",
                f"the job ran longer than activeDeadlineSeconds ({deadline}s)",
                True,
            )
            return plan
        plan.wake_in(left)

    failed = failure(live)
    if failed is not None and failed.kind == "bad_input" and failed.fetch:
        # Not found, no access, no such revision: a source that cannot be fetched now will not be later.
        _fail(st, plan, "FetchFailed", f"{failed.message} (not retried)", True)
        return plan
    if failed is not None and failed.kind == "bad_input":
        # Bad input (exit 2: the config, a missing model directory) fails the same way every time.
        _fail(st, plan, "InvalidInput", f"{failed.message} (bad input: not retried)", True)
        return plan
    if failed is not None:
        _restart(st, plan, spec, live, failed)
        return plan

    running = [p for p in live if is_running(p)]
    _workers(st, running, spec.workers)
    if len(running) >= spec.workers:
        message = f"all {spec.workers} worker(s) running"
        st.cond("Running", True, "WorkersRunning", message)
        st.phase(RUNNING, "WorkersRunning", message)
        if st.old_phase != RUNNING:
            plan.events.append(Event("Normal", "Running", message))
    else:
        blocked = stuck(live)
        reason = "WorkersBlocked" if blocked else "WorkersStarting"
        if obs.create_failure is not None and len(live) < spec.workers:
            blocked, reason = f"cannot create worker pods: {obs.create_failure}", "FailedCreate"
        fetchers = fetching(live)
        if fetchers and not blocked:
            message = (
                progress_report.fetch_summary(fetch) if fetch else f"fetch step running in {fetchers[0]}"
            )
            st.cond("Running", False, "FetchingSources", message)
            st.phase(FETCHING, "FetchingSources", message[:MESSAGE_LIMIT])
            _workers(st, running, spec.workers)
            return plan
        message = blocked or f"{len(running)} of {spec.workers} worker(s) running"
        if len(live) < spec.workers:
            plan.wake_in(MISSING_PODS_RECHECK_SECONDS)
        st.cond("Running", False, reason, message)
        st.phase(PENDING, reason, message[:MESSAGE_LIMIT])
        if blocked and st.old.get("message") != message[:MESSAGE_LIMIT]:
            plan.events.append(Event("Warning", reason, message))
    return plan


def _tracking(st: _Status, plan: Plan, obs: Observed) -> None:
    """status.tracking: the tracker runs rank 0 named, cleaned again; an event when they first appear
    or change (a resumed run names the same runs: no new event)."""
    tracking = progress_report.sanitize_tracking(
        obs.tracking if obs.tracking is not None else st.old.get("tracking")
    )
    if not tracking:
        st.new.pop("tracking", None)
        return
    st.new["tracking"] = tracking
    if tracking != st.old.get("tracking"):
        message = progress_report.tracking_summary(tracking)[:MESSAGE_LIMIT]
        plan.events.append(Event("Normal", "TrackerRuns", message))


def _restart(st: _Status, plan: Plan, spec: FineTuneJobSpec, live: list, failed: WorkerFailure) -> None:
    """Restart the whole group from the last checkpoint; a preemption (exit 143 after the checkpoint)
    does not count against backoffLimit, like Kubeflow's exit-code restart policy."""
    restarts = int(st.new.get("restarts") or 0)
    limit = spec.runPolicy.backoffLimit
    if failed.kind == "preempted":
        st.new["preemptions"] = int(st.new.get("preemptions") or 0) + 1
        reason = "Preempted"
        message = f"{failed.message}; preempted after its checkpoint: restarting all workers (not counted)"
    elif restarts >= limit:
        message = f"{failed.message} (backoffLimit {limit} reached after {restarts} restart(s))"
        _fail(st, plan, "BackoffLimitExceeded", message, True)
        return
    else:
        st.new["restarts"] = restarts + 1
        reason = "Restarting"
        message = f"{failed.message}; restarting all workers from the last checkpoint (restart {restarts + 1} of {limit})"
    plan.delete_pods = [p["metadata"]["name"] for p in live]
    plan.events.append(Event("Warning", reason, message))
    st.cond("Running", False, reason, message)
    st.phase(PENDING, reason, message)
    _workers(st, [], spec.workers)


def _workers(st: _Status, running: list, desired: int) -> None:
    st.new["readyWorkers"] = len(running)
    st.new["workers"] = f"{len(running)}/{desired}"


def _suspend(st: _Status, plan: Plan, spec: FineTuneJobSpec, live: list) -> None:
    plan.apply_children, plan.replicas = True, 0
    st.cond("Suspended", True, "Suspended", "spec.suspend is true; workers scaled to zero")
    st.cond("Running", False, "Suspended", "suspended")
    st.phase(SUSPENDED, "Suspended", "spec.suspend is true; workers scaled to zero")
    # Like a Kubernetes Job: the deadline clock restarts when the job resumes.
    st.new.pop("startTime", None)
    _workers(st, [p for p in live if is_running(p)], 0)
    if st.old_phase != SUSPENDED:
        plan.events.append(Event("Normal", "Suspended", "suspended; workers scaled to zero"))


def _completing(
    st: _Status, plan: Plan, obs: Observed, spec: FineTuneJobSpec, live: list, progress: Mapping[str, Any]
) -> None:
    """Rank 0 reported completion: wait (bounded) for its trainer to exit before scaling to zero.

    A non-zero exit of rank 0 after the report, or the grace period running out, still succeeds
    (the outputs were complete when rank 0 reported), without a summary and saying why. Other
    workers' exits and the deadline no longer matter: the training is done.
    """
    previous = condition(st.old, "Succeeded")
    since = parse_time(previous.get("lastTransitionTime")) if previous.get("reason") == COMPLETING else None
    since = since or obs.now
    waited = (obs.now - since).total_seconds()
    exited = rank_zero_exit(live)
    if exited is not None:  # exit 0 is success_summary's case; this one exited otherwise
        code = exited.get("exitCode")
        note = f"rank 0 exited with code {code} after reporting completion; no summary recorded"
        _succeed(st, plan, obs, {}, progress, note=note)
        return
    if waited >= COMPLETION_GRACE_SECONDS:
        note = (
            f"rank 0 had not exited {int(waited)}s after reporting completion; "
            "scaled to zero without its summary"
        )
        _succeed(st, plan, obs, {}, progress, note=note)
        return
    message = (
        f"training finished at step {progress.get('step', '?')}; waiting for rank 0 to exit "
        f"(at most {int(COMPLETION_GRACE_SECONDS)}s) before scaling to zero"
    )
    plan.apply_children, plan.replicas = True, spec.workers
    st.cond("Succeeded", False, COMPLETING, message)
    if previous.get("reason") != COMPLETING:  # the grace period is timed from this transition
        next(c for c in st.conditions if c["type"] == "Succeeded")["lastTransitionTime"] = rfc3339(obs.now)
    st.cond("Running", True, COMPLETING, message)
    st.phase(RUNNING, COMPLETING, message)
    _workers(st, [p for p in live if is_running(p)], spec.workers)
    if st.old.get("reason") != COMPLETING:
        plan.events.append(Event("Normal", COMPLETING, message))
    plan.wake_in(COMPLETION_GRACE_SECONDS - waited)


def _succeed(
    st: _Status, plan: Plan, obs: Observed, summary: dict, progress: Mapping[str, Any], note: str = ""
) -> None:
    outputs = dict(obs.outputs or {})  # the operator's own record of where the run writes
    if summary:
        outputs["summary"] = summary
    uploaded = uploaded_to(summary)
    if uploaded:
        outputs["uri"] = uploaded
    st.new["outputs"] = outputs
    st.new["progress"] = progress_report.final(progress, summary)
    st.new["completionTime"] = rfc3339(obs.now)
    message = f"training finished; outputs in {outputs.get('outputDir', 'the outputs volume')}"
    if uploaded:
        message = f"{message}, uploaded to {uploaded}"
    if note:
        message = f"{message} ({note})"
    st.cond("Running", False, "Completed", message)
    st.cond("Succeeded", True, "Completed", message)
    st.phase(SUCCEEDED, "Completed", message)
    _workers(st, [], 0)
    plan.apply_children, plan.replicas = False, 0
    plan.scale_to_zero = True
    plan.events.append(Event("Normal", "Succeeded", message))
    _schedule_ttl(st, plan, obs)


def _fail(st: _Status, plan: Plan, reason: str, message: str, scale_to_zero: bool) -> None:
    st.new["completionTime"] = rfc3339(st.obs.now)
    st.cond("Running", False, reason, message)
    st.cond("Failed", True, reason, message)
    st.phase(FAILED, reason, message)
    _workers(st, [], 0)
    plan.apply_children = False
    plan.scale_to_zero = scale_to_zero
    plan.events.append(Event("Warning", reason, message))
    _schedule_ttl(st, plan, st.obs)


def _finished(st: _Status, plan: Plan, spec: FineTuneJobSpec | None, created: bool, live: list) -> None:
    """A final job keeps its status; it only keeps its workers at zero and waits for its TTL."""
    st.new["observedGeneration"] = st.old.get("observedGeneration", st.generation)
    plan.scale_to_zero = created and bool(live)
    _schedule_ttl(st, plan, st.obs)


def _schedule_ttl(st: _Status, plan: Plan, obs: Observed) -> None:
    ttl = obs.spec.runPolicy.ttlSecondsAfterFinished if obs.spec is not None else None
    finished = parse_time(st.new.get("completionTime"))
    if ttl is None or finished is None:
        return
    left = (finished + timedelta(seconds=ttl) - obs.now).total_seconds()
    if left <= 0:
        plan.delete_job = True
    else:
        plan.wake_in(left)


def owned_status(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The operator-owned part of a status, to compare with a plan's (and skip writes that change nothing)."""
    status = status or {}
    return {k: status[k] for k in OWNED_KEYS if k in status}


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch turning the old owned status into the new one (None when nothing changes)."""
    before = owned_status(old)
    if before == new:
        return None
    patch: dict[str, Any] = {k: v for k, v in new.items() if before.get(k) != v}
    for key in before:
        if key not in new:
            patch[key] = None  # merge patch: null removes the key
    return patch


def uploaded_to(summary: Mapping[str, Any] | None) -> str | None:
    """The object-store prefix rank 0 uploaded the result to (output_uri), cleaned: the pod wrote it."""
    record = (summary or {}).get("output_uri")
    uri = record.get("uri") if isinstance(record, Mapping) else None
    if not isinstance(uri, str):
        return None
    return without_credentials(uri)[:2048] or None
