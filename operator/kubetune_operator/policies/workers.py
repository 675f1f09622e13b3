"""No failure, not finished: the phase says how far the workers are. Running once every worker
runs; Fetching while the fetch step downloads the sources (status.fetch has its bytes); otherwise
Pending, saying why when pods are blocked (an image pull, a pod the StatefulSet controller cannot
create) with one Warning per new reason."""

from __future__ import annotations

from kubetune_operator import progress as progress_report
from kubetune_operator.pods import MESSAGE_LIMIT, fetching, is_running, stuck
from kubetune_operator.policies.draft import FETCHING, PENDING, RUNNING, Draft, Event

# While workers are missing, look again this often: a pod the StatefulSet controller cannot create
# (Pod Security admission, a quota, a forbidden volume) leaves only an Event, which nothing watches.
MISSING_PODS_RECHECK_SECONDS = 10.0


def report_workers(d: Draft) -> bool:
    spec, live = d.spec, d.live
    running = [p for p in live if is_running(p)]
    d.workers(running, spec.workers)
    if len(running) >= spec.workers:
        message = f"all {spec.workers} worker(s) running"
        d.cond("Running", True, "WorkersRunning", message)
        d.phase(RUNNING, "WorkersRunning", message)
        if d.old_phase != RUNNING:
            d.decision.events.append(Event("Normal", "Running", message))
        return True
    blocked = stuck(live)
    reason = "WorkersBlocked" if blocked else "WorkersStarting"
    if d.obs.create_failure is not None and len(live) < spec.workers:
        blocked, reason = f"cannot create worker pods: {d.obs.create_failure}", "FailedCreate"
    fetchers = fetching(live)
    if fetchers and not blocked:
        fetch = d.new.get("fetch")
        message = progress_report.fetch_summary(fetch) if fetch else f"fetch step running in {fetchers[0]}"
        d.cond("Running", False, "FetchingSources", message)
        d.phase(FETCHING, "FetchingSources", message[:MESSAGE_LIMIT])
        return True
    message = blocked or f"{len(running)} of {spec.workers} worker(s) running"
    if len(live) < spec.workers:
        d.decision.wake_in(MISSING_PODS_RECHECK_SECONDS)
    d.cond("Running", False, reason, message)
    d.phase(PENDING, reason, message[:MESSAGE_LIMIT])
    if blocked and d.old.get("message") != message[:MESSAGE_LIMIT]:
        d.decision.events.append(Event("Warning", reason, message))
    return True
