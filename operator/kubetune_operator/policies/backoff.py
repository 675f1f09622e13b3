"""A failed worker. Bad input (exit 2: the config, a missing model directory) and a source that cannot
be fetched (not found, no access, no such revision) fail the job at once: they fail the same way
every time. Any other failure restarts the whole group from the last checkpoint until
runPolicy.backoffLimit restarts are spent; a preemption (exit 143 after the checkpoint) does not
count against it, like Kubeflow's exit-code restart policy."""

from __future__ import annotations

from kubetune_operator.pods import failure
from kubetune_operator.policies.draft import PENDING, Draft, Event
from kubetune_operator.policies.outcomes import fail


def handle_failure(d: Draft) -> bool:
    failed = failure(d.live)
    if failed is None:
        return False
    if failed.kind == "bad_input" and failed.fetch:
        fail(d, "FetchFailed", f"{failed.message} (not retried)", True)
        return True
    if failed.kind == "bad_input":
        fail(d, "InvalidInput", f"{failed.message} (bad input: not retried)", True)
        return True
    restarts = int(d.new.get("restarts") or 0)
    limit = d.spec.runPolicy.backoffLimit
    if failed.kind == "preempted":
        d.new["preemptions"] = int(d.new.get("preemptions") or 0) + 1
        reason = "Preempted"
        message = f"{failed.message}; preempted after its checkpoint: restarting all workers (not counted)"
    elif restarts >= limit:
        message = f"{failed.message} (backoffLimit {limit} reached after {restarts} restart(s))"
        fail(d, "BackoffLimitExceeded", message, True)
        return True
    else:
        d.new["restarts"] = restarts + 1
        reason = "Restarting"
        message = f"{failed.message}; restarting all workers from the last checkpoint (restart {restarts + 1} of {limit})"
    d.decision.delete_pods = [p["metadata"]["name"] for p in d.live]
    d.decision.events.append(Event("Warning", reason, message))
    d.cond("Running", False, reason, message)
    d.phase(PENDING, reason, message)
    d.workers([], d.spec.workers)
    return True
