"""Success. Rank 0's trainer exiting 0 with its summary (termination message) succeeds the job.

When rank 0 reports `status.progress.completed` first, success takes two steps: the job stays
Running with reason Completing until rank 0's trainer has exited (its termination message becomes
outputs.summary) or COMPLETION_GRACE_SECONDS have passed, and only then scales to zero. Scaling at
the report would SIGTERM torchrun while rank 0 is still writing its summary and exiting. A non-zero
exit of rank 0 after the report, or the grace period running out, still succeeds (the outputs were
complete when rank 0 reported), without a summary and saying why. Other workers' exits and the
deadline no longer matter then: the training is done (this policy runs before theirs).
"""

from __future__ import annotations

from kubetune_operator.pods import is_running, parse_time, rank_zero_exit, rfc3339, success_summary
from kubetune_operator.policies.draft import RUNNING, Draft, Event, condition
from kubetune_operator.policies.outcomes import succeed

# How long a job whose rank 0 reported completion waits for rank 0's trainer to exit before scaling
# to zero anyway (rank 0 still has to flush its last report, write the summary and leave torchrun).
COMPLETION_GRACE_SECONDS = 60.0
COMPLETING = "Completing"


def complete(d: Draft) -> bool:
    summary = success_summary(d.live)
    if summary is not None:
        succeed(d, summary)
        return True
    if not d.progress.get("completed"):
        return False
    _wait_for_rank_zero(d)
    return True


def _wait_for_rank_zero(d: Draft) -> None:
    now = d.obs.now
    previous = condition(d.old, "Succeeded")
    since = parse_time(previous.get("lastTransitionTime")) if previous.get("reason") == COMPLETING else None
    waited = (now - (since or now)).total_seconds()
    exited = rank_zero_exit(d.live)
    if exited is not None:  # exit 0 is success_summary's case; this one exited otherwise
        code = exited.get("exitCode")
        succeed(d, {}, note=f"rank 0 exited with code {code} after reporting completion; no summary recorded")
        return
    if waited >= COMPLETION_GRACE_SECONDS:
        note = (
            f"rank 0 had not exited {int(waited)}s after reporting completion; "
            "scaled to zero without its summary"
        )
        succeed(d, {}, note=note)
        return
    message = (
        f"training finished at step {d.progress.get('step', '?')}; waiting for rank 0 to exit "
        f"(at most {int(COMPLETION_GRACE_SECONDS)}s) before scaling to zero"
    )
    d.decision.apply_children, d.decision.replicas = True, d.spec.workers
    d.cond("Succeeded", False, COMPLETING, message)
    if previous.get("reason") != COMPLETING:  # the grace period is timed from this transition
        next(c for c in d.conditions if c["type"] == "Succeeded")["lastTransitionTime"] = rfc3339(now)
    d.cond("Running", True, COMPLETING, message)
    d.phase(RUNNING, COMPLETING, message)
    d.workers([p for p in d.live if is_running(p)], d.spec.workers)
    if d.old.get("reason") != COMPLETING:
        d.decision.events.append(Event("Normal", COMPLETING, message))
    d.decision.wake_in(COMPLETION_GRACE_SECONDS - waited)
