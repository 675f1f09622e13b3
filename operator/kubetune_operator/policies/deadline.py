"""runPolicy.activeDeadlineSeconds: a job running longer (from startTime, which a resume resets)
fails with DeadlineExceeded; until then the reconciler is woken when the deadline falls."""

from __future__ import annotations

from datetime import timedelta

from kubetune_operator.pods import parse_time
from kubetune_operator.policies.draft import Draft
from kubetune_operator.policies.outcomes import fail


def enforce_deadline(d: Draft) -> bool:
    deadline = d.spec.runPolicy.activeDeadlineSeconds
    if deadline is None:
        return False
    started = parse_time(d.new.get("startTime")) or d.obs.now
    left = (started + timedelta(seconds=deadline) - d.obs.now).total_seconds()
    if left > 0:
        d.decision.wake_in(left)
        return False
    fail(d, "DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds ({deadline}s)", True)
    return True
